"""Preprocessing that travels with the model: normalize from the training data, per-feature
scale and offset, a Normalization layer with given statistics, image augmentation; trained by
train_job, predicted from raw inputs, exported to ONNX."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from core.datasets import load_manifest
from core.errors import InvalidRequest
from core.grammar import parse_job_request
from core.serving.export import write_onnx
from core.settings import Settings
from core.storage import DataDir
from core.training import train_job
from tests.core.test_training import RecordingControl, store

ROWS, FEATURES, CLASSES = 200, 3, 2


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def data(settings: Settings) -> DataDir:
    folder = DataDir(settings.data_dir)
    folder.ensure()
    return folder


def tabular(seed: int = 0) -> dict[str, np.ndarray]:
    """Features on very different scales (around 1000, 1 and -50), labels from the second."""
    rng = np.random.default_rng(seed)
    x = rng.normal([1000.0, 1.0, -50.0], [300.0, 0.5, 10.0], size=(ROWS, FEATURES))
    return {"x": x.astype("float32"), "y": (x[:, 1] > 1.0).astype("int64")}


def request(dataset: str, layers: list[dict] | None = None, **preprocess: Any) -> dict:
    return {
        "seed": 5,
        "model": {
            "input_shape": [FEATURES],
            "layers": [
                *(layers or []),
                {"class_name": "Dense", "config": {"units": CLASSES, "activation": "softmax"}},
            ],
        },
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy"},
        "fit": {"batch_size": 32, "epochs": 1, "validation_split": 0.25},
        "data": {"dataset": dataset, "x": "x", "y": "y", "preprocess": {"x": preprocess}},
    }


def train(data: DataDir, settings: Settings, tmp_path: Path, body: dict) -> keras.Model:
    spec = parse_job_request(
        body, settings=settings, manifest_of=lambda found: load_manifest(data, found)
    )
    job_dir = tmp_path / "job"
    result = train_job(job_dir, spec, data, settings, RecordingControl(), resume=None)
    assert result["status"] == "succeeded"
    return keras.saving.load_model(job_dir / "model.keras")


def front(model: keras.Model, class_name: str) -> keras.layers.Layer:
    (layer,) = [layer for layer in model.layers if type(layer).__name__ == class_name]
    return layer


def test_normalize_bakes_the_training_rows_statistics_into_the_model(data, settings, tmp_path):
    arrays = tabular()
    dataset = store(data, settings, tmp_path, **arrays)
    model = train(data, settings, tmp_path, request(dataset, normalize=True))

    layer = front(model, "Normalization")
    # validation_split 0.25: the statistics are those of the first 150 rows only.
    training = arrays["x"][:150].astype(np.float64)
    np.testing.assert_allclose(np.ravel(layer.mean), training.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(np.ravel(layer.variance), training.var(axis=0), rtol=1e-5)
    # The model takes raw rows: its first layer's output is the manual normalization.
    probe = keras.Model(model.inputs, layer.output)
    manual = (arrays["x"] - training.mean(axis=0)) / np.sqrt(training.var(axis=0))
    np.testing.assert_allclose(probe.predict(arrays["x"], verbose=0), manual, atol=1e-4)


def test_normalize_with_a_scale_is_refused(data, settings, tmp_path):
    dataset = store(data, settings, tmp_path, **tabular())
    body = request(dataset, normalize=True, scale=0.5)
    with pytest.raises(InvalidRequest) as refused:
        parse_job_request(
            body, settings=settings, manifest_of=lambda found: load_manifest(data, found)
        )
    (error,) = refused.value.errors
    assert error.path == "/data/preprocess/x/normalize"


def test_per_feature_scale_and_offset_become_one_rescaling(data, settings, tmp_path):
    arrays = tabular()
    dataset = store(data, settings, tmp_path, **arrays)
    scale, offset = [0.001, 1.0, 0.1], [-1.0, 0.0, 5.0]
    model = train(data, settings, tmp_path, request(dataset, scale=scale, offset=offset))

    probe = keras.Model(model.inputs, front(model, "Rescaling").output)
    expected = arrays["x"] * np.float32(scale) + np.float32(offset)
    np.testing.assert_allclose(probe.predict(arrays["x"], verbose=0), expected, rtol=1e-5)


def test_a_scale_list_of_the_wrong_length_names_the_features(data, settings, tmp_path):
    dataset = store(data, settings, tmp_path, **tabular())
    with pytest.raises(InvalidRequest) as refused:
        parse_job_request(
            request(dataset, scale=[1.0, 2.0]),
            settings=settings,
            manifest_of=lambda found: load_manifest(data, found),
        )
    (error,) = refused.value.errors
    assert (error.path, error.received) == ("/data/preprocess/x/scale", [1.0, 2.0])
    assert "3 features" in error.message


def normalization_json(mean: list[float], variance: list[float]) -> dict:
    """A Keras model with a Normalization layer, as its to_json() writes it."""
    inputs = keras.Input((FEATURES,), name="input")
    hidden = keras.layers.Normalization(mean=mean, variance=variance, name="norm")(inputs)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="output")(hidden)
    return json.loads(keras.Model(inputs, outputs).to_json())


def test_a_normalization_layer_with_its_statistics_trains_from_to_json(data, settings, tmp_path):
    arrays = tabular()
    dataset = store(data, settings, tmp_path, **arrays)
    mean, variance = [1000.0, 1.0, -50.0], [90000.0, 0.25, 100.0]
    body = request(dataset)
    body["model"] = normalization_json(mean, variance)
    model = train(data, settings, tmp_path, body)

    probe = keras.Model(model.inputs, model.get_layer("norm").output)
    manual = (arrays["x"] - np.array(mean)) / np.sqrt(variance)
    np.testing.assert_allclose(probe.predict(arrays["x"], verbose=0), manual, atol=1e-4)


def test_a_normalization_that_needs_adapt_is_refused_with_what_to_do(data, settings, tmp_path):
    dataset = store(data, settings, tmp_path, **tabular())
    adapted = {"class_name": "Normalization", "config": {"axis": -1}}
    with pytest.raises(InvalidRequest) as refused:
        parse_job_request(
            request(dataset, [adapted]),
            settings=settings,
            manifest_of=lambda found: load_manifest(data, found),
        )
    paths = [error.path for error in refused.value.errors]
    assert paths == ["/model/layers/0/config/mean", "/model/layers/0/config/variance"]
    assert "data.preprocess.x.normalize" in refused.value.errors[0].message


def test_augmentation_trains_on_images_and_is_inactive_at_inference(data, settings, tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(64, 8, 8, 1)).astype("uint8")
    dataset = store(data, settings, tmp_path, x=images, y=np.arange(64) % CLASSES)
    augment = [
        {"class_name": "RandomFlip", "config": {"mode": "horizontal", "seed": 1}},
        {"class_name": "RandomRotation", "config": {"factor": 0.1, "seed": 2}},
        {"class_name": "RandomZoom", "config": {"height_factor": 0.1, "seed": 3}},
        {"class_name": "RandomContrast", "config": {"factor": 0.2, "seed": 4}},
        {"class_name": "Flatten", "config": {}},
    ]
    body = request(dataset, augment, scale=1 / 255)
    body["model"]["input_shape"] = [8, 8, 1]
    model = train(data, settings, tmp_path, body)

    flatten = keras.Model(model.inputs, model.get_layer("flatten").output)
    seen = flatten.predict(images, verbose=0)
    np.testing.assert_allclose(seen, images.reshape(64, -1) / 255, atol=1e-6)


def test_the_onnx_export_carries_normalization_and_drops_augmentation(tmp_path):
    inputs = keras.Input((4, 4, 2), name="input")
    hidden = keras.layers.Normalization(mean=[1.0, 2.0], variance=[4.0, 9.0])(inputs)
    hidden = keras.layers.RandomFlip(seed=1)(hidden)
    outputs = keras.layers.Dense(3, name="output")(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, outputs)
    written = write_onnx(model, tmp_path / "model.keras")
    assert written is not None

    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    rows = np.random.default_rng(0).normal(size=(5, 4, 4, 2)).astype("float32")
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: rows})
    np.testing.assert_allclose(onnx_out, model.predict(rows, verbose=0), atol=1e-5)
