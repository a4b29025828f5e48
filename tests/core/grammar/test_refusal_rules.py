"""Requests that once validated and then failed in Keras (at build, compile or the first step),
each now a refusal rule: a 422 at the argument at fault, before any worker sees the job.

The fuzz in test_fuzz.py trains what validates; each failure it found is a case here.
"""

from __future__ import annotations

import json
from typing import Any

import keras
import pytest

from core.errors import InvalidRequest
from core.grammar import parse_job_request
from core.settings import Settings
from tests.core.grammar.test_model_forms import DATASET, MNIST_LIKE, manifests, stats
from tests.service.test_refusals import changed

SETTINGS = Settings()
BASE: dict[str, Any] = {
    "model": {
        "input_shape": [784],
        "layers": [
            {"class_name": "Dense", "config": {"units": 16}},
            {"class_name": "Dense", "config": {"units": 10, "activation": "softmax"}},
        ],
    },
    "compile": {"optimizer": "adam", "loss": "categorical_crossentropy"},
    "fit": {"batch_size": 8, "epochs": 1},
    "data": {"dataset": DATASET, "x": "x", "y": "y"},
}
WEIGHTED = manifests(
    {
        "x": ([32, 784], "float32", stats(0, 255)),
        "y": ([32, 10], "float32", stats(0, 1, [0, 1])),
        "w": ([32], "float32", stats(0, 1)),
    }
)
SEQUENCES = manifests(
    {
        "x": ([32, 6, 4], "float32", stats(0, 1)),
        "y": ([32, 10], "float32", stats(0, 1, [0, 1])),
    }
)


def refusal(body: dict[str, Any], manifest_of: Any = MNIST_LIKE) -> tuple[str, str]:
    """The one error's (path, message)."""
    with pytest.raises(InvalidRequest) as refused:
        parse_job_request(body, settings=SETTINGS, manifest_of=manifest_of)
    (error,) = refused.value.errors
    return error.path, error.message


def accepted(body: dict[str, Any], manifest_of: Any = MNIST_LIKE) -> dict[str, Any]:
    return parse_job_request(body, settings=SETTINGS, manifest_of=manifest_of)


def test_orthogonal_regularizer_on_a_bias() -> None:
    body = changed(BASE, "/model/layers/0/config/bias_regularizer", "orthogonal_regularizer")
    path, message = refusal(body)
    assert path == "/model/layers/0/config/bias_regularizer"
    assert "two axes" in message
    accepted(changed(BASE, "/model/layers/0/config/kernel_regularizer", "orthogonal_regularizer"))


def test_orthogonal_regularizer_on_a_convolution_kernel_or_its_outputs() -> None:
    conv = {"class_name": "Conv1D", "config": {"filters": 2, "kernel_size": 3}}
    layers = [
        {"class_name": "Reshape", "config": {"target_shape": [98, 8]}},
        conv,
        {"class_name": "Flatten", "config": {}},
        BASE["model"]["layers"][1],
    ]
    body = changed(BASE, "/model/layers", layers)
    for argument in ("kernel_regularizer", "activity_regularizer"):
        spot = f"/model/layers/1/config/{argument}"
        path, _ = refusal(changed(body, spot, {"class_name": "OrthogonalRegularizer"}))
        assert path == spot


@pytest.mark.parametrize(("axis", "ok"), [(1, True), (-2, True), (2, False), (-3, False)])
def test_unit_norm_axis_within_the_kernel(axis: int, ok: bool) -> None:
    constraint = {"class_name": "UnitNorm", "config": {"axis": axis}}
    body = changed(BASE, "/model/layers/0/config/kernel_constraint", constraint)
    if ok:
        accepted(body)
        return
    path, message = refusal(body)
    assert path == "/model/layers/0/config/kernel_constraint/config/axis"
    assert "kernel" in message


def test_a_bare_schedule_name_as_learning_rate() -> None:
    optimizer = {"class_name": "Adam", "config": {"learning_rate": "ExponentialDecay"}}
    path, message = refusal(changed(BASE, "/compile/optimizer", optimizer))
    assert path == "/compile/optimizer/config/learning_rate"
    assert "schedule {class_name, config}" in message


