"""POST /v1/jobs:validate: the summary, or 422 with every mismatch against uploaded datasets."""

from __future__ import annotations

import json
from typing import Any

import keras
import numpy as np
import pytest

from core.keys import hash_key
from service import create_app
from tests.support.datasets import upload_npz

RNG = np.random.default_rng(3)


def request_for(dataset: str, **changes: Any) -> dict[str, Any]:
    """The DESIGN.md request shape: an MLP on 8 features and 3 classes."""
    body: dict[str, Any] = {
        "model": {
            "input_shape": [8],
            "layers": [
                {"class_name": "Dense", "config": {"units": 16, "activation": "relu"}},
                {"class_name": "Dense", "config": {"units": 3, "activation": "softmax"}},
            ],
        },
        "compile": {
            "optimizer": {"class_name": "RMSprop", "config": {"learning_rate": 0.001}},
            "loss": "sparse_categorical_crossentropy",
            "metrics": ["accuracy"],
        },
        "fit": {"batch_size": 4, "epochs": 1},
        "data": {"dataset": dataset, "x": "x", "y": "y"},
    }
    body.update(changes)
    return body


@pytest.fixture
def dataset(client) -> str:
    return upload_npz(
        client,
        {
            "x": RNG.random((12, 8), dtype=np.float32),
            "y": RNG.integers(0, 3, 12),
            "images": RNG.random((12, 2, 4), dtype=np.float32),
            "onehot": np.eye(3, dtype=np.float32)[RNG.integers(0, 3, 12)],
            "labels9": np.arange(12) % 9,
            "weights": np.ones(12, dtype=np.float32),
        },
    )


def errors_of(response) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == "application/problem+json"
    return response.get_json()["errors"]


def test_valid_request_answers_the_summary(client, dataset):
    response = client.post("/v1/jobs:validate", json=request_for(dataset))
    assert response.status_code == 200, response.get_json()
    summary = response.get_json()
    assert summary["layers"] == [
        {"name": "dense", "class_name": "Dense", "output_shape": [None, 16], "params": 144},
        {"name": "output", "class_name": "Dense", "output_shape": [None, 3], "params": 51},
    ]
    assert summary["total_params"] == summary["trainable_params"] == 195
    assert summary["inputs"] == [{"name": "input", "shape": [None, 8], "dtype": "float32"}]
    assert summary["outputs"] == [{"name": "output", "shape": [None, 3]}]


def test_preprocessing_shows_in_the_summary(client, dataset):
    body = request_for(dataset)
    body["data"] = {
        "dataset": dataset,
        "x": "images",
        "y": "onehot",
        "preprocess": {"x": {"scale": 0.5, "reshape": [8]}},
    }
    body["compile"]["loss"] = "categorical_crossentropy"
    response = client.post("/v1/jobs:validate", json=body)
    assert response.status_code == 200, response.get_json()
    summary = response.get_json()
    assert summary["inputs"][0]["shape"] == [None, 2, 4]
    assert [row["name"] for row in summary["layers"]][:2] == ["input_rescaling", "input_reshape"]


def test_ten_billion_parameters_refused(client, dataset):
    body = request_for(dataset)
    body["model"] = {
        "input_shape": [8],
        "layers": [
            {"class_name": "Dense", "config": {"units": 100_000}},
            {"class_name": "Dense", "config": {"units": 100_000}},
            {"class_name": "Dense", "config": {"units": 3}},
        ],
    }
    (error,) = errors_of(client.post("/v1/jobs:validate", json=body))
    assert error["path"] == "/model"
    assert "10,001,300,003 parameters" in error["message"]
    assert "50,000,000" in error["message"]
    assert error["received"] == 10_001_300_003


def test_input_shape_against_x(client, dataset):
    body = request_for(dataset)
    body["data"]["x"] = "images"
    (error,) = errors_of(client.post("/v1/jobs:validate", json=body))
    assert error["path"] == "/data/x"
    assert error["received"] == "images"
    assert "rows of shape [8]" in error["message"]
    assert "[2, 4]" in error["message"]


def test_reshape_that_cannot_fit(client, dataset):
    body = request_for(dataset)
    body["data"]["preprocess"] = {"x": {"reshape": [9]}}
    (error,) = errors_of(client.post("/v1/jobs:validate", json=body))
    assert error["path"] == "/data/x"
    assert "[8] (8 values)" in error["message"]
    assert "[9] (9 values)" in error["message"]


