"""What training produces through the real stack: quality, model kinds, early stop, divergence."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from bench.keras_script import train as train_bare_keras
from core.checkpoints import load_checkpoint
from tests.support.seed_model import FEATURES, make_blobs, seed_request
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

SEED_EPOCHS = 5


@pytest.fixture(scope="module")
def seed_data() -> tuple[np.ndarray, np.ndarray]:
    return make_blobs(3000)


@pytest.fixture(scope="module")
def seed_dataset(stack: Stack, seed_data) -> str:
    x, y = seed_data
    return stack.upload(x=x, y=y)


def test_seed_model_learns_where_bare_keras_does(stack: Stack, seed_dataset, seed_data) -> None:
    job = stack.submit(seed_request(seed_dataset, epochs=SEED_EPOCHS))
    done = stack.wait_finished(job["id"])

    assert done["status"] == "succeeded", done["error"]
    assert done["metrics"]["last"]["val_accuracy"] >= 0.8
    bare = train_bare_keras(*seed_data, epochs=SEED_EPOCHS)
    assert bare["history"]["val_accuracy"][-1] >= 0.8

    metrics = requests.get(stack.url(done["links"]["metrics"]), timeout=30).json()
    assert metrics["epochs"] == list(range(1, SEED_EPOCHS + 1))
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(metrics["history"][name]) == SEED_EPOCHS
    job_dir = stack.data_dir / "jobs" / job["id"]
    kept = done["checkpoints"]
    best = done["metrics"]["best"]
    assert [entry["version"] for entry in kept] == sorted({4, 5, best["version"]})
    assert best["value"] == min(metrics["history"]["val_loss"])
    on_disk = sorted(path.name for path in (job_dir / "checkpoints").glob("*.keras"))
    assert on_disk == [entry["file"].split("/")[1] for entry in kept]
    for entry in kept:
        model = load_checkpoint(job_dir, entry)  # verifies the sha256 first
        assert model.inputs[0].shape == (None, FEATURES)


def images(rows: int = 256, seed: int = 1) -> dict[str, np.ndarray]:
    """8x8 one-channel images: class 1 has a bright top half."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % 2
    x = rng.normal(scale=0.5, size=(rows, 8, 8, 1))
    x[y == 1, :4] += 1.5
    return {"x": x.astype("float32"), "y": y}


def sequences(rows: int = 256, seed: int = 2) -> dict[str, np.ndarray]:
    """Ten steps of three features: class 1 drifts upward over time."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % 2
    drift = np.linspace(0, 1, 10)[None, :, None] * (2 * y - 1)[:, None, None]
    x = rng.normal(scale=0.3, size=(rows, 10, 3)) + drift
    return {"x": x.astype("float32"), "y": y}


def two_inputs(rows: int = 256, seed: int = 3) -> dict[str, np.ndarray]:
    """An `image` vector and a `meta` vector; the class depends on both."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(rows, 6)).astype("float32")
    meta = rng.normal(size=(rows, 2)).astype("float32")
    y = ((image[:, 0] + meta[:, 0]) > 0).astype("int64")
    return {"image": image, "meta": meta, "y": y}


def functional_model_json() -> dict:
    """A two-input Functional model as `model.to_json()` writes it."""
    import json

    import keras

    image = keras.Input((6,), name="image")
    meta = keras.Input((2,), name="meta")
    joined = keras.layers.Concatenate(name="joined")([image, meta])
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(joined)
    output = keras.layers.Dense(2, activation="softmax", name="output")(hidden)
    return json.loads(keras.Model([image, meta], output).to_json())


SMALL_MODELS = {
    "cnn": (
        images,
        {
            "input_shape": [8, 8, 1],
            "layers": [
                {"class_name": "Conv2D", "config": {"filters": 4, "kernel_size": 3}},
                {"class_name": "MaxPooling2D", "config": {"pool_size": 2}},
                {"class_name": "Flatten", "config": {}},
                {"class_name": "Dense", "config": {"units": 2, "activation": "softmax"}},
            ],
        },
        {"x": "x"},
    ),
    "lstm": (
        sequences,
        {
            "input_shape": [10, 3],
            "layers": [
                {"class_name": "LSTM", "config": {"units": 8}},
                {"class_name": "Dense", "config": {"units": 2, "activation": "softmax"}},
            ],
        },
        {"x": "x"},
    ),
    "functional": (two_inputs, None, {"x": {"image": "image", "meta": "meta"}}),
}


@pytest.mark.parametrize("kind", list(SMALL_MODELS))
def test_small_models_train_with_test_metrics(stack: Stack, kind: str) -> None:
    make_data, model, mapping = SMALL_MODELS[kind]
    dataset = stack.upload(**make_data())
    split = {"dataset": dataset, **mapping, "y": "y"}
    request = {
        "name": kind,
        "seed": 5,
        "model": model or functional_model_json(),
        "compile": {
            "optimizer": {"class_name": "Adam", "config": {"learning_rate": 0.01}},
            "loss": "sparse_categorical_crossentropy",
            "metrics": ["accuracy"],
        },
        "fit": {"batch_size": 32, "epochs": 3, "validation_split": 0.2},
        "data": {**split, "test": split},
    }
    job = stack.submit(request)
    done = stack.wait_finished(job["id"])

    assert done["status"] == "succeeded", done["error"]
    assert done["final"]["version"] == 3
    assert set(done["test_metrics"]) >= {"loss", "accuracy"}
    assert done["test_metrics"]["accuracy"] > 0.6


def test_early_stopping_ends_before_epochs(stack: Stack, seed_dataset) -> None:
    # No epoch improves val_loss by 100, so patience 1 stops after epoch 2.
    stop = {"monitor": "val_loss", "patience": 1, "min_delta": 100}
    request = seed_request(seed_dataset, epochs=50)
    request["fit"]["callbacks"] = [{"class_name": "EarlyStopping", "config": stop}]
    job = stack.submit(request)
    done = stack.wait_finished(job["id"])

    assert done["status"] == "succeeded", done["error"]
    assert done["final"]["version"] == done["final"]["epoch"] == 2
    assert done["stop"]["reason"] == "early_stopping"
    assert done["stop"]["epoch"] == 2
    assert done["progress"]["fraction"] == 1.0
    metrics = requests.get(stack.url(done["links"]["metrics"]), timeout=30).json()
    assert metrics["epochs"] == [1, 2]


def test_diverging_job_fails_with_nan_loss(stack: Stack, seed_dataset) -> None:
    request = seed_request(seed_dataset, epochs=5)
    request["compile"]["optimizer"] = {"class_name": "SGD", "config": {"learning_rate": 1e38}}
    job = stack.submit(request)
    done = stack.wait_finished(job["id"])

    assert done["status"] == "failed"
    assert done["error"]["reason"] == "nan_loss"
    assert "epoch 1" in done["error"]["message"]
    assert "learning_rate" in done["error"]["message"]
