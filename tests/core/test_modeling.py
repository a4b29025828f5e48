"""Building and compiling what the grammar parsed: constructors, preprocessing, callbacks, fit.

Requests go through `parse_job_request` against datasets stored by `core.datasets`, so these
tests build the real normalized form. (The model-equivalence tests for both request forms are in
test_model_forms.py.)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import keras
import numpy as np
import orjson
import pytest

from core.datasets import load_manifest, store_json
from core.grammar import parse_job_request
from core.grammar.shapes import summarize
from core.modeling import build_callbacks, build_model, compile_model, fit_arguments
from core.settings import Settings
from core.storage import DataDir, new_id

RNG = np.random.default_rng(7)


class Datasets:
    """Datasets stored on a temp data folder, and the `manifest_of` the parser reads them by."""

    def __init__(self, root: Path) -> None:
        self.data = DataDir(root)
        self.data.ensure()
        self.manifest_of = functools.partial(load_manifest, self.data)

    def store(self, **arrays: np.ndarray) -> str:
        document = {"arrays": {name: value.tolist() for name, value in arrays.items()}}
        dataset_id = new_id()
        body = orjson.dumps(document)
        store_json(self.data, dataset_id, document, body, settings=Settings(), owner=None)
        return dataset_id

    def parse(self, body: dict[str, Any]) -> dict[str, Any]:
        return parse_job_request(body, settings=Settings(), manifest_of=self.manifest_of)


@pytest.fixture
def datasets(tmp_path: Path) -> Datasets:
    return Datasets(tmp_path / "data")


def request(dataset: str, model: dict, **parts: Any) -> dict[str, Any]:
    body = {
        "model": model,
        "compile": {"optimizer": "rmsprop", "loss": "mse"},
        "fit": {"batch_size": 4, "epochs": 1},
        "data": {"dataset": dataset, "x": "x", "y": "y"},
    }
    body.update(parts)
    return body


def test_seed_model_compiles_and_fits(datasets):
    x, labels = RNG.random((16, 784), dtype=np.float32), RNG.integers(0, 10, 16)
    dataset = datasets.store(x=x, y=labels)
    layers = [
        {"class_name": "Dense", "config": {"units": 32, "kernel_initializer": "he_normal"}},
        {"class_name": "Activation", "config": {"activation": "relu"}},
        {"class_name": "Dense", "config": {"units": 10, "kernel_initializer": "he_normal"}},
        {"class_name": "Activation", "config": {"activation": "softmax"}},
    ]
    spec = datasets.parse(
        request(
            dataset,
            {"input_shape": [784], "layers": layers},
            compile={
                "optimizer": "rmsprop",
                "loss": "categorical_crossentropy",
                "metrics": ["accuracy"],
            },
            data={"dataset": dataset, "x": "x", "y": "y", "preprocess": {"y": {"one_hot": 10}}},
        )
    )
    model = build_model(spec)
    assert model.count_params() == summarize(spec)["total_params"] == 25_450
    assert isinstance(model.get_layer("dense").kernel_initializer, keras.initializers.HeNormal)
    compile_model(model, spec)
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)
    y = keras.utils.to_categorical(labels, 10)
    history = model.fit(x, y, verbose=0, callbacks=build_callbacks(spec), **fit_arguments(spec))
    assert set(history.history) == {"loss", "accuracy"}
    assert len(history.history["loss"]) == 1


def test_two_outputs_compile_with_a_loss_each(datasets):
    a, b = RNG.random((8, 4), dtype=np.float32), RNG.random((8, 6), dtype=np.float32)
    kind, price = RNG.integers(0, 3, 8), RNG.random((8, 1), dtype=np.float32)
    dataset = datasets.store(a=a, b=b, kind=kind, price=price)
    first, second = keras.Input((4,), name="first"), keras.Input((6,), name="second")
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([first, second]))
    outputs = [
        keras.layers.Dense(3, activation="softmax", name="kind")(hidden),
        keras.layers.Dense(1, name="price")(hidden),
    ]
    model_json = orjson.loads(keras.Model([first, second], outputs).to_json())
    spec = datasets.parse(
        request(
            dataset,
            model_json,
            compile={
                "optimizer": {"class_name": "Adam", "config": {"learning_rate": 0.01}},
                "loss": {"kind": "sparse_categorical_crossentropy", "price": "mse"},
                "loss_weights": {"kind": 1.0, "price": 0.5},
                "metrics": {"kind": ["accuracy"], "price": ["mae"]},
            },
            data={
                "dataset": dataset,
                "x": {"first": "a", "second": "b"},
                "y": {"kind": "kind", "price": "price"},
            },
        )
    )
    model = build_model(spec)
    assert model.output_names == ["kind", "price"]
    compile_model(model, spec)
    assert model.optimizer.learning_rate.numpy() == pytest.approx(0.01)
    history = model.fit(
        {"first": a, "second": b}, {"kind": kind, "price": price}, verbose=0, epochs=1
    )
    assert {"kind_loss", "price_loss", "kind_accuracy", "price_mae"} <= set(history.history)


def test_preprocessing_layers_take_raw_inputs(datasets):
    raw = RNG.random((6, 4, 4), dtype=np.float32) * 255
    dataset = datasets.store(x=raw, y=RNG.random((6, 2), dtype=np.float32))
    body = request(
        dataset,
        {"input_shape": [16], "layers": [{"class_name": "Dense", "config": {"units": 2}}]},
    )
    body["data"]["preprocess"] = {"x": {"scale": 1 / 255, "offset": -0.5, "reshape": [16]}}
    spec = datasets.parse(body)
    model = build_model(spec)
    assert [tensor.name for tensor in model.inputs] == ["input"]
    assert [layer.name for layer in model.layers] == [
        "input_rescaling",
        "input_reshape",
        "output",
    ]
    assert model.input_shape == (None, 4, 4)
    assert summarize(spec)["inputs"][0]["shape"] == [None, 4, 4]
    reference = keras.Sequential([keras.Input((16,)), keras.layers.Dense(2)])
    model.get_layer("output").set_weights(reference.get_weights())
    np.testing.assert_allclose(
        model.predict(raw, verbose=0),
        reference.predict(raw.reshape(6, 16) / 255 - 0.5, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_nested_objects_are_made_by_their_constructors(datasets):
    dataset = datasets.store(x=RNG.random((8, 4), dtype=np.float32), y=RNG.random((8, 1)))
    dense = {
        "units": 3,
        "activation": "tanh",
        "kernel_initializer": {
            "class_name": "RandomNormal",
            "config": {"mean": 0.0, "stddev": 0.5, "seed": 1},
        },
        "bias_initializer": "ones",
        "kernel_regularizer": {"class_name": "L1L2", "config": {"l1": 0.01, "l2": 0.0}},
        "kernel_constraint": "max_norm",
    }
    rnn = {"class_name": "GRU", "config": {"units": 2, "recurrent_activation": "hard_sigmoid"}}
    layers = [
        {"class_name": "Dense", "config": dense},
        {"class_name": "Reshape", "config": {"target_shape": [3, 1]}},
        {"class_name": "Bidirectional", "config": {"layer": rnn, "merge_mode": "sum"}},
        {"class_name": "Dense", "config": {"units": 1}},
    ]
    schedule = {
        "class_name": "ExponentialDecay",
        "config": {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.9},
    }
    spec = datasets.parse(
        request(
            dataset,
            {"input_shape": [4], "layers": layers},
            compile={
                "optimizer": {
                    "class_name": "SGD",
                    "config": {"momentum": 0.5, "learning_rate": schedule},
                },
                "loss": {"class_name": "Huber", "config": {"delta": 2.0}},
                "metrics": [{"class_name": "RootMeanSquaredError", "config": {}}],
            },
        )
    )
    model = build_model(spec)
    assert model.count_params() == summarize(spec)["total_params"]
    layer = model.get_layer("dense")
    assert layer.activation is keras.activations.tanh
    assert isinstance(layer.kernel_initializer, keras.initializers.RandomNormal)
    assert layer.kernel_initializer.stddev == 0.5
    np.testing.assert_array_equal(layer.bias.numpy(), np.ones(3))
    assert isinstance(layer.kernel_regularizer, keras.regularizers.L1L2)
    assert isinstance(layer.kernel_constraint, keras.constraints.MaxNorm)
    wrapper = model.get_layer("bidirectional")
    assert isinstance(wrapper.forward_layer, keras.layers.GRU)
    assert wrapper.forward_layer.cell.recurrent_activation is keras.activations.hard_sigmoid
    compile_model(model, spec)
    assert model.optimizer.momentum == 0.5
    assert isinstance(model.optimizer._learning_rate, keras.optimizers.schedules.ExponentialDecay)
    assert isinstance(model.loss, keras.losses.Huber)


def test_callbacks_and_fit_arguments(datasets):
    dataset = datasets.store(x=RNG.random((8, 2), dtype=np.float32), y=np.arange(8) % 2)
    body = request(
        dataset,
        {"input_shape": [2], "layers": [{"class_name": "Dense", "config": {"units": 1}}]},
        fit={
            "batch_size": 4,
            "epochs": 3,
            "validation_split": 0.25,
            "class_weight": {"0": 1.0, "1": 3.0},
            "callbacks": [
                {"class_name": "EarlyStopping", "config": {"monitor": "val_loss", "patience": 2}},
                {"class_name": "ReduceLROnPlateau", "config": {"factor": 0.5}},
                {"class_name": "TerminateOnNaN"},
            ],
        },
    )
    spec = datasets.parse(body)
    early, plateau, nan = build_callbacks(spec)
    assert isinstance(early, keras.callbacks.EarlyStopping)
    assert (early.monitor, early.patience) == ("val_loss", 2)
    assert plateau.factor == 0.5
    assert isinstance(nan, keras.callbacks.TerminateOnNaN)
    arguments = fit_arguments(spec)
    assert arguments["class_weight"] == {0: 1.0, 1: 3.0}
    assert {key: arguments[key] for key in ("batch_size", "epochs", "validation_split")} == {
        "batch_size": 4,
        "epochs": 3,
        "validation_split": 0.25,
    }
    assert not {"x", "y", "callbacks", "initial_epoch", "validation_data"} & set(arguments)
    assert spec["checkpoint"] == {"monitor": "val_loss", "mode": "min", "keep": 3}


def test_a_class_outside_the_allowlist_is_never_built():
    """Defence in depth: a spec that skipped the grammar still cannot reach other classes."""
    spec = {
        "model": {
            "inputs": [{"name": "input", "shape": [2], "dtype": "float32"}],
            "layers": [
                {
                    "name": "output",
                    "class_name": "Lambda",
                    "config": {"function": "print"},
                    "inbound": ["input"],
                }
            ],
            "outputs": ["output"],
        },
        "data": {},
    }
    with pytest.raises(ValueError, match="not in the allowlist"):
        build_model(spec)
