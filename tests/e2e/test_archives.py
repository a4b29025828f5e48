"""An archive of PNGs in class folders, made here, uploaded through nginx: the stack's CPU task
worker ingests it (`processing` -> `ready`), a small CNN trains on it to `succeeded`, and
`:classify` answers with the folder names."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from tests.support.http import expect_status
from tests.support.processes import wait_for
from tests.support.stack import Stack, tiny_request

CLASSES = ("circle", "cross", "plain")
PER_CLASS = 100
INGEST_SECONDS = 120


def drawn(kind: str, rng: np.random.Generator) -> bytes:
    """A noisy 16x16 PNG whose shape tells its class."""
    pixels = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
    rows, cols = np.mgrid[:16, :16]
    if kind == "circle":
        pixels[(rows - 8) ** 2 + (cols - 8) ** 2 < 25] = 230
    elif kind == "cross":
        pixels[7:9, :] = pixels[:, 7:9] = 230
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def image_archive(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as archive:
        for index in range(PER_CLASS):
            for kind in CLASSES:
                content = drawn(kind, rng)
                info = tarfile.TarInfo(f"{kind}/{index:03d}.png")
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return path


def test_an_image_archive_becomes_a_dataset_a_cnn_trains_on(stack: Stack, tmp_path: Path) -> None:
    archive = image_archive(tmp_path / "shapes.tar.gz")
    with open(archive, "rb") as handle:
        response = requests.post(
            stack.url("/v1/datasets"),
            files={"file": ("shapes.tar.gz", handle)},
            data={"color_mode": "rgb"},
            timeout=60,
        )
    created = expect_status(response, 202).json()
    assert created["status"] == "processing"
    url = stack.url(f"/v1/datasets/{created['id']}")

    seen: dict = {}

    def ingested() -> bool:
        seen.update(expect_status(requests.get(url, timeout=10), 200).json())
        return seen["status"] != "processing"

    wait_for(ingested, INGEST_SECONDS, f"dataset {created['id']} ingested", interval=0.2)
    assert seen["status"] == "ready", seen.get("error") or stack.log_tail("tasks")
    assert seen["classes"] == {"y": list(CLASSES)}
    assert seen["rows"] == len(CLASSES) * PER_CLASS
    assert seen["arrays"]["x"]["shape"] == [len(CLASSES) * PER_CLASS, 16, 16, 3]
    assert seen["arrays"]["x"]["dtype"] == "uint8"

    request = tiny_request(created["id"], epochs=3, batch_size=32)
    request["name"] = "shapes"
    request["model"] = {
        "input_shape": [16, 16, 3],
        "layers": [
            {
                "class_name": "Conv2D",
                "config": {"filters": 8, "kernel_size": 3, "activation": "relu"},
            },
            {"class_name": "MaxPooling2D", "config": {"pool_size": 2}},
            {"class_name": "Flatten", "config": {}},
            {"class_name": "Dense", "config": {"units": 3, "activation": "softmax"}},
        ],
    }
    request["compile"]["optimizer"]["config"]["learning_rate"] = 0.01
    request["data"]["preprocess"] = {"x": {"scale": 1 / 255}}
    job = stack.wait_finished(stack.submit(request)["id"])
    assert job["status"] == "succeeded", job
    # Three shapes a CNN tells apart at once: far above chance (1/3).
    assert job["metrics"]["last"]["accuracy"] > 0.6, job["metrics"]

    rng = np.random.default_rng(1)
    rows = [np.asarray(Image.open(io.BytesIO(drawn(kind, rng)))).tolist() for kind in CLASSES]
    classified = requests.post(
        stack.url(f"/v1/models/{job['id']}:classify?k=2"), json={"instances": rows}, timeout=60
    )
    result = expect_status(classified, 200).json()["result"]
    assert len(result) == len(CLASSES)
    for ranked in result:
        assert len(ranked) == 2
        assert {name for name, _ in ranked} <= set(CLASSES)
        assert ranked[0][1] >= ranked[1][1]
    metadata = requests.get(stack.url(f"/v1/models/{job['id']}/metadata"), timeout=30)
    assert expect_status(metadata, 200).json()["labels"]["classes"] == list(CLASSES)
