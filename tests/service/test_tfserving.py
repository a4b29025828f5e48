"""TF Serving's REST dialect over real trained models written as training writes them."""

from __future__ import annotations

import io
import re
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from core.keys import hash_key
from core.storage import DataDir, read_json, write_json
from service import create_app
from tests.support.models import (
    MULTI,
    SEQUENCE,
    SINGLE,
    copy_job,
    job_manifest,
    load_version,
    write_job,
    write_model_job,
)
from tests.support.processes import wait_for

ROWS = np.random.default_rng(7).normal(size=(5, 4)).astype("float32")
IMAGES = np.random.default_rng(8).normal(size=(3, 2, 3)).astype("float32")
META = np.random.default_rng(9).normal(size=(3, 2)).astype("float32")


@pytest.fixture
def jobs(library, settings) -> dict[str, str]:
    """The library's jobs copied into this test's data folder."""
    source, ids = library
    for job_id in ids.values():
        copy_job(source, DataDir(settings.data_dir), job_id)
    return ids


def expected(library, kind: str, x, version: int | None = None):
    source, ids = library
    return load_version(source, ids[kind], version)(x, training=False)


def post(client, path: str, body):
    return client.post(path, json=body)


def test_row_format_equals_the_final_model(client, jobs, library):
    response = post(client, f"/v1/models/{jobs[SINGLE]}:predict", {"instances": ROWS.tolist()})
    assert response.status_code == 200, response.get_json()
    assert response.headers["X-Model-Version"] == "3"
    predictions = np.array(response.get_json()["predictions"])
    assert predictions.shape == (5, 3)
    assert np.allclose(predictions, expected(library, SINGLE, ROWS), atol=1e-6)


def test_columnar_format_answers_outputs(client, jobs, library):
    response = post(client, f"/v1/models/{jobs[SINGLE]}:predict", {"inputs": ROWS.tolist()})
    assert response.status_code == 200
    assert np.allclose(response.get_json()["outputs"], expected(library, SINGLE, ROWS), atol=1e-6)
    named = post(client, f"/v1/models/{jobs[SINGLE]}:predict", {"inputs": {"input": ROWS.tolist()}})
    assert named.get_json() == response.get_json()


@pytest.mark.parametrize(
    ("suffix", "version", "file_version"),
    [
        ("/versions/1", "1", 1),
        ("/versions/2", "2", 2),
        ("/versions/3", "3", None),
        ("/labels/final", "3", None),
        ("/labels/latest", "3", None),
        ("", "3", None),
    ],
)
def test_versions_and_labels_serve_their_file(client, jobs, library, suffix, version, file_version):
    response = post(
        client, f"/v1/models/{jobs[SINGLE]}{suffix}:predict", {"instances": ROWS.tolist()}
    )
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == version
    want = expected(library, SINGLE, ROWS, file_version)
    assert np.allclose(response.get_json()["predictions"], want, atol=1e-6)


def test_best_label_follows_the_manifest(client, jobs, library, settings):
    best = read_json(DataDir(settings.data_dir).job(jobs[SINGLE]) / "manifest.json")["best"]
    response = post(
        client, f"/v1/models/{jobs[SINGLE]}/labels/best:predict", {"instances": ROWS.tolist()}
    )
    assert response.headers["X-Model-Version"] == str(best["version"])
    file_version = None if best["version"] == 3 else best["version"]
    assert np.allclose(
        response.get_json()["predictions"], expected(library, SINGLE, ROWS, file_version), atol=1e-6
    )


def test_multi_input_multi_output_row_and_columnar(client, jobs, library):
    score, probs = expected(library, MULTI, [IMAGES, META])
    instances = [
        {"image": i.tolist(), "meta": m.tolist()} for i, m in zip(IMAGES, META, strict=True)
    ]
    rows = post(client, f"/v1/models/{jobs[MULTI]}:predict", {"instances": instances}).get_json()
    assert [sorted(row) for row in rows["predictions"]] == [["probs", "score"]] * 3
    assert np.allclose([row["score"] for row in rows["predictions"]], score, atol=1e-6)
    assert np.allclose([row["probs"] for row in rows["predictions"]], probs, atol=1e-6)
    columns = {"image": IMAGES.tolist(), "meta": META.tolist()}
    outputs = post(client, f"/v1/models/{jobs[MULTI]}:predict", {"inputs": columns}).get_json()[
        "outputs"
    ]
    assert np.allclose(outputs["score"], score, atol=1e-6)
    assert np.allclose(outputs["probs"], probs, atol=1e-6)


