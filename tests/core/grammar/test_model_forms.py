"""Both forms of `model` through the grammar: the short Sequential form and Keras's to_json().

Each model is parsed by `parse_job_request`, built by `build_model`, and compared with the same
model built directly in Keras: the same parameter count, names and outputs for the same weights.
"""

from __future__ import annotations

import json
from typing import Any

import keras
import numpy as np
import pytest

from core.errors import InvalidRequest, NotFound
from core.grammar import parse_job_request
from core.modeling import build_model, compile_model
from core.settings import Settings
from tests.support.seed_model import build_seed_model

RNG = np.random.default_rng(3)
DATASET = "d" * 32
SETTINGS = Settings()


def stats(low: float, high: float, labels: list[int] | None = None) -> dict[str, Any]:
    return {
        "min": low,
        "max": high,
        "integer_valued": labels is not None,
        "nan": 0,
        "inf": 0,
        "labels": labels,
    }


def manifests(arrays: dict[str, tuple[list[int], str, dict[str, Any]]]):
    """A `manifest_of` answering for one dataset with these arrays (shape, dtype, stats)."""
    manifest = {
        "id": DATASET,
        "owner": None,
        "rows": 32,
        "arrays": {
            name: {"file": f"a{i}.npy", "shape": shape, "dtype": dtype, "stats": st}
            for i, (name, (shape, dtype, st)) in enumerate(arrays.items())
        },
        "classes": {},
    }

    def manifest_of(dataset_id: str) -> dict[str, Any]:
        if dataset_id != DATASET:
            raise NotFound(f"No dataset with id {dataset_id!r}.")
        return manifest

    return manifest_of


MNIST_LIKE = manifests(
    {
        "x": ([32, 784], "float32", stats(0, 255)),
        "y": ([32, 10], "float32", stats(0, 1, [0, 1])),
    }
)
COMPILE = {"optimizer": "rmsprop", "loss": "categorical_crossentropy", "metrics": ["accuracy"]}


def request(model: Any, manifest_data: dict[str, Any] | None = None, **parts: Any) -> dict:
    body = {
        "model": model,
        "fit": {"batch_size": 8, "epochs": 1},
        "data": manifest_data or {"dataset": DATASET, "x": "x", "y": "y"},
        **parts,
    }
    return body


def parse(body: dict[str, Any], manifest_of=MNIST_LIKE) -> dict[str, Any]:
    return parse_job_request(
        json.loads(json.dumps(body)), settings=SETTINGS, manifest_of=manifest_of
    )


def layers_of(model: keras.Model) -> list[keras.Layer]:
    """Layers in name order when named alike (to_json), else in model order (the short form)."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    return sorted(layers, key=lambda layer: layer.name)


def pair_layers(ours: keras.Model, reference: keras.Model) -> list[tuple[keras.Layer, keras.Layer]]:
    mine, theirs = layers_of(ours), layers_of(reference)
    if {layer.name for layer in mine} != {layer.name for layer in theirs}:
        mine = [layer for layer in ours.layers if layer in mine]
        theirs = [layer for layer in reference.layers if layer in theirs]
    return list(zip(mine, theirs, strict=True))


def assert_same(spec: dict[str, Any], reference: keras.Model, inputs: Any) -> keras.Model:
    """Ours has the reference's parameter count and, with its weights, its outputs."""
    ours = build_model(spec)
    assert ours.count_params() == reference.count_params()
    for mine, theirs in pair_layers(ours, reference):
        mine.set_weights(theirs.get_weights())
    expected, got = reference(inputs), ours(inputs)
    if isinstance(expected, dict):
        expected = [expected[name] for name in spec["model"]["outputs"]]
    expected = expected if isinstance(expected, list | tuple) else [expected]
    got = got if isinstance(got, list | tuple) else [got]
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    return ours


SEED_LAYERS = [
    {"class_name": "Dense", "config": {"units": 32, "kernel_initializer": "he_normal"}},
    {"class_name": "Activation", "config": {"activation": "relu"}},
    {"class_name": "Dense", "config": {"units": 10, "kernel_initializer": "he_normal"}},
    {"class_name": "Activation", "config": {"activation": "softmax"}},
]


