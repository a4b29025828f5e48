"""The CLI as people use it: human tables without --json, class names, one line and exit 3
when the server is down, a retry notice while following, and downloads as the model was."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
import pytest

from client import Client
from core.storage import DataDir
from tests.client.conftest import fitserve
from tests.support.models import keep_labels, write_model_job
from tests.support.processes import free_port

CLASSES = ["setosa", "versicolor", "virginica"]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CSV = "sepal_length,sepal_width,petal_length,petal_width,species\n" + "".join(
    f"{5 + i / 10},{3 + i / 20},{1 + i / 5},{i / 10},{CLASSES[i % 3]}\n" for i in range(12)
)
ROWS = np.random.default_rng(3).normal(size=(3, 4)).astype("float32")


def species_model() -> Any:
    import keras

    keras.utils.set_random_seed(4)
    return keras.Sequential(
        [keras.Input((4,), name="input"), keras.layers.Dense(3, activation="softmax", name="out")],
        name="iris",
    )


@pytest.fixture
def species(settings) -> tuple[str, Any]:
    """A served model that kept the species names and the CSV columns; its id and Keras model."""
    data = DataDir(settings.data_dir)
    model = species_model()
    job_id = write_model_job(data, model)
    keep_labels(data, job_id, CLASSES, FEATURES)
    return job_id, model


def test_datasets_show_prints_a_table_with_classes_and_features(server_url, tmp_path):
    path = tmp_path / "iris.csv"
    path.write_text(CSV)
    uploaded = fitserve(
        "datasets", "upload", str(path), "--label", "species", "--url", server_url, "--json"
    )
    assert uploaded.returncode == 0, uploaded.stderr
    manifest = json.loads(uploaded.stdout)
    assert manifest["features"] == {"x": FEATURES}
    assert manifest["classes"] == {"y": CLASSES}

    shown = fitserve("datasets", "show", manifest["id"], "--url", server_url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["DATASET"]
    assert lines[1].split() == ["id", manifest["id"]]
    facts = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in lines[1:9] if line)
    assert facts["classes of y"] == "setosa, versicolor, virginica"
    assert facts["features of x"] == ", ".join(FEATURES)
    header = next(line for line in lines if line.startswith("ARRAY"))
    assert header.split() == ["ARRAY", "SHAPE", "DTYPE", "MIN", "MAX", "NAN/INF", "LABELS"]
    assert ["x", "12x4", "float32", "0", "6.1", "0/0", "45"] in [line.split() for line in lines]


def test_jobs_validate_prints_the_layers_and_the_cost(server_url, tmp_path):
    api = Client(server_url)
    dataset = api.upload_arrays({"x": ROWS, "y": np.arange(3)})
    spec = {
        "model": {"input_shape": [4], "layers": [{"class_name": "Dense", "config": {"units": 3}}]},
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy"},
        "fit": {"epochs": 1},
        "data": {"dataset": dataset["id"], "x": "x", "y": "y"},
    }
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(spec))
    result = fitserve("jobs", "validate", str(spec_file), "--url", server_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "valid: the request can be submitted"
    assert lines[1].split() == ["LAYER", "CLASS", "OUTPUT", "SHAPE", "PARAMS"]
    assert lines[2].split() == ["output", "Dense", "(None,", "3)", "15"]
    assert lines[3] == "params: 15 (trainable 15, non-trainable 0)"
    assert lines[4].startswith("memory: ")


def test_predict_and_classify_print_class_names(server_url, species, tmp_path):
    job_id, model = species
    inputs = tmp_path / "rows.npy"
    np.save(inputs, ROWS)
    want = np.asarray(model(ROWS, training=False))
    names = [CLASSES[i] for i in want.argmax(1)]

    predicted = fitserve("predict", job_id, str(inputs), "--url", server_url)
    assert predicted.returncode == 0, predicted.stderr
    header, *rows = predicted.stdout.splitlines()
    assert header.split() == ["ROW", "CLASS", "OUTPUT"]
    assert [row.split()[1] for row in rows] == names
    printed = fitserve("predict", job_id, str(inputs), "--url", server_url, "--json")
    as_json = json.loads(printed.stdout)
    assert as_json["classes"] == names
    assert np.allclose(as_json["outputs"], want, atol=1e-6)

    classified = fitserve("classify", job_id, str(inputs), "--k", "2", "--url", server_url)
    assert classified.returncode == 0, classified.stderr
    header, *rows = classified.stdout.splitlines()
    assert header.split() == ["ROW", "CLASS", "SCORE", "OTHERS"]
    assert [row.split()[1] for row in rows] == names

    api = Client(server_url)
    result = api.classify(job_id, ROWS, k=1)
    assert [pairs[0][0] for pairs in result] == names
    assert [pairs[0][1] for pairs in result] == pytest.approx(want.max(1).tolist(), abs=1e-6)
    assert api.predict(job_id, ROWS, classes=True).tolist() == names


@pytest.mark.parametrize(
    "command",
    [
        ["datasets", "show", "0" * 32],
        ["datasets", "list"],
        ["jobs", "validate", "SPEC"],
        ["jobs", "list"],
        ["predict", "m", "INPUTS"],
        ["classify", "m", "INPUTS"],
        ["models", "download", "m", "OUT"],
    ],
)
def test_a_server_that_is_down_is_one_line_and_exit_3(command, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    inputs = tmp_path / "rows.npy"
    np.save(inputs, ROWS)
    files = {"SPEC": str(spec), "INPUTS": str(inputs), "OUT": str(tmp_path / "m.keras")}
    url = f"http://127.0.0.1:{free_port()}"
    result = fitserve(*[files.get(part, part) for part in command], "--url", url)
    assert result.returncode == 3
    assert result.stderr == f"error: cannot reach fitserve at {url}: connection refused\n"
    assert result.stdout == ""


def test_following_says_it_is_retrying(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = fitserve("jobs", "follow", "0" * 32, "--interval", "0.01", "--url", url)
    assert result.returncode == 3
    notices = result.stderr.splitlines()
    assert notices[0] == "lost fitserve (connection refused); retrying in 0s (attempt 1 of 5)"
    assert len([line for line in notices if line.startswith("lost fitserve")]) == 5
    assert notices[-1] == f"error: cannot reach fitserve at {url}: connection refused"


def test_a_download_is_readable_by_others_and_keeps_its_class_and_name(
    server_url, species, tmp_path
):
    import keras

    job_id, _ = species
    previous = os.umask(0o022)
    try:
        path = Client(server_url).download_model(job_id, tmp_path / "iris.keras")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert (type(loaded), loaded.name) == (keras.Sequential, "iris")