def test_variable_length_input_takes_any_length(client, jobs, library):
    for length in (3, 7):
        x = np.ones((2, length, 2), "float32")
        response = post(client, f"/v1/models/{jobs[SEQUENCE]}:predict", {"inputs": x.tolist()})
        assert response.status_code == 200
        assert np.allclose(
            response.get_json()["outputs"], expected(library, SEQUENCE, x), atol=1e-6
        )


def test_a_job_name_means_its_newest_succeeded_job(client, jobs):
    response = post(client, "/v1/models/tiny:predict", {"instances": ROWS.tolist()})
    by_id = post(client, f"/v1/models/{jobs[SINGLE]}:predict", {"instances": ROWS.tolist()})
    assert response.status_code == 200
    assert response.get_json() == by_id.get_json()


def test_a_running_job_serves_its_latest_checkpoint_by_id(client, jobs, library):
    by_name = post(client, "/v1/models/tiny-running:predict", {"instances": ROWS.tolist()})
    assert by_name.status_code == 404
    assert "no succeeded job" in by_name.get_json()["detail"]
    response = post(client, f"/v1/models/{jobs['running']}:predict", {"instances": ROWS.tolist()})
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == "2"
    source, ids = library
    want = load_version(source, ids["running"], 2)(ROWS, training=False)
    assert np.allclose(response.get_json()["predictions"], want, atol=1e-6)
    final = post(
        client, f"/v1/models/{jobs['running']}/labels/final:predict", {"instances": ROWS.tolist()}
    )
    assert final.status_code == 404
    assert "running" in final.get_json()["detail"]


def test_a_cancelled_job_does_not_answer_for_its_name(client, jobs, settings):
    path = DataDir(settings.data_dir).job(jobs["running"]) / "manifest.json"
    write_json(path, {**read_json(path), "status": "cancelled"})
    response = post(client, "/v1/models/tiny-running:predict", {"instances": ROWS.tolist()})
    assert response.status_code == 404, response.get_json()
    by_id = post(client, f"/v1/models/{jobs['running']}:predict", {"instances": ROWS.tolist()})
    assert by_id.status_code == 200


def test_a_new_checkpoint_is_served_within_a_second(client, jobs, settings):
    """A running job's next checkpoint, written as the worker writes it, answers within a second
    of its manifest entry (lookups are reused for a moment, then read again)."""
    path = f"/v1/models/{jobs['running']}:predict"
    body = {"instances": ROWS.tolist()}
    assert post(client, path, body).headers["X-Model-Version"] == "2"
    job_dir = DataDir(settings.data_dir).job(jobs["running"])
    manifest = read_json(job_dir / "manifest.json")
    second = manifest["checkpoints"][-1]
    third = {**second, "version": 3, "file": "checkpoints/epoch-0003.keras"}
    shutil.copyfile(job_dir / second["file"], job_dir / third["file"])
    saved = time.monotonic()
    checkpoints = [*manifest["checkpoints"], third]
    write_json(job_dir / "manifest.json", {**manifest, "checkpoints": checkpoints})
    wait_for(
        lambda: post(client, path, body).headers["X-Model-Version"] == "3",
        5,
        "version 3 to answer",
        interval=0.02,
    )
    assert time.monotonic() - saved < 1.0


def test_a_job_without_checkpoint_is_409_naming_its_status(client, settings):
    manifest = job_manifest("a" * 32, name="fresh", owner=None, status="queued")
    write_job(DataDir(settings.data_dir), manifest)
    response = post(client, f"/v1/models/{'a' * 32}:predict", {"instances": [[1, 2, 3, 4]]})
    assert response.status_code == 409
    assert "queued" in response.get_json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/nope:predict",
        "/v1/models/{single}/versions/9:predict",
        "/v1/models/{single}/labels/newest:predict",
        "/v1/models/" + "0" * 32 + ":predict",
    ],
)
def test_unknown_model_version_or_label_is_404(client, jobs, path):
    response = post(client, path.format(single=jobs[SINGLE]), {"instances": ROWS.tolist()})
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["error"]