def test_seed_model_short_form_with_input_shape_at_the_top() -> None:
    spec = parse(request({"input_shape": [784], "layers": SEED_LAYERS}, compile=COMPILE))
    assert spec["model"] == {
        "inputs": [{"name": "input", "shape": [784], "dtype": "float32"}],
        "layers": [
            {
                "name": "dense",
                "class_name": "Dense",
                "config": {"units": 32, "kernel_initializer": "he_normal"},
                "inbound": ["input"],
            },
            {
                "name": "activation",
                "class_name": "Activation",
                "config": {"activation": "relu"},
                "inbound": ["dense"],
            },
            {
                "name": "dense_1",
                "class_name": "Dense",
                "config": {"units": 10, "kernel_initializer": "he_normal"},
                "inbound": ["activation"],
            },
            {
                "name": "output",
                "class_name": "Activation",
                "config": {"activation": "softmax"},
                "inbound": ["dense_1"],
            },
        ],
        "outputs": ["output"],
        "class_name": "Sequential",
        "name": "sequential",
    }
    assert spec["compile"]["optimizer"] == {"class_name": "RMSprop", "config": {}}
    ours = assert_same(spec, build_seed_model(), RNG.random((4, 784), dtype=np.float32))
    assert isinstance(ours, keras.Sequential)
    assert [tensor.name for tensor in ours.inputs] == ["input"]
    assert [layer.name for layer in ours.layers] == [
        "dense",
        "activation",
        "dense_1",
        "output",
    ]


def test_seed_model_short_form_with_input_shape_in_the_first_layer() -> None:
    """`Dense(32, input_shape=(784,))`, as the Keras docs wrote it."""
    first = {"class_name": "Dense", "config": {**SEED_LAYERS[0]["config"], "input_shape": [784]}}
    spec = parse(request({"layers": [first, *SEED_LAYERS[1:]]}, compile=COMPILE))
    assert spec["model"]["inputs"] == [{"name": "input", "shape": [784], "dtype": "float32"}]
    assert "input_shape" not in spec["model"]["layers"][0]["config"]
    assert_same(spec, build_seed_model(), RNG.random((4, 784), dtype=np.float32))


def test_seed_model_to_json_uses_its_compile_config() -> None:
    reference = build_seed_model()
    spec = parse(request(json.loads(reference.to_json())))
    names = [layer.name for layer in reference.layers]
    assert [layer["name"] for layer in spec["model"]["layers"]] == names
    assert spec["model"]["inputs"][0]["name"].startswith("input_layer")
    dense = spec["model"]["layers"][0]["config"]
    assert dense["kernel_initializer"] == {
        "class_name": "HeNormal",
        "config": {"seed": None, "input_axes": None, "output_axes": None},
    }
    assert "dtype" not in dense
    assert "name" not in dense
    assert spec["compile"]["optimizer"]["class_name"] == "RMSprop"
    assert spec["compile"]["optimizer"]["config"]["rho"] == 0.9
    assert spec["compile"]["loss"] == "categorical_crossentropy"
    assert spec["compile"]["metrics"] == ["accuracy"]
    assert_same(spec, reference, RNG.random((4, 784), dtype=np.float32))


def test_an_explicit_compile_wins_over_compile_config() -> None:
    body = request(
        json.loads(build_seed_model().to_json()), compile={**COMPILE, "optimizer": "adam"}
    )
    assert parse(body)["compile"]["optimizer"] == {"class_name": "Adam", "config": {}}


def test_cnn_to_json() -> None:
    reference = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    manifest_of = manifests(
        {
            "x": ([32, 12, 12, 1], "float32", stats(0, 1)),
            "y": ([32], "int64", stats(0, 2, [0, 1, 2])),
        }
    )
    body = request(
        json.loads(reference.to_json()),
        compile={"optimizer": "adam", "loss": "sparse_categorical_crossentropy"},
    )
    spec = parse(body, manifest_of)
    conv = spec["model"]["layers"][0]
    assert conv["class_name"] == "Conv2D"
    assert conv["config"]["kernel_size"] == [3, 3]
    assert_same(spec, reference, RNG.random((2, 12, 12, 1), dtype=np.float32))


SEQUENCES = manifests(
    {
        "tokens": ([32, 7], "int32", stats(0, 49, list(range(50)))),
        "label": ([32], "float32", stats(0, 1, [0, 1])),
    }
)
BINARY = {"optimizer": "adam", "loss": "binary_crossentropy", "metrics": ["accuracy"]}


