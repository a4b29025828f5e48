"""The client and the `fitserve` command against the whole stack: train, follow, predict, download.

The first test reads like a notebook: the Keras docs' seed model, built and compiled live,
trained on the server, followed to the end, then compared with the downloaded model in Keras.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests

from client import Client
from core.storage import DataDir
from tests.client.conftest import fitserve
from tests.support.models import write_model_job
from tests.support.seed_model import CLASSES, build_seed_model, make_blobs
from tests.support.stack import JOB_SECONDS, Stack

pytestmark = pytest.mark.e2e


# The docs' own spelling, `Dense(32, input_shape=(784,))`, which Keras 3 warns about.
@pytest.mark.filterwarnings("ignore:Do not pass an `input_shape`")
def test_notebook_trains_the_seed_model_follows_predicts_and_downloads(stack: Stack, capsys):
    import keras

    client = Client(stack.api)
    x, labels = make_blobs(600, seed=3)
    y = np.eye(CLASSES, dtype="float32")[labels]
    dataset = client.upload_arrays({"x": x, "y": y})

    model = keras.Sequential(
        [
            keras.layers.Dense(32, input_shape=(784,), kernel_initializer="he_normal"),
            keras.layers.Activation("relu"),
            keras.layers.Dense(10, kernel_initializer="he_normal"),
            keras.layers.Activation("softmax"),
        ]
    )
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    job = client.submit_model(
        model,
        dataset["id"],
        fit={"epochs": 3, "batch_size": 32, "validation_split": 0.1},
        name="notebook-seed",
        seed=7,
    )
    finished = client.wait(job["id"], interval=0.2, timeout=JOB_SECONDS)

    assert finished["status"] == "succeeded"
    progress_lines = capsys.readouterr().err.splitlines()
    assert any("3/3 epochs" in line for line in progress_lines)
    assert progress_lines[-1].startswith("succeeded")
    history = client.job_metrics(job["id"])
    assert len(history["loss"]) == 3
    assert history["accuracy"][-1] > 0.5  # chance is 0.1
    assert client.job_logs(job["id"])

    predictions = client.predict(job["id"], x[:16])
    assert predictions.shape == (16, 10)
    assert np.allclose(predictions.sum(axis=1), 1.0, atol=1e-5)
    assert (predictions.argmax(axis=1) == labels[:16]).mean() > 0.5

    versions = client.model_status(job["id"])["model_version_status"]
    assert versions[0]["version"] == "3"  # newest first
    downloaded = client.download_model(job["id"])
    assert isinstance(downloaded, keras.Model)
    local = downloaded.predict(x[:16], verbose=0)
    np.testing.assert_allclose(predictions, local, rtol=1e-4, atol=1e-5)
    # The model by its name serves the same answers (its newest succeeded job).
    np.testing.assert_allclose(client.predict("notebook-seed", x[:16]), predictions, atol=1e-6)


def test_cli_submit_follow_predict_download(stack: Stack, tmp_path):
    import keras

    client = Client(stack.api)
    x, labels = make_blobs(300, seed=5)
    dataset = client.upload_arrays({"x": x, "y": labels})
    request = {
        "name": "cli-mlp",
        "seed": 1,
        "model": {
            "input_shape": [784],
            "layers": [
                {"class_name": "Dense", "config": {"units": 16, "activation": "relu"}},
                {"class_name": "Dense", "config": {"units": 10, "activation": "softmax"}},
            ],
        },
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy"},
        "fit": {"epochs": 2, "batch_size": 32},
        "data": {"dataset": dataset["id"], "x": "x", "y": "y"},
    }
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(request))
    url = ["--url", stack.api]

    run = fitserve(
        "jobs", "submit", str(spec_file), "--follow", "--interval", "0.2", *url, "--json"
    )
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["status"] == "succeeded"
    assert job["progress"]["epoch"] == 2
    assert "2/2 epochs" in run.stderr

    inputs = tmp_path / "inputs.npy"
    np.save(inputs, x[:4])
    printed = fitserve("predict", job["id"], str(inputs), *url, "--json")
    assert printed.returncode == 0, printed.stderr
    outputs = np.asarray(json.loads(printed.stdout)["outputs"], dtype="float32")
    assert outputs.shape == (4, 10)

    saved = tmp_path / "out.npy"
    result = fitserve(
        "predict", job["id"], str(inputs), "--label", "final", "--output", str(saved), *url
    )
    assert result.stdout.strip() == f"saved (4, 10) to {saved}"
    np.testing.assert_allclose(np.load(saved), outputs, atol=1e-6)

    target = tmp_path / "model.keras"
    downloaded = fitserve("models", "download", job["id"], str(target), *url, "--json")
    assert json.loads(downloaded.stdout) == {"path": str(target)}
    local = keras.saving.load_model(target, safe_mode=True).predict(x[:4], verbose=0)
    np.testing.assert_allclose(outputs, local, rtol=1e-4, atol=1e-5)

    as_json = tmp_path / "inputs.json"
    as_json.write_text(json.dumps({"instances": x[:4].tolist()}))
    from_json = fitserve("predict", job["id"], str(as_json), *url, "--json")
    assert from_json.returncode == 0, from_json.stderr
    np.testing.assert_allclose(json.loads(from_json.stdout)["outputs"], outputs, atol=1e-6)

    models = fitserve("models", "list", *url)
    row = next(line for line in models.stdout.splitlines() if line.startswith(job["id"]))
    assert row.split()[1:4] == ["cli-mlp", "succeeded", "1,2"]
    shown = json.loads(fitserve("models", "show", "cli-mlp", "--version", "1", *url).stdout)
    assert shown["model_spec"]["version"] == "1"
    assert [o["name"] for o in shown["outputs"]] == [job_output_name(shown)]

    logs = fitserve("jobs", "logs", job["id"], *url)
    assert logs.returncode == 0
    assert logs.stdout.strip()
    listed = json.loads(fitserve("jobs", "list", "--status", "succeeded", *url, "--json").stdout)
    assert job["id"] in [item["id"] for item in listed["items"]]


def test_named_inputs_and_outputs_go_in_and_out_as_dicts(stack: Stack):
    import keras

    client = Client(stack.api)
    rng = np.random.default_rng(11)
    xa = rng.normal(size=(128, 4)).astype("float32")
    xb = rng.normal(size=(128, 3)).astype("float32")
    arrays = {"xa": xa, "xb": xb, "label": (xa[:, 0] > 0).astype("int64"), "target": xb[:, :1]}
    dataset = client.upload_arrays(arrays)

    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b]))
    cls = keras.layers.Dense(2, activation="softmax", name="cls")(hidden)
    reg = keras.layers.Dense(1, name="reg")(hidden)
    model = keras.Model({"a": a, "b": b}, {"cls": cls, "reg": reg})
    model.compile(optimizer="adam", loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"})
    data = {
        "dataset": dataset["id"],
        "x": {"a": "xa", "b": "xb"},
        "y": {"cls": "label", "reg": "target"},
    }
    job = client.submit_model(model, data, fit={"epochs": 1, "batch_size": 32})
    client.wait(job["id"], progress=False, interval=0.2, timeout=JOB_SECONDS)

    outputs = client.predict(job["id"], {"a": xa[:5], "b": xb[:5]})
    assert sorted(outputs) == ["cls", "reg"]
    assert outputs["cls"].shape == (5, 2)
    assert outputs["reg"].shape == (5, 1)
    downloaded = client.download_model(job["id"])
    answers = downloaded.predict({"a": xa[:5], "b": xb[:5]}, verbose=0)
    # The server builds its outputs as a list in the order of `output_names`.
    if not isinstance(answers, dict):
        answers = dict(zip(downloaded.output_names, answers, strict=True))
    for name in ("cls", "reg"):
        np.testing.assert_allclose(outputs[name], answers[name], rtol=1e-4, atol=1e-5)


def job_output_name(metadata: dict) -> str:
    """The single output's name in the TF Serving signature of the metadata."""
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    (name,) = signature["outputs"]
    return name