def test_another_keys_model_is_404(settings, library):
    source, ids = library
    data = DataDir(settings.data_dir)
    copy_job(source, data, ids[SINGLE])
    manifest_path = data.job(ids[SINGLE]) / "manifest.json"
    write_json(manifest_path, {**read_json(manifest_path), "owner": "alice"})
    keys = f"alice:{hash_key('fs_alice')},bob:{hash_key('fs_bob')}"
    client = create_app(settings.with_overrides(api_keys=keys)).test_client()
    path = f"/v1/models/{ids[SINGLE]}:predict"
    body = {"instances": ROWS.tolist()}
    assert (
        client.post(path, json=body, headers={"Authorization": "Bearer fs_alice"}).status_code
        == 200
    )
    assert (
        client.post(path, json=body, headers={"Authorization": "Bearer fs_bob"}).status_code == 404
    )
    assert (
        client.get("/v1/models", headers={"Authorization": "Bearer fs_bob"}).get_json()["items"]
        == []
    )


@pytest.mark.parametrize(
    ("body", "path", "received"),
    [
        ({"instances": [[1, 2, 3, 4], [1, 2, 3]]}, "/instances/1", [3]),
        ({"instances": [[1, 2, 3, 4], [[1, 2, 3, 4]]]}, "/instances/1", [1, 4]),
        ({"instances": [[1, 2, 3, 4], [1, [2], 3, 4]]}, "/instances/1", None),
        ({"instances": [[1, 2, 3, "NaN"]]}, "/instances/0", "NaN"),
        ({"instances": [[1, 2, 3, None]]}, "/instances/0", None),
        ({"instances": [[1, 2, 3, True]]}, "/instances/0", True),
        ({"instances": [[1, 2, 3, 4], [1, 2, 3, {"a": 1}]]}, "/instances/1", {"a": 1}),
        ({"instances": [[1, 2, 3, 1e39]]}, "/instances", 1e39),
        ({"instances": [1, 2, 3, 4]}, "/instances/0", []),
        ({"inputs": [[1, 2, 3]]}, "/inputs/0", [3]),
        ({"inputs": {"image": [[1, 2, 3, 4]]}}, "/inputs/image", ["image"]),
        ({"instances": []}, "/instances", []),
        ({"rows": [[1, 2, 3, 4]]}, "/rows", "rows"),
        ({"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]}, "", ["inputs", "instances"]),
        ([[1, 2, 3, 4]], "", None),
    ],
)
def test_bad_input_is_422_pointing_at_it(client, jobs, body, path, received):
    response = post(client, f"/v1/models/{jobs[SINGLE]}:predict", body)
    assert response.status_code == 422, response.get_json()
    [error] = response.get_json()["errors"]
    assert error["path"] == path
    assert error["expected"]
    if received is not None:
        assert error["received"] == received


def test_multi_input_bad_rows_name_the_input(client, jobs):
    instances = [
        {"image": IMAGES[0].tolist(), "meta": META[0].tolist()},
        {"image": IMAGES[1].tolist()},
    ]
    response = post(client, f"/v1/models/{jobs[MULTI]}:predict", {"instances": instances})
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["path"] == "/instances/1/meta"
    columns = {"image": IMAGES.tolist(), "meta": META[:2].tolist()}
    response = post(client, f"/v1/models/{jobs[MULTI]}:predict", {"inputs": columns})
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["path"] == "/inputs/meta"
    wrong = {"image": IMAGES[:, :, :2].tolist(), "meta": META.tolist()}
    error = post(client, f"/v1/models/{jobs[MULTI]}:predict", {"inputs": wrong}).get_json()[
        "errors"
    ][0]
    assert error == {
        "path": "/inputs/image/0",
        "message": "Row 0 of input 'image' has shape [2, 2]; expected [2, 3].",
        "expected": "rows of shape [2, 3] (-1: any size) of numbers",
        "received": [2, 2],
    }


def test_infinite_json_number_is_400(client, jobs):
    response = client.post(
        f"/v1/models/{jobs[SINGLE]}:predict",
        data=b'{"instances": [[1, 2, 3, 1e999]]}',
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.get_json()["code"] == "malformed_request"


def test_too_many_rows_or_bytes_is_413(settings, jobs):
    client = create_app(settings.with_overrides(max_predict_rows=4)).test_client()
    response = client.post(f"/v1/models/{jobs[SINGLE]}:predict", json={"instances": ROWS.tolist()})
    assert response.status_code == 413
    client = create_app(settings.with_overrides(max_json_bytes=100)).test_client()
    response = client.post(f"/v1/models/{jobs[SINGLE]}:predict", json={"instances": ROWS.tolist()})
    assert response.status_code == 413


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def test_a_corrupt_file_is_503_without_falling_back(client, jobs, settings):
    job_dir = DataDir(settings.data_dir).job(jobs[SINGLE])
    corrupt(job_dir / "model.keras")
    response = post(client, f"/v1/models/{jobs[SINGLE]}:predict", {"instances": ROWS.tolist()})
    assert response.status_code == 503
    assert "model.keras" in response.get_json()["detail"]
    assert "sha256" in response.get_json()["detail"]
    assert response.headers["X-Model-Version"] == "3"
    corrupt(job_dir / "checkpoints/epoch-0002.keras")
    response = post(
        client, f"/v1/models/{jobs[SINGLE]}/versions/2:predict", {"instances": ROWS.tolist()}
    )
    assert response.status_code == 503
    assert "epoch-0002.keras" in response.get_json()["detail"]
    response = post(
        client, f"/v1/models/{jobs[SINGLE]}/versions/1:predict", {"instances": ROWS.tolist()}
    )
    assert response.status_code == 200


def test_model_status_lists_versions(client, jobs):
    body = client.get(f"/v1/models/{jobs[SINGLE]}").get_json()
    assert [v["version"] for v in body["model_version_status"]] == ["3", "2", "1"]
    assert body["model_version_status"][0] == {
        "version": "3",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    one = client.get(f"/v1/models/{jobs[SINGLE]}/versions/2")
    assert one.headers["X-Model-Version"] == "2"
    assert [v["version"] for v in one.get_json()["model_version_status"]] == ["2"]


def test_metadata_names_inputs_and_outputs(client, jobs):
    response = client.get(f"/v1/models/{jobs[MULTI]}/metadata")
    assert response.status_code == 200
    body = response.get_json()
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sorted(signature["inputs"]) == ["image", "meta"]
    assert sorted(signature["outputs"]) == ["probs", "score"]
    image = signature["inputs"]["image"]
    assert image["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "2", "3"]
    assert body["inputs"] == [
        {"name": "image", "dtype": "float32", "shape": [-1, 2, 3]},
        {"name": "meta", "dtype": "float32", "shape": [-1, 2]},
    ]
    assert body["model_spec"]["version"] == "2"


def test_list_models_pages_through_servable_jobs(client, jobs, settings):
    write_job(
        DataDir(settings.data_dir), job_manifest("b" * 32, name="q", owner=None, status="queued")
    )
    seen, cursor = [], None
    for _ in range(5):
        query = f"?limit=3&cursor={cursor}" if cursor else "?limit=3"
        page = client.get(f"/v1/models{query}").get_json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(item["id"] for item in seen) == sorted(jobs.values())
    single = next(item for item in seen if item["id"] == jobs[SINGLE])
    assert single["versions"] == [1, 2, 3]
    assert single["labels"]["final"] == 3
    assert single["default_version"] == 3


def test_download_keras_is_the_file_as_saved(client, jobs, settings):
    response = client.get(f"/v1/models/{jobs[SINGLE]}/download?format=keras&version=2")
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == "2"
    saved = DataDir(settings.data_dir).job(jobs[SINGLE]) / "checkpoints/epoch-0002.keras"
    assert response.data == saved.read_bytes()
    labelled = client.get(f"/v1/models/{jobs[SINGLE]}/labels/final/download")
    assert labelled.data == (saved.parent.parent / "model.keras").read_bytes()
    bad = client.get(f"/v1/models/{jobs[SINGLE]}/download?format=onnx")
    assert bad.status_code == 422
    assert bad.get_json()["errors"][0]["path"] == "/format"


def test_download_savedmodel_answers_like_the_service(client, jobs, library, tmp_path):
    import tensorflow as tf

    response = client.get(f"/v1/models/{jobs[MULTI]}/download?format=savedmodel")
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(response.data)) as tar:
        tar.extractall(tmp_path, filter="data")
    signature = tf.saved_model.load(str(tmp_path / "2")).signatures["serving_default"]
    assert sorted(signature.structured_input_signature[1]) == ["image", "meta"]
    outputs = signature(image=tf.constant(IMAGES), meta=tf.constant(META))
    assert sorted(outputs) == ["probs", "score"]
    score, probs = expected(library, MULTI, [IMAGES, META])
    assert np.allclose(outputs["score"], score, atol=1e-6)
    assert np.allclose(outputs["probs"], probs, atol=1e-6)
    again = client.get(f"/v1/models/{jobs[MULTI]}/download?format=savedmodel")
    assert again.data == response.data


def test_finished_jobs_serve_from_the_volume_while_redis_is_down(settings, jobs, library):
    down = create_app(settings.with_overrides(redis_url="redis://127.0.0.1:1/0")).test_client()
    assert down.get("/readyz").status_code == 503
    response = down.post("/v1/models/tiny:predict", json={"instances": ROWS.tolist()})
    assert response.status_code == 200
    assert np.allclose(
        response.get_json()["predictions"], expected(library, SINGLE, ROWS), atol=1e-6
    )


# Inputs a model cannot take: refused with a pointer, never a 500, a hang or a dead worker.


def build_embedding(rescale: float | None) -> Any:
    """ids (3 per row) -> Embedding(10): read directly, or through a Rescaling in front."""
    import keras

    keras.utils.set_random_seed(4)
    ids = keras.Input((3,), name="ids", dtype="int32" if rescale is None else "float32")
    values = ids if rescale is None else keras.layers.Rescaling(rescale, name="scale")(ids)
    embedded = keras.layers.Embedding(10, 2, name="embed")(values)
    return keras.Model(ids, keras.layers.Dense(1, name="out")(keras.layers.Flatten()(embedded)))


def build_conv1d() -> Any:
    """A Conv1D (kernel 3) over sequences of any length: [null, 1]."""
    import keras

    inputs = keras.Input((None, 1), name="signal")
    features = keras.layers.Conv1D(4, 3, name="conv")(inputs)
    return keras.Model(inputs, keras.layers.GlobalMaxPooling1D(name="pool")(features))


def build_lstm() -> Any:
    """An LSTM over sequences of any length: [null, 4]."""
    import keras

    inputs = keras.Input((None, 4), name="steps")
    return keras.Model(inputs, keras.layers.LSTM(8, name="lstm")(inputs))


def build_conv_embedding() -> Any:
    """Ids computed by a Conv1D (kernel 3) over any length, then embedded."""
    import keras

    inputs = keras.Input((None, 1), name="signal")
    ids = keras.layers.Reshape((-1,), name="flat")(keras.layers.Conv1D(1, 3, name="conv")(inputs))
    embedded = keras.layers.Embedding(10, 2, name="embed")(ids)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling1D(name="pool")(embedded))


ODD_MODELS = {
    "embedding": lambda: build_embedding(None),
    "rescaled": lambda: build_embedding(2.0),
    "conv1d": build_conv1d,
    "lstm": build_lstm,
    "conv_embedding": build_conv_embedding,
}


@pytest.fixture(scope="module")
def odd_library(tmp_path_factory) -> tuple[DataDir, dict[str, str]]:
    """The models above saved as succeeded jobs once per module: their folder, ids by kind."""
    data = DataDir(tmp_path_factory.mktemp("odd-models") / "data")
    return data, {kind: write_model_job(data, build()) for kind, build in ODD_MODELS.items()}


@pytest.fixture
def odd(odd_library, settings) -> dict[str, str]:
    source, ids = odd_library
    for job_id in ids.values():
        copy_job(source, DataDir(settings.data_dir), job_id)
    return ids


@pytest.mark.parametrize(
    ("kind", "rows", "path", "received"),
    [
        ("embedding", [[1, 2, 3], [0, 9, 10]], "/instances/1", 10),
        ("embedding", [[-1, 2, 3]], "/instances/0", -1),
        ("rescaled", [[1, 2, 3], [4, 4.5, 5]], "/instances/1", 10.0),
        ("rescaled", [[-0.5, 1, 2]], "/instances/0", -1.0),
    ],
)
def test_embedding_ids_out_of_range_are_422_at_their_row(client, odd, kind, rows, path, received):
    response = post(client, f"/v1/models/{odd[kind]}:predict", {"instances": rows})
    assert response.status_code == 422, response.get_json()
    [error] = response.get_json()["errors"]
    assert error["path"] == path
    assert error["received"] == received
    assert "[0, 10)" in error["expected"]
    assert ("computed by the layers in front" in error["message"]) == (kind == "rescaled")
    assert response.headers["X-Model-Version"] == "1"
    columns = post(client, f"/v1/models/{odd[kind]}:predict", {"inputs": rows})
    assert columns.get_json()["errors"][0]["path"] == path.replace("instances", "inputs")


@pytest.mark.parametrize(
    ("kind", "rows"),
    [
        ("embedding", [[0, 5, 9]]),
        ("rescaled", [[0, 4.5, 4.9]]),  # ids 0, 9 and 9.8, which the layer truncates to 9
        ("rescaled", [[-0.25, 1, 2]]),  # -0.5 truncates to 0, as the layer's cast does
    ],
)
def test_embedding_ids_in_range_are_served(client, odd, odd_library, kind, rows):
    response = post(client, f"/v1/models/{odd[kind]}:predict", {"instances": rows})
    assert response.status_code == 200, response.get_json()
    source, ids = odd_library
    x = np.array(rows, "int32" if kind == "embedding" else "float32")
    want = load_version(source, ids[kind])(x, training=False)
    assert np.allclose(response.get_json()["predictions"], want, atol=1e-6)


def test_embedding_ids_are_checked_through_oip_too(client, odd):
    tensor = {"name": "ids", "shape": [2, 3], "datatype": "INT32", "data": [1, 2, 3, 4, 5, 99]}
    response = post(client, f"/v2/models/{odd['embedding']}/infer", {"inputs": [tensor]})
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["path"] == "/inputs/0"
    assert response.get_json()["errors"][0]["received"] == 99


@pytest.mark.parametrize(("kind", "width"), [("conv1d", 1), ("lstm", 4)])
def test_variable_length_models_load_and_serve(client, odd, odd_library, kind, width):
    source, ids = odd_library
    model = load_version(source, ids[kind])
    for length in (3, 11):
        x = np.random.default_rng(length).normal(size=(2, length, width)).astype("float32")
        response = post(client, f"/v1/models/{odd[kind]}:predict", {"inputs": x.tolist()})
        assert response.status_code == 200, response.get_json()
        assert np.allclose(response.get_json()["outputs"], model(x, training=False), atol=1e-5)


@pytest.mark.parametrize("kind", ["conv1d", "conv_embedding"])
def test_a_sequence_too_short_for_the_model_is_422(client, odd, kind):
    response = post(client, f"/v1/models/{odd[kind]}:predict", {"instances": [[[1.0]]]})
    assert response.status_code == 422, response.get_json()
    [error] = response.get_json()["errors"]
    assert error["path"] == "/instances"
    assert "negative" in error["message"]
    fits = post(client, f"/v1/models/{odd[kind]}:predict", {"instances": [[[0.0]] * 3]})
    assert fits.status_code == 200, fits.get_json()


def test_a_pass_past_the_predict_timeout_is_504(settings, odd):
    client = create_app(settings.with_overrides(predict_timeout_seconds=0.01)).test_client()
    x = np.ones((32, 2000, 4), "float32").tolist()
    response = client.post(f"/v1/models/{odd['lstm']}:predict", json={"inputs": x})
    assert response.status_code == 504, response.get_json()
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "timeout"
    assert response.headers["X-Model-Version"] == "1"


HUGE = "x" * 4_000_000
# Stands for 1.0 nested in 1,000 lists (within orjson's parse limit, past every encoder's).
DEEP = "<deep>"


def post_text(client, path: str, body: Any):
    """POST `body` as JSON, with DEEP spelled out as its 1,000 levels of lists."""
    text = orjson.dumps(body).replace(b'"<deep>"', b"[" * 1000 + b"1.0" + b"]" * 1000)
    return client.post(path, data=text, content_type="application/json")


def short_id(value: Any) -> str:
    return orjson.dumps(value)[:40].decode(errors="replace")


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [[1, 2, 3, 4]] * 500 + [[HUGE, 2, 3, 4]]},
        {"instances": [[1, 2, 3, HUGE]]},
        {"instances": [{"input": [1, 2, 3, 4]}, {HUGE: 1}]},
        {"inputs": {HUGE: [[1, 2, 3, 4]]}},
        {"instances": HUGE},
        {"signature_name": HUGE, "instances": [[1, 2, 3, 4]]},
        {HUGE: 1},
        {"instances": [DEEP]},
        {"instances": [[1, 2, 3, DEEP]]},
        {"instances": DEEP},
        {"inputs": {"input": DEEP}},
        {"signature_name": DEEP, "instances": [[1, 2, 3, 4]]},
        {"instances": [[1, 2, 3, 4], DEEP]},
    ],
    ids=short_id,
)
def test_huge_strings_and_deep_nesting_are_4xx(client, jobs, body):
    response = post_text(client, f"/v1/models/{jobs[SINGLE]}:predict", body)
    assert 400 <= response.status_code < 500, response.get_data()[:300]
    assert response.mimetype == "application/problem+json"
    assert len(response.get_data()) < 10_000