def lstm_over_embedding(functional: bool) -> keras.Model:
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(50, 8, mask_zero=functional)(tokens)
    x = keras.layers.LSTM(6)(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="label")(x)
    if functional:
        return keras.Model(tokens, out)
    return keras.Sequential([tokens, *keras.Model(tokens, out).layers[1:]])


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_lstm_over_embedding_to_json(functional: bool) -> None:
    """The Functional one masks zeros: Keras writes a NotEqual op that we leave to the build."""
    reference = lstm_over_embedding(functional)
    data = {"dataset": DATASET, "x": "tokens", "y": "label"}
    spec = parse(request(json.loads(reference.to_json()), data, compile=BINARY), SEQUENCES)
    assert [layer["class_name"] for layer in spec["model"]["layers"]] == [
        "Embedding",
        "LSTM",
        "Dense",
    ]
    assert spec["model"]["inputs"][0]["shape"] == [None]
    assert spec["model"]["inputs"][0]["dtype"] == "int32"
    tokens = RNG.integers(0, 50, (3, 7)).astype("int32")
    tokens[:, -2:] = 0
    assert_same(spec, reference, tokens)


def two_in_two_out() -> keras.Model:
    a = keras.Input((4,), name="a")
    b = keras.Input((6,), name="b")
    x = keras.layers.Concatenate(name="joined")([a, b])
    x = keras.layers.Dense(8, activation="relu")(x)
    price = keras.layers.Dense(1, name="price")(x)
    kind = keras.layers.Dense(3, activation="softmax", name="kind")(x)
    return keras.Model([a, b], {"price": price, "kind": kind})


def test_functional_two_inputs_two_outputs_with_a_loss_each() -> None:
    reference = two_in_two_out()
    manifest_of = manifests(
        {
            "xa": ([32, 4], "float32", stats(-1, 1)),
            "xb": ([32, 6], "float32", stats(-1, 1)),
            "price": ([32, 1], "float32", stats(0, 100)),
            "kind": ([32], "int64", stats(0, 2, [0, 1, 2])),
        }
    )
    data = {
        "dataset": DATASET,
        "x": {"a": "xa", "b": "xb"},
        "y": {"price": "price", "kind": "kind"},
    }
    compile_ = {
        "optimizer": {"class_name": "Adam", "config": {"learning_rate": 0.01}},
        "loss": {"price": "mse", "kind": "sparse_categorical_crossentropy"},
        "loss_weights": {"price": 0.5, "kind": 1.0},
        "metrics": {"kind": ["accuracy"], "price": ["mae"]},
    }
    spec = parse(request(json.loads(reference.to_json()), data, compile=compile_), manifest_of)
    model = spec["model"]
    assert [i["name"] for i in model["inputs"]] == ["a", "b"]
    assert model["outputs"] == ["price", "kind"]
    assert model["layers"][0] == {
        "name": "joined",
        "class_name": "Concatenate",
        "config": {"axis": -1, "trainable": True},
        "inbound": ["a", "b"],
    }
    assert spec["compile"]["loss"] == {"price": "mse", "kind": "sparse_categorical_crossentropy"}
    assert spec["compile"]["metrics"] == {"kind": ["accuracy"], "price": ["mae"]}
    inputs = [RNG.random((2, 4), dtype=np.float32), RNG.random((2, 6), dtype=np.float32)]
    assert_same(spec, reference, inputs)


def test_per_output_losses_as_a_list_become_a_dict_in_output_order() -> None:
    reference = two_in_two_out()
    manifest_of = manifests(
        {
            "xa": ([32, 4], "float32", stats(-1, 1)),
            "xb": ([32, 6], "float32", stats(-1, 1)),
            "price": ([32, 1], "float32", stats(0, 100)),
            "kind": ([32, 3], "float32", stats(0, 1, [0, 1])),
        }
    )
    data = {
        "dataset": DATASET,
        "x": {"a": "xa", "b": "xb"},
        "y": {"price": "price", "kind": "kind"},
    }
    compile_ = {"loss": ["mse", "categorical_crossentropy"], "metrics": [["mae"], ["accuracy"]]}
    spec = parse(request(json.loads(reference.to_json()), data, compile=compile_), manifest_of)
    assert spec["compile"]["loss"] == {"price": "mse", "kind": "categorical_crossentropy"}
    assert spec["compile"]["metrics"] == {"price": ["mae"], "kind": ["accuracy"]}