def test_ten_thousand_rows_of_784_features_in_one_call(stack: Stack, capsys):
    """Past the 16 MB a JSON body may hold: the client sends binary tensors in chunks."""
    model = build_seed_model()
    job_id = write_model_job(DataDir(stack.data_dir), model, name="wide-batch")
    x = np.random.default_rng(5).random((10_000, 784), dtype="float32")
    client = Client(stack.api)
    client.predict(job_id, x[:1])  # the model loaded, so the timing below is the transfer
    started = time.perf_counter()
    predictions = client.predict(job_id, x)
    seconds = time.perf_counter() - started
    assert predictions.shape == (10_000, 10)
    assert predictions.dtype == np.float32
    np.testing.assert_allclose(predictions, model.predict(x, verbose=0), rtol=0, atol=1e-5)
    # The JSON path for comparison, in one body it fits in (1,000 rows is about 11 MB).
    started = time.perf_counter()
    response = requests.post(
        stack.url(f"/v1/models/{job_id}:predict"),
        json={"instances": x[:1000].tolist()},
        timeout=120,
    )
    json_seconds = time.perf_counter() - started
    assert response.status_code == 200, response.text[:300]
    with capsys.disabled():
        print(
            f"\n10,000 x 784 through client.predict: {10_000 / seconds:,.0f} rows/s; "
            f"1,000 rows as JSON: {1_000 / json_seconds:,.0f} rows/s"
        )
