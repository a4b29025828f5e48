"""The allowlist tables against the pinned Keras, and the grammar's JSON Schema.

Every argument we accept must be a real constructor argument (or a key Keras's serializer
writes), and every key Keras writes for a default object must be accepted, so `to_json()`
output always parses.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import jsonschema
import keras
import pytest

from core.grammar import allowlist, grammar_schema
from core.grammar.kinds import INVALID, Place, check_arguments

L = keras.layers

# One default-ish instance per allowlisted layer (only the required arguments given).
LAYER_INSTANCES = {
    "Dense": lambda: L.Dense(3),
    "Activation": lambda: L.Activation("relu"),
    "Dropout": lambda: L.Dropout(0.1),
    "SpatialDropout1D": lambda: L.SpatialDropout1D(0.1),
    "SpatialDropout2D": lambda: L.SpatialDropout2D(0.1),
    "GaussianNoise": lambda: L.GaussianNoise(0.1),
    "Flatten": L.Flatten,
    "Reshape": lambda: L.Reshape((2, 2)),
    "Permute": lambda: L.Permute((2, 1)),
    "RepeatVector": lambda: L.RepeatVector(2),
    "ZeroPadding1D": L.ZeroPadding1D,
    "ZeroPadding2D": L.ZeroPadding2D,
    "Cropping1D": L.Cropping1D,
    "Cropping2D": L.Cropping2D,
    "UpSampling1D": L.UpSampling1D,
    "UpSampling2D": L.UpSampling2D,
    "Conv1D": lambda: L.Conv1D(2, 3),
    "Conv2D": lambda: L.Conv2D(2, 3),
    "Conv3D": lambda: L.Conv3D(2, 3),
    "Conv2DTranspose": lambda: L.Conv2DTranspose(2, 3),
    "SeparableConv2D": lambda: L.SeparableConv2D(2, 3),
    "DepthwiseConv2D": lambda: L.DepthwiseConv2D(3),
    "MaxPooling1D": L.MaxPooling1D,
    "MaxPooling2D": L.MaxPooling2D,
    "MaxPooling3D": L.MaxPooling3D,
    "AveragePooling1D": lambda: L.AveragePooling1D(2),
    "AveragePooling2D": lambda: L.AveragePooling2D(2),
    "AveragePooling3D": lambda: L.AveragePooling3D(2),
    "GlobalAveragePooling1D": L.GlobalAveragePooling1D,
    "GlobalAveragePooling2D": L.GlobalAveragePooling2D,
    "GlobalMaxPooling1D": L.GlobalMaxPooling1D,
    "GlobalMaxPooling2D": L.GlobalMaxPooling2D,
    "BatchNormalization": L.BatchNormalization,
    "LayerNormalization": L.LayerNormalization,
    "ReLU": L.ReLU,
    "LeakyReLU": L.LeakyReLU,
    "PReLU": L.PReLU,
    "ELU": L.ELU,
    "Softmax": L.Softmax,
    "Embedding": lambda: L.Embedding(10, 4),
    "LSTM": lambda: L.LSTM(3),
    "GRU": lambda: L.GRU(3),
    "SimpleRNN": lambda: L.SimpleRNN(3),
    "Bidirectional": lambda: L.Bidirectional(L.LSTM(3)),
    "Concatenate": L.Concatenate,
    "Add": L.Add,
    "Multiply": L.Multiply,
    "Average": L.Average,
    "Subtract": L.Subtract,
    "Rescaling": lambda: L.Rescaling(0.5),
    "Normalization": lambda: L.Normalization(mean=[1.0, 2.0], variance=[1.0, 4.0]),
    "RandomFlip": lambda: L.RandomFlip(),
    "RandomRotation": lambda: L.RandomRotation(0.1),
    "RandomZoom": lambda: L.RandomZoom(0.1),
    "RandomContrast": lambda: L.RandomContrast(0.2),
    "InputLayer": lambda: L.InputLayer(shape=(3,)),
}
# Keyword arguments every Keras layer takes through its base class.
BASE_LAYER_ARGUMENTS = {"name", "trainable", "dtype", "activity_regularizer"}


def accepted(config: Any, arguments: dict[str, Any]) -> list[str]:
    """The errors our table finds in a config as JSON carries it (empty when accepted)."""
    config = json.loads(json.dumps(config))
    errors: list = []
    result = check_arguments(config, arguments, Place(errors, owner="test"))
    assert (result is INVALID) == bool(errors)
    return [f"{e.path}: {e.message}" for e in errors]


def constructor_arguments(cls: type) -> set[str]:
    names = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names |= set(inspect.signature(klass.__init__).parameters)
    return names - {"self", "args", "kwargs"}


def test_every_allowlisted_layer_has_a_keras_instance() -> None:
    assert set(LAYER_INSTANCES) == set(allowlist.LAYERS)


@pytest.mark.parametrize("class_name", sorted(allowlist.LAYERS))
def test_layer_table_matches_keras(class_name: str) -> None:
    """Each argument is Keras's; each key Keras writes for a default layer is accepted."""
    layer = LAYER_INSTANCES[class_name]()
    config = layer.get_config()
    known = constructor_arguments(type(layer)) | set(config) | BASE_LAYER_ARGUMENTS
    assert set(allowlist.LAYERS[class_name]) - known == set()
    assert accepted(config, allowlist.LAYERS[class_name]) == []