def test_names_are_deterministic_and_never_collide() -> None:
    layers = [
        {"class_name": "Dense", "config": {"units": 4, "name": "dense_1"}},
        {"class_name": "Dense", "config": {"units": 4}},
        {"class_name": "Dense", "config": {"units": 4}},
        {"class_name": "BatchNormalization"},
        {"class_name": "Dense", "config": {"units": 10, "activation": "softmax"}},
    ]
    model = parse(request({"input_shape": [784], "layers": layers}, compile=COMPILE))["model"]
    assert [layer["name"] for layer in model["layers"]] == [
        "dense_1",
        "dense",
        "dense_2",
        "batch_normalization",
        "output",
    ]


def test_a_bidirectional_lstm_and_a_conv_stack_from_to_json() -> None:
    """Nested objects (the wrapped LSTM, regularizers, constraints) survive the round trip."""
    reference = keras.Sequential(
        [
            keras.Input((10, 3)),
            keras.layers.Conv1D(
                4,
                3,
                padding="causal",
                kernel_regularizer=keras.regularizers.L1L2(0.01, 0.02),
                kernel_constraint=keras.constraints.MaxNorm(2.0),
            ),
            keras.layers.BatchNormalization(),
            keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True)),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    manifest_of = manifests(
        {"x": ([32, 10, 3], "float32", stats(0, 1)), "y": ([32], "float32", stats(0, 1, [0, 1]))}
    )
    spec = parse(request(json.loads(reference.to_json()), compile=BINARY), manifest_of)
    wrapped = spec["model"]["layers"][2]["config"]["layer"]
    assert wrapped["class_name"] == "LSTM"
    assert "name" not in wrapped["config"]
    assert wrapped["config"]["return_sequences"] is True
    assert_same(spec, reference, RNG.random((2, 10, 3), dtype=np.float32))


def test_a_shared_layer_is_refused_with_its_path() -> None:
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    shared = keras.layers.Dense(2, name="shared")
    model = keras.Model([a, b], keras.layers.Add(name="sum")([shared(a), shared(b)]))
    with pytest.raises(InvalidRequest) as caught:
        parse(request(json.loads(model.to_json()), compile=COMPILE))
    first = caught.value.errors[0]
    assert first.path == "/model/config/layers/2/inbound_nodes"
    assert "shared layers are not accepted" in first.expected


def test_short_form_named_by_an_input_layer() -> None:
    pixels = {"class_name": "InputLayer", "config": {"shape": [784], "name": "pixels"}}
    spec = parse(request({"layers": [pixels, *SEED_LAYERS]}, compile=COMPILE))
    assert spec["model"]["inputs"] == [{"name": "pixels", "shape": [784], "dtype": "float32"}]
    assert spec["model"]["layers"][0]["inbound"] == ["pixels"]
    assert spec["data"]["x"] == {"pixels": "x"}


def test_compile_config_with_keras_objects_compiles() -> None:
    """Optimizer with a schedule, a loss object and a metric object, as to_json writes them."""
    reference = build_seed_model()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 100, 0.9)
    reference.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule, clipnorm=1.0),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        metrics=[keras.metrics.AUC(num_thresholds=50), "accuracy"],
    )
    spec = parse(request(json.loads(reference.to_json())))
    optimizer = spec["compile"]["optimizer"]
    assert optimizer["class_name"] == "Adam"
    assert optimizer["config"]["learning_rate"]["class_name"] == "ExponentialDecay"
    assert spec["compile"]["loss"]["config"]["label_smoothing"] == 0.1
    assert spec["compile"]["metrics"][0]["class_name"] == "AUC"
    model = build_model(spec)
    compile_model(model, spec)
    x = RNG.random((8, 784), dtype=np.float32)
    y = keras.utils.to_categorical(RNG.integers(0, 10, 8), 10)
    history = model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert "accuracy" in history.history
    assert any(name.startswith("auc") for name in history.history)


def test_a_model_keeps_its_class_and_name() -> None:
    """A Sequential comes back a Sequential, a Functional a Functional, each with its name."""
    sequential = keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(10, activation="softmax")], name="iris"
    )
    ours = build_model(parse(request(json.loads(sequential.to_json()), compile=COMPILE)))
    assert (type(ours), ours.name) == (keras.Sequential, "iris")
    start = keras.Input((784,), name="features")
    scores = keras.layers.Dense(10, activation="softmax", name="scores")(start)
    functional = keras.Model(start, scores, name="net")
    ours = build_model(parse(request(json.loads(functional.to_json()), compile=COMPILE)))
    assert (type(ours).__name__, ours.name) == ("Functional", "net")
