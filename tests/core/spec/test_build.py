"""Models built from normalized specs equal the same models built directly in Keras."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

from core.spec.build import build_callbacks, build_model, compile_model, fit_arguments
from core.spec.shapes import summarize

RNG = np.random.default_rng(7)


def spec_of(model: dict[str, Any], **parts: Any) -> dict[str, Any]:
    spec = {
        "model": model,
        "compile": {
            "optimizer": {"class_name": "RMSprop", "config": {"learning_rate": 0.001}},
            "loss": "categorical_crossentropy",
            "metrics": ["accuracy"],
        },
        "fit": {"batch_size": 8, "epochs": 1, "callbacks": []},
        "data": {"preprocess": {"x": {}}},
    }
    spec.update(parts)
    return spec


def chain(input_shape: list[int | None], layers: list[tuple[str, str, dict]], dtype="float32"):
    """A normalized Sequential model: each layer reads the previous one."""
    out, previous = [], "input"
    for name, class_name, config in layers:
        out.append(
            {"name": name, "class_name": class_name, "config": config, "inbound": [previous]}
        )
        previous = name
    return {
        "inputs": [{"name": "input", "shape": input_shape, "dtype": dtype}],
        "layers": out,
        "outputs": [previous],
    }


def assert_same_model(ours, reference, inputs) -> None:
    """Same parameter count, and the same outputs once ours has the reference's weights."""
    assert ours.count_params() == reference.count_params()
    ours.set_weights(reference.get_weights())
    expected = reference.predict(inputs, verbose=0)
    got = ours.predict(inputs, verbose=0)
    for a, b in zip(
        expected if isinstance(expected, list) else [expected],
        got if isinstance(got, list) else [got],
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_keras_docs_seed_model():
    reference = keras.Sequential(
        [
            keras.Input(shape=(784,)),
            keras.layers.Dense(32, kernel_initializer="he_normal"),
            keras.layers.Activation("relu"),
            keras.layers.Dense(10, kernel_initializer="he_normal"),
            keras.layers.Activation("softmax"),
        ]
    )
    spec = spec_of(
        chain(
            [784],
            [
                ("dense", "Dense", {"units": 32, "kernel_initializer": "he_normal"}),
                ("activation", "Activation", {"activation": "relu"}),
                ("dense_1", "Dense", {"units": 10, "kernel_initializer": "he_normal"}),
                ("output", "Activation", {"activation": "softmax"}),
            ],
        )
    )
    ours = build_model(spec)
    assert [layer.name for layer in ours.layers] == [
        "input",
        "dense",
        "activation",
        "dense_1",
        "output",
    ]
    assert ours.count_params() == summarize(spec)["total_params"] == 25_450
    assert_same_model(ours, reference, RNG.random((4, 784), dtype=np.float32))

    compile_model(ours, spec)
    assert isinstance(ours.optimizer, keras.optimizers.RMSprop)
    x = RNG.random((16, 784), dtype=np.float32)
    y = keras.utils.to_categorical(RNG.integers(0, 10, 16), 10)
    history = ours.fit(x, y, verbose=0, **fit_arguments(spec))
    assert set(history.history) >= {"loss", "accuracy"}


def test_cnn():
    reference = keras.Sequential(
        [
            keras.Input(shape=(12, 12, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    spec = spec_of(
        chain(
            [12, 12, 1],
            [
                ("conv2d", "Conv2D", {"filters": 4, "kernel_size": [3, 3], "activation": "relu"}),
                ("max_pooling2d", "MaxPooling2D", {"pool_size": [2, 2]}),
                ("flatten", "Flatten", {}),
                ("output", "Dense", {"units": 3, "activation": "softmax"}),
            ],
        )
    )
    assert_same_model(build_model(spec), reference, RNG.random((3, 12, 12, 1), dtype=np.float32))


def test_lstm_over_embedding():
    reference = keras.Sequential(
        [
            keras.Input(shape=(None,), dtype="int32"),
            keras.layers.Embedding(20, 6),
            keras.layers.LSTM(5),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    spec = spec_of(
        chain(
            [None],
            [
                ("embedding", "Embedding", {"input_dim": 20, "output_dim": 6}),
                ("lstm", "LSTM", {"units": 5}),
                ("output", "Dense", {"units": 1, "activation": "sigmoid"}),
            ],
            dtype="int32",
        )
    )
    tokens = RNG.integers(0, 20, (3, 7)).astype("int32")
    assert_same_model(build_model(spec), reference, tokens)


def test_functional_two_inputs_two_outputs():
    image = keras.Input(shape=(6,), name="image")
    meta = keras.Input(shape=(3,), name="meta")
    joined = keras.layers.Concatenate(name="joined")([image, meta])
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(joined)
    kind = keras.layers.Dense(4, activation="softmax", name="kind")(hidden)
    score = keras.layers.Dense(1, name="score")(hidden)
    reference = keras.Model([image, meta], [kind, score])
    model = {
        "inputs": [
            {"name": "image", "shape": [6], "dtype": "float32"},
            {"name": "meta", "shape": [3], "dtype": "float32"},
        ],
        "layers": [
            {"name": "joined", "class_name": "Concatenate", "config": {"axis": -1},
             "inbound": ["image", "meta"]},
            {"name": "hidden", "class_name": "Dense",
             "config": {"units": 8, "activation": "relu"}, "inbound": ["joined"]},
            {"name": "kind", "class_name": "Dense",
             "config": {"units": 4, "activation": "softmax"}, "inbound": ["hidden"]},
            {"name": "score", "class_name": "Dense", "config": {"units": 1}, "inbound": ["hidden"]},
        ],
        "outputs": ["kind", "score"],
    }  # fmt: skip
    compile_part = {
        "optimizer": {"class_name": "Adam", "config": {}},
        "loss": {"kind": "sparse_categorical_crossentropy", "score": "mse"},
        "loss_weights": {"kind": 1.0, "score": 0.5},
        "metrics": {"kind": ["accuracy"], "score": ["mae"]},
    }
    spec = spec_of(model, compile=compile_part)
    ours = build_model(spec)
    assert ours.output_names == ["kind", "score"]
    x = [RNG.random((5, 6), dtype=np.float32), RNG.random((5, 3), dtype=np.float32)]
    assert_same_model(ours, reference, x)

    compile_model(ours, spec)
    y = {"kind": RNG.integers(0, 4, 5), "score": RNG.random(5, dtype=np.float32)}
    history = ours.fit({"image": x[0], "meta": x[1]}, y, epochs=1, verbose=0)
    assert {"kind_loss", "score_loss", "kind_accuracy", "score_mae"} <= set(history.history)


def test_preprocessing_layers_take_raw_inputs():
    reference = keras.Sequential([keras.Input(shape=(16,)), keras.layers.Dense(2)])
    spec = spec_of(
        chain([16], [("output", "Dense", {"units": 2})]),
        data={"preprocess": {"x": {"input": {"scale": 0.5, "offset": 1.0, "reshape": [16],
                                              "raw_shape": [4, 4]}}}},
    )  # fmt: skip
    ours = build_model(spec)
    assert [layer.name for layer in ours.layers] == [
        "input",
        "input_rescaling",
        "input_reshape",
        "output",
    ]
    assert ours.input_shape == (None, 4, 4)
    assert summarize(spec)["inputs"][0]["shape"] == [None, 4, 4]
    ours.set_weights(reference.get_weights())
    raw = RNG.random((3, 4, 4), dtype=np.float32)
    np.testing.assert_allclose(
        ours.predict(raw, verbose=0),
        reference.predict(raw.reshape(3, 16) * 0.5 + 1.0, verbose=0),
        rtol=1e-5,
    )


def test_nested_objects_are_constructed():
    spec = spec_of(
        chain(
            [4],
            [
                (
                    "dense",
                    "Dense",
                    {
                        "units": 3,
                        "kernel_initializer": {"class_name": "RandomNormal",
                                               "config": {"mean": 0.0, "stddev": 0.5, "seed": 1}},
                        "bias_initializer": "ones",
                        "kernel_regularizer": {"class_name": "L1L2",
                                               "config": {"l1": 0.01, "l2": 0.0}},
                        "kernel_constraint": "max_norm",
                    },
                ),
                ("output", "Dense", {"units": 1}),
            ],
        ),
        compile={
            "optimizer": {
                "class_name": "SGD",
                "config": {
                    "momentum": 0.5,
                    "learning_rate": {"class_name": "ExponentialDecay",
                                      "config": {"initial_learning_rate": 0.1,
                                                 "decay_steps": 10, "decay_rate": 0.9}},
                },
            },
            "loss": {"class_name": "Huber", "config": {"delta": 2.0}},
            "metrics": [{"class_name": "RootMeanSquaredError", "config": {}}],
        },
    )  # fmt: skip
    model = build_model(spec)
    dense = model.get_layer("dense")
    assert isinstance(dense.kernel_initializer, keras.initializers.RandomNormal)
    assert dense.kernel_initializer.stddev == 0.5
    assert isinstance(dense.bias_initializer, keras.initializers.Ones)
    assert isinstance(dense.kernel_regularizer, keras.regularizers.L1L2)
    assert isinstance(dense.kernel_constraint, keras.constraints.MaxNorm)
    np.testing.assert_array_equal(dense.bias.numpy(), np.ones(3))
    compile_model(model, spec)
    schedule = model.optimizer.learning_rate
    assert model.optimizer.momentum == 0.5
    assert isinstance(model.optimizer._learning_rate, keras.optimizers.schedules.ExponentialDecay)
    assert float(schedule) == pytest.approx(0.1)
    assert isinstance(model.loss, keras.losses.Huber)


def test_bidirectional_inner_layer_is_built_by_constructor():
    spec = spec_of(
        chain(
            [5, 3],
            [("output", "Bidirectional",
              {"layer": {"class_name": "GRU", "config": {"units": 2, "activation": "tanh"}},
               "merge_mode": "sum"})],
        )
    )  # fmt: skip
    model = build_model(spec)
    assert model.output_shape == (None, 2)
    assert model.count_params() == summarize(spec)["total_params"]


def test_callbacks_and_fit_arguments():
    spec = spec_of(
        chain([2], [("output", "Dense", {"units": 1})]),
        fit={
            "batch_size": 4,
            "epochs": 3,
            "validation_split": 0.25,
            "shuffle": True,
            "class_weight": {"0": 1.0, "1": 3.0},
            "steps_per_epoch": None,
            "callbacks": [
                {"class_name": "EarlyStopping", "config": {"monitor": "val_loss", "patience": 2}},
                {"class_name": "ReduceLROnPlateau", "config": {"factor": 0.5}},
                {"class_name": "TerminateOnNaN", "config": {}},
            ],
        },
    )
    early, plateau, nan = build_callbacks(spec)
    assert isinstance(early, keras.callbacks.EarlyStopping)
    assert (early.monitor, early.patience) == ("val_loss", 2)
    assert plateau.factor == 0.5
    assert isinstance(nan, keras.callbacks.TerminateOnNaN)
    assert fit_arguments(spec) == {
        "batch_size": 4,
        "epochs": 3,
        "validation_split": 0.25,
        "shuffle": True,
        "class_weight": {0: 1.0, 1: 3.0},
    }


def test_a_class_outside_the_allowlist_is_never_built():
    spec = spec_of(chain([2], [("output", "Lambda", {"function": "print"})]))
    with pytest.raises(ValueError, match="not in the allowlist"):
        build_model(spec)