def test_two_input_layers_of_one_name() -> None:
    first = keras.Input((4,), name="a")
    second = keras.Input((4,), name="b")
    merged = keras.layers.Concatenate(name="c")([first, second])
    out = keras.layers.Dense(10, name="out", activation="softmax")(merged)
    model = json.loads(keras.Model([first, second], out).to_json())
    model["config"]["layers"][1]["config"]["name"] = "a"
    model["config"]["layers"][1]["name"] = "a"
    body = {**BASE, "model": model, "data": {"dataset": DATASET, "x": {"a": "x"}, "y": "y"}}
    path, message = refusal(body)
    assert path == "/model/config/layers/1/config/name"
    assert "Two InputLayers" in message


def test_class_weight_with_sample_weight() -> None:
    body = changed(BASE, "/fit/class_weight", {"0": 1.0, "1": 2.0})
    body = changed(body, "/data/sample_weight", "w")
    path, message = refusal(body, WEIGHTED)
    assert path == "/fit/class_weight"
    assert "sample_weight" in message
    accepted(changed(body, "/data/sample_weight", None), WEIGHTED)


def test_class_weight_for_an_output_of_several_axes() -> None:
    layers = [
        *BASE["model"]["layers"],
        {"class_name": "Reshape", "config": {"target_shape": [5, 2]}},
    ]
    body = changed(changed(BASE, "/model/layers", layers), "/fit/class_weight", {"0": 2.0})
    y = ([32, 5, 2], "float32", stats(0, 1))
    path, _ = refusal(body, manifests({"x": ([32, 784], "float32", stats(0, 1)), "y": y}))
    assert path == "/fit/class_weight"


@pytest.mark.parametrize(("split", "ok"), [(0.5, True), (0.96, True), (0.99, False)])
def test_validation_split_leaves_rows_on_both_sides(split: float, ok: bool) -> None:
    body = changed(BASE, "/fit/validation_split", split)
    if ok:
        accepted(body)
        return
    path, message = refusal(body)
    assert path == "/fit/validation_split"
    assert "0 to train on" in message


def test_unroll_needs_a_fixed_number_of_timesteps() -> None:
    model = {
        "input_shape": [None, 4],
        "layers": [
            {"class_name": "LSTM", "config": {"units": 3, "unroll": True}},
            {"class_name": "Dense", "config": {"units": 10, "activation": "softmax"}},
        ],
    }
    path, message = refusal(changed(BASE, "/model", model), SEQUENCES)
    assert path == "/model/layers/0/config/unroll"
    assert "timesteps" in message
    accepted(changed(BASE, "/model", changed(model, "/input_shape", [6, 4])), SEQUENCES)


def test_reduce_lr_on_plateau_with_a_schedule() -> None:
    schedule = {
        "class_name": "ExponentialDecay",
        "config": {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.9},
    }
    body = changed(BASE, "/compile/optimizer", {"class_name": "SGD", "config": {}})
    body = changed(body, "/compile/optimizer/config/learning_rate", schedule)
    body = changed(body, "/fit/callbacks", [{"class_name": "ReduceLROnPlateau", "config": {}}])
    path, message = refusal(body)
    assert path == "/fit/callbacks/0"
    assert "ExponentialDecay" in message


@pytest.mark.parametrize(
    "metric", ["sparse_categorical_accuracy", {"class_name": "SparseCategoricalCrossentropy"}]
)
def test_sparse_metrics_with_one_hot_targets(metric: Any) -> None:
    path, message = refusal(changed(BASE, "/compile/metrics", [metric]))
    assert path == "/data/y"
    assert "class ids" in message


def test_categorical_crossentropy_metric_with_class_ids() -> None:
    body = changed(BASE, "/compile/loss", "sparse_categorical_crossentropy")
    body = changed(body, "/compile/metrics", ["categorical_crossentropy"])
    labels = ([32], "int64", stats(0, 9, list(range(10))))
    path, _ = refusal(body, manifests({"x": ([32, 784], "float32", stats(0, 1)), "y": labels}))
    assert path == "/data/y"


def test_an_embedding_reads_ids_not_computed_values() -> None:
    layers = [
        {"class_name": "Dense", "config": {"units": 4}},
        {"class_name": "Embedding", "config": {"input_dim": 10, "output_dim": 2}},
        {"class_name": "Flatten", "config": {}},
        BASE["model"]["layers"][1],
    ]
    path, message = refusal(changed(BASE, "/model/layers", layers))
    assert path == "/model/layers/1"
    assert "token ids" in message