CATALOGS = [
    (keras.initializers, allowlist.INITIALIZER_CLASSES),
    (keras.regularizers, allowlist.REGULARIZER_CLASSES),
    (keras.constraints, allowlist.CONSTRAINT_CLASSES),
    (keras.optimizers, allowlist.OPTIMIZER_CLASSES),
    (keras.losses, allowlist.LOSS_CLASSES),
    (keras.metrics, allowlist.METRIC_CLASSES),
    (keras.callbacks, allowlist.CALLBACK_CLASSES),
]
SCHEDULE_EXAMPLES = {
    "ExponentialDecay": (0.1, 100, 0.9),
    "PiecewiseConstantDecay": ([10], [0.1, 0.01]),
    "PolynomialDecay": (0.1, 100),
    "InverseTimeDecay": (0.1, 100, 0.5),
    "CosineDecay": (0.1, 100),
    "CosineDecayRestarts": (0.1, 100),
}


@pytest.mark.parametrize(
    ("module", "classes", "name"),
    [(m, c, n) for m, c in CATALOGS for n in sorted(c)],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_catalog_table_matches_keras(module: Any, classes: dict, name: str) -> None:
    cls = getattr(module, name)
    instance = cls()
    known = constructor_arguments(cls) | {"name", "dtype"}
    assert set(classes[name]) - known == set()
    config = instance.get_config() if hasattr(instance, "get_config") else {}
    if module is keras.callbacks:
        config = {k: getattr(instance, k) for k in classes[name] if hasattr(instance, k)}
    assert accepted(config, classes[name]) == []


@pytest.mark.parametrize("name", sorted(allowlist.SCHEDULE_CLASSES))
def test_schedule_table_matches_keras(name: str) -> None:
    cls = getattr(keras.optimizers.schedules, name)
    config = cls(*SCHEDULE_EXAMPLES[name]).get_config()
    assert set(allowlist.SCHEDULE_CLASSES[name]) - constructor_arguments(cls) == set()
    assert accepted(config, allowlist.SCHEDULE_CLASSES[name]) == []


def test_every_optimizer_of_keras_is_allowlisted() -> None:
    """Keras's own optimizers; the wrappers and ScheduleFree are left out on purpose."""
    left_out = {"LossScaleOptimizer", "MultiOptimizer", "Optimizer", "OptimizerMap"}
    left_out.add("ScheduleFreeAdamW")
    found = {n for n in dir(keras.optimizers) if n[0].isupper() and n not in left_out}
    assert found - {"schedules"} == set(allowlist.OPTIMIZER_CLASSES)


@pytest.mark.parametrize(
    ("getter", "names"),
    [
        (keras.initializers.get, allowlist.INITIALIZER_NAMES),
        (keras.activations.get, allowlist.ACTIVATION_NAMES),
        (keras.regularizers.get, ("l1", "l2", "orthogonal_regularizer")),
        (keras.constraints.get, ("max_norm", "min_max_norm", "non_neg", "unit_norm")),
        (keras.optimizers.get, allowlist.OPTIMIZER_NAMES),
        (keras.losses.get, allowlist.LOSS_NAMES),
        # "acc" is read by compile itself, not by metrics.get.
        (keras.metrics.get, tuple(n for n in allowlist.METRIC_NAMES if n != "acc")),
    ],
    ids=[
        "initializers",
        "activations",
        "regularizers",
        "constraints",
        "optimizers",
        "losses",
        "metrics",
    ],
)
def test_every_allowlisted_name_resolves_in_keras(getter: Any, names: tuple[str, ...]) -> None:
    for name in names:
        assert getter(name) is not None, name


def test_every_builtin_activation_is_allowlisted() -> None:
    builtin = {
        n
        for n in dir(keras.activations)
        if not n.startswith("_") and n not in ("get", "serialize", "deserialize")
    }
    assert builtin == set(allowlist.ACTIVATION_NAMES)


DESIGN_EXAMPLE = {
    "name": "mnist-mlp",
    "seed": 42,
    "priority": 5,
    "resources": {"gpus": 1},
    "model": {
        "input_shape": [784],
        "layers": [
            {"class_name": "Dense", "config": {"units": 32, "kernel_initializer": "he_normal"}},
            {"class_name": "Activation", "config": {"activation": "relu"}},
            {"class_name": "Dense", "config": {"units": 10}},
            {"class_name": "Activation", "config": {"activation": "softmax"}},
        ],
    },
    "compile": {
        "optimizer": {"class_name": "RMSprop", "config": {"learning_rate": 0.001}},
        "loss": "categorical_crossentropy",
        "metrics": ["accuracy"],
    },
    "fit": {
        "batch_size": 128,
        "epochs": 10,
        "validation_split": 0.1,
        "shuffle": True,
        "callbacks": [
            {"class_name": "EarlyStopping", "config": {"monitor": "val_loss", "patience": 2}}
        ],
    },
    "data": {"dataset": "0" * 32, "x": "x", "y": "y"},
    "checkpoint": {"monitor": "val_loss", "mode": "min", "keep": 3},
}


def test_grammar_schema_is_a_schema_that_reads_the_design_example() -> None:
    schema = grammar_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(DESIGN_EXAMPLE)) == []
    bad = {**DESIGN_EXAMPLE, "workers": 4}
    assert [e.message for e in validator.iter_errors(bad)] == [
        "Additional properties are not allowed ('workers' was unexpected)"
    ]
    units = {"class_name": "Dense", "config": {"units": 0}}
    bad_model = {**DESIGN_EXAMPLE, "model": {"input_shape": [784], "layers": [units]}}
    assert list(validator.iter_errors(bad_model)) != []


def test_grammar_schema_lists_every_allowlisted_layer() -> None:
    layers = grammar_schema()["$defs"]["layer"]["anyOf"]
    assert {layer["properties"]["class_name"]["const"] for layer in layers} == set(allowlist.LAYERS)