def test_output_units_against_y_classes(client, dataset):
    body = request_for(dataset)
    body["data"]["y"] = "labels9"
    (error,) = errors_of(client.post("/v1/jobs:validate", json=body))
    assert error["path"] == "/data/y"
    assert "9 classes (0..8)" in error["message"]
    assert "3 units" in error["message"]
    assert error["expected"] == "at most 3 classes"


def test_output_units_against_one_hot_count(client, dataset):
    body = request_for(dataset)
    body["compile"]["loss"] = "categorical_crossentropy"
    body["data"]["preprocess"] = {"y": {"one_hot": 5}}
    (error,) = errors_of(client.post("/v1/jobs:validate", json=body))
    assert error["path"] == "/data/y"
    assert "3 units" in error["message"]
    assert "one_hot is 5" in error["message"]


def test_categorical_loss_against_integer_labels(client, dataset):
    body = request_for(dataset)
    body["compile"]["loss"] = "categorical_crossentropy"
    (error,) = errors_of(client.post("/v1/jobs:validate", json=body))
    assert error["path"] == "/data/y"
    assert "rows of shape [3]" in error["message"]
    assert "sparse_categorical_crossentropy" in error["message"]
    assert "one_hot" in error["message"]


def test_arrays_with_nan_or_inf_are_named_with_their_counts(client):
    x = RNG.random((6, 8), dtype=np.float32)
    x[0, 0] = x[3, 1] = np.nan
    x[4, 4] = np.inf
    y = np.array([0, 1, 2, 0, 1, 2], dtype=np.float32)
    dataset = upload_npz(client, {"x": x, "y": y})
    (error,) = errors_of(client.post("/v1/jobs:validate", json=request_for(dataset)))
    assert error["path"] == "/data/x"
    assert error["received"] == "x"
    assert "2 NaN and 1 Inf" in error["message"]


def test_unknown_array_names_list_the_arrays(client, dataset):
    body = request_for(dataset)
    body["data"]["x"], body["data"]["y"] = "features", "target"
    errors = errors_of(client.post("/v1/jobs:validate", json=body))
    assert [(e["path"], e["received"]) for e in errors] == [
        ("/data/x", "features"),
        ("/data/y", "target"),
    ]
    assert errors[0]["expected"] == "one of images, labels9, onehot, weights, x, y"


def test_unknown_dataset_and_every_error_at_once(client):
    body = request_for("0" * 32)
    body["model"]["layers"][0]["config"]["units"] = -3
    errors = errors_of(client.post("/v1/jobs:validate", json=body))
    paths = [e["path"] for e in errors]
    assert "/model/layers/0/config/units" in paths
    assert "/data/dataset" in paths
    unknown = errors[paths.index("/data/dataset")]
    assert unknown["received"] == "0" * 32
    assert "POST /v1/datasets" in unknown["message"]


def test_malformed_dataset_id_is_an_unknown_dataset(client):
    (error,) = errors_of(client.post("/v1/jobs:validate", json=request_for("../../etc")))
    assert error["path"] == "/data/dataset"
    assert error["received"] == "../../etc"


def test_someone_elses_dataset_is_unknown(settings):
    alice, bob = "alice-key-123", "bob-key-456"
    keys = f"alice:{hash_key(alice)},bob:{hash_key(bob)}"
    client = create_app(settings.with_overrides(api_keys=keys)).test_client()
    dataset = upload_npz(
        client,
        {"x": RNG.random((4, 8), dtype=np.float32), "y": np.arange(4) % 3},
        headers={"Authorization": f"Bearer {alice}"},
    )
    body = request_for(dataset)
    own = client.post("/v1/jobs:validate", json=body, headers={"Authorization": f"Bearer {alice}"})
    assert own.status_code == 200, own.get_json()
    other = client.post("/v1/jobs:validate", json=body, headers={"Authorization": f"Bearer {bob}"})
    (error,) = errors_of(other)
    assert error["path"] == "/data/dataset"