@pytest.mark.parametrize(
    "tensor",
    [
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, HUGE]},
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [HUGE] * 4},
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": DEEP},
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, DEEP]},
        {"name": HUGE, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "input", "shape": DEEP, "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "input", "shape": [1, 4], "datatype": HUGE, "data": [1, 2, 3, 4]},
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": DEEP},
    ],
    ids=short_id,
)
def test_huge_strings_and_deep_nesting_in_infer_are_4xx(client, jobs, tensor):
    response = post_text(client, f"/v2/models/{jobs[SINGLE]}/infer", {"inputs": [tensor]})
    assert 400 <= response.status_code < 500, response.get_data()[:300]
    assert response.mimetype == "application/problem+json"
    assert len(response.get_data()) < 10_000


# Real clients: TF Serving's documented curl sends form-urlencoded, Triton's client no type.

ANY_TYPE = [None, "application/x-www-form-urlencoded", "text/plain", "application/json"]


@pytest.mark.parametrize("content_type", ANY_TYPE)
def test_predict_and_infer_take_json_whatever_the_content_type(client, jobs, content_type):
    want = post(client, f"/v1/models/{jobs[SINGLE]}:predict", {"instances": ROWS.tolist()})
    body = orjson.dumps({"instances": ROWS.tolist()})
    response = client.post(
        f"/v1/models/{jobs[SINGLE]}:predict", data=body, content_type=content_type
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == want.get_json()
    tensor = {"name": "input", "shape": [5, 4], "datatype": "FP32", "data": ROWS.ravel().tolist()}
    infer = client.post(
        f"/v2/models/{jobs[SINGLE]}/infer",
        data=orjson.dumps({"inputs": [tensor]}),
        content_type=content_type,
    )
    assert infer.status_code == 200, infer.get_json()
    [out] = infer.get_json()["outputs"]
    assert np.allclose(np.reshape(out["data"], out["shape"]), want.get_json()["predictions"])


def test_a_request_signed_in_by_cookie_keeps_its_csrf_check_and_json_type(settings, jobs):
    keys = f"alice:{hash_key('fs_alice')}:admin"
    client = create_app(settings.with_overrides(api_keys=keys)).test_client()
    client.post("/sign-in", data={"key": "fs_alice", "next": "/"})
    page = client.get("/").get_data(as_text=True)
    csrf = re.search(r'name="fitserve-csrf" content="([^"]*)"', page).group(1)
    path = f"/v1/models/{jobs[SINGLE]}:predict"
    body = orjson.dumps({"instances": ROWS.tolist()})
    forged = client.post(path, data=body, content_type="text/plain")
    assert forged.status_code == 401
    assert forged.get_json()["code"] == "csrf_failed"
    headers = {"X-Fitserve-CSRF": csrf}
    plain = client.post(path, data=body, content_type="text/plain", headers=headers)
    assert plain.status_code == 415, plain.get_json()
    typed = client.post(path, data=body, content_type="application/json", headers=headers)
    assert typed.status_code == 200, typed.get_json()
    keyed = client.post(
        path, data=body, content_type="text/plain", headers={"Authorization": "Bearer fs_alice"}
    )
    assert keyed.status_code == 200, keyed.get_json()
