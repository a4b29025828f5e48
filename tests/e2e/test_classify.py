"""The README's CSV walkthrough on the whole stack: species strings in, species names out of
`:classify` (curl and the client), still named after the dataset is deleted."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import requests

from client import Client
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

SPECIES = ["setosa", "versicolor", "virginica"]
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_like(rows: int) -> tuple[str, np.ndarray, np.ndarray]:
    """The walkthrough's CSV: three well-separated species; its text, features and class ids."""
    rng = np.random.default_rng(0)
    kinds = np.arange(rows) % 3
    centers = np.array([[5.0 + k, 3.4 - k / 3, 1.5 + 2 * k, 0.2 + k] for k in range(3)])
    x = (centers[kinds] + rng.normal(0, 0.2, (rows, 4))).round(2).astype("float32")
    lines = [",".join([*COLUMNS, "species"])]
    lines += [
        ",".join([*map(str, row.tolist()), SPECIES[k]]) for row, k in zip(x, kinds, strict=True)
    ]
    return "\n".join(lines) + "\n", x, kinds


def curl_classify(stack: Stack, model: str, body: dict) -> dict:
    result = subprocess.run(
        [
            "curl", "-sS", "--fail-with-body", "-X", "POST",
            stack.url(f"/v1/models/{model}:classify?k=2"),
            "-H", "Content-Type: application/json", "-d", json.dumps(body),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_csv_species_are_classified_by_name_after_the_dataset_is_gone(stack: Stack, tmp_path):
    import keras

    text, x, kinds = iris_like(150)
    uploaded = requests.post(
        stack.url("/v1/datasets"),
        files={"file": ("iris.csv", text.encode())},
        data={"label": "species"},
        timeout=60,
    )
    assert uploaded.status_code == 201, uploaded.text
    manifest = uploaded.json()
    assert (manifest["classes"], manifest["features"]) == ({"y": SPECIES}, {"x": COLUMNS})
    job = stack.submit(
        {
            "name": "iris-e2e",
            "seed": 1,
            "model": {
                "input_shape": [4],
                "layers": [
                    {"class_name": "Dense", "config": {"units": 16, "activation": "relu"}},
                    {"class_name": "Dense", "config": {"units": 3, "activation": "softmax"}},
                ],
            },
            "compile": {"optimizer": {"class_name": "Adam", "config": {"learning_rate": 0.05}},
                        "loss": "sparse_categorical_crossentropy"},
            "fit": {"batch_size": 16, "epochs": 8},
            "data": {"dataset": manifest["id"], "x": "x", "y": "y"},
        }
    )  # fmt: skip
    assert stack.wait_finished(job["id"])["status"] == "succeeded"
    deleted = requests.delete(stack.url(f"/v1/datasets/{manifest['id']}"), timeout=30)
    assert deleted.status_code == 204, deleted.text

    rows = x[[0, 1, 2]]
    answer = curl_classify(stack, job["id"], {"instances": rows.tolist()})
    assert [pairs[0][0] for pairs in answer["result"]] == [SPECIES[k] for k in kinds[:3]]
    assert all(len(pairs) == 2 for pairs in answer["result"])
    examples = [dict(zip(COLUMNS, row, strict=True)) for row in rows.tolist()]
    by_column = curl_classify(stack, "iris-e2e", {"examples": examples})
    assert [pairs[0][0] for pairs in by_column["result"]] == [SPECIES[k] for k in kinds[:3]]

    client = Client(stack.api)
    ranked = client.classify("iris-e2e", x[:30])
    assert [pairs[0][0] for pairs in ranked] == [SPECIES[k] for k in kinds[:30]]
    assert client.predict("iris-e2e", x[:30], classes=True).tolist() == [
        SPECIES[k] for k in kinds[:30]
    ]
    metadata = client.model_metadata("iris-e2e")
    assert metadata["labels"] == {"classes": SPECIES, "features": COLUMNS}
    downloaded = client.download_model(job["id"], tmp_path / "iris.keras")
    assert downloaded.stat().st_mode & 0o044 == 0o044  # readable by others, umask permitting
    assert isinstance(keras.saving.load_model(downloaded), keras.Sequential)