def test_validation_and_test_references_and_sample_weight(client, dataset):
    holdout = upload_npz(client, {"x": RNG.random((4, 8), dtype=np.float32), "y": np.arange(4) % 3})
    body = request_for(dataset)
    body["data"]["sample_weight"] = "weights"
    body["data"]["validation"] = {"dataset": holdout}
    body["data"]["test"] = {"dataset": holdout, "x": "x", "y": "y"}
    assert client.post("/v1/jobs:validate", json=body).status_code == 200

    body["data"]["sample_weight"] = "heavy"
    body["data"]["validation"] = {"dataset": "f" * 32}
    body["data"]["test"] = {"dataset": holdout, "x": "nope"}
    errors = errors_of(client.post("/v1/jobs:validate", json=body))
    assert [e["path"] for e in errors] == [
        "/data/sample_weight",
        "/data/validation/dataset",
        "/data/test/x",
    ]


def test_two_inputs_need_a_mapping(client):
    dataset = upload_npz(
        client,
        {
            "img": RNG.random((6, 4), dtype=np.float32),
            "meta": RNG.random((6, 2), dtype=np.float32),
            "y": np.arange(6) % 2,
        },
    )
    body = request_for(dataset)
    body["data"]["x"] = "img"
    body["model"] = two_input_model()
    body["compile"]["loss"] = "sparse_categorical_crossentropy"
    (error,) = errors_of(client.post("/v1/jobs:validate", json=body))
    assert error["path"] == "/data/x"
    assert "image, meta" in error["expected"]

    body["data"]["x"] = {"image": "img", "meta": "meta"}
    response = client.post("/v1/jobs:validate", json=body)
    assert response.status_code == 200, response.get_json()
    assert [i["name"] for i in response.get_json()["inputs"]] == ["image", "meta"]

    body["data"]["x"] = {"image": "meta", "meta": "img"}
    errors = errors_of(client.post("/v1/jobs:validate", json=body))
    assert [e["path"] for e in errors] == ["/data/x/image", "/data/x/meta"]


def two_input_model() -> dict[str, Any]:
    """A Functional two-input model as Keras's to_json() writes it."""
    image = keras.Input(shape=(4,), name="image")
    meta = keras.Input(shape=(2,), name="meta")
    joined = keras.layers.Concatenate(name="joined")([image, meta])
    output = keras.layers.Dense(2, activation="softmax", name="output")(joined)
    return json.loads(keras.Model([image, meta], output).to_json())


def test_an_enormous_model_is_a_422_never_a_500(client, dataset):
    body = request_for(dataset)
    body["model"] = {
        "input_shape": [16_777_216, 16_777_216],
        "layers": [{"class_name": "Flatten"}, {"class_name": "Dense", "config": {"units": 3}}],
    }
    (error,) = errors_of(client.post("/v1/jobs:validate", json=body))
    assert error["path"] == "/model"
    assert "(None, 16777216, 16777216)" in error["message"]
    assert error["expected"] == "at most 2,147,483,647 values per row"


def test_the_cost_estimate_is_under_cost(client, dataset):
    response = client.post("/v1/jobs:validate", json=request_for(dataset))
    assert response.status_code == 200, response.get_json()
    cost = response.get_json()["cost"]
    # 195 parameters: weights, gradients and RMSprop's one slot, four bytes each.
    assert cost["memory"]["weights"] == cost["memory"]["gradients"] == 195 * 4
    assert cost["memory"]["optimizer"] == 195 * 4
    assert cost["values_per_row"] == 8 + 16 + 3
    assert cost["budget"]["memory_bytes"] == 16 << 30
    assert [layer["name"] for layer in cost["layers"]] == ["dense", "output"]
    # Three passes over 12 rows, and 3 steps of 4 rows each updating 195 parameters.
    assert cost["flops_per_epoch"] == 3 * 12 * (2 * 144 + 2 * 51) + 3 * 195 * 10


def test_a_job_over_the_workers_budget_is_refused(settings):
    client = create_app(settings.with_overrides(worker_memory_bytes=1000)).test_client()
    dataset = upload_npz(
        client, {"x": RNG.random((12, 8), dtype=np.float32), "y": RNG.integers(0, 3, 12)}
    )
    problem = client.post("/v1/jobs:validate", json=request_for(dataset))
    (error,) = errors_of(problem)
    assert error["path"] == "/model"
    assert "the weights, their gradients and optimizer state take 2.3 KB" in error["message"]
    assert "FITSERVE_WORKER_MEMORY_BYTES" in error["message"]
    submitted = client.post("/v1/jobs", json=request_for(dataset))
    assert errors_of(submitted) == [error]
