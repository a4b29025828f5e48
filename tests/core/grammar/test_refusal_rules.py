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


def test_each_output_at_most_once() -> None:
    inputs = keras.Input((784,), name="x")
    out = keras.layers.Dense(10, name="out", activation="softmax")(inputs)
    model = json.loads(keras.Model(inputs, [out, out]).to_json())
    path, message = refusal({**BASE, "model": model})
    assert path == "/model/config/output_layers"
    assert "at most once" in message


def test_sparse_crossentropy_reads_the_last_axis() -> None:
    labels = manifests(
        {"x": ([32, 784], "float32", stats(0, 1)), "y": ([32], "int64", stats(0, 9, [0, 9]))}
    )
    loss = {"class_name": "SparseCategoricalCrossentropy", "config": {"axis": 0}}
    with pytest.raises(InvalidRequest) as refused:
        parse_job_request(
            changed(BASE, "/compile/loss", loss), settings=SETTINGS, manifest_of=labels
        )
    assert "/compile/loss/config/axis" in [error.path for error in refused.value.errors]
    accepted(changed(BASE, "/compile/loss", {**loss, "config": {"axis": -1}}), labels)


CLASS_IDS = manifests(
    {
        "x": ([32, 784], "float32", stats(0, 1)),
        "y": ([32], "int64", stats(0, 9, list(range(10)))),
        "ids": ([32, 1], "int64", stats(0, 9, list(range(10)))),
        "flags": ([32], "float32", stats(0, 1, [0, 1])),
    }
)
SPARSE = changed(BASE, "/compile/loss", "sparse_categorical_crossentropy")


@pytest.mark.parametrize(
    ("metric", "labels"),
    [
        ("AUC", "y"),
        ({"class_name": "Precision"}, "y"),
        ({"class_name": "R2Score"}, "y"),
        ("mae", "y"),
        ({"class_name": "TruePositives"}, "ids"),
        ("binary_crossentropy", "ids"),
    ],
)
def test_metrics_other_than_accuracy_read_targets_of_the_output_shape(
    metric: Any, labels: str
) -> None:
    body = changed(changed(SPARSE, "/compile/metrics", [metric]), "/data/y", labels)
    path, message = refusal(body, CLASS_IDS)
    assert path == "/data/y"
    assert "value by value" in message
    accepted(
        changed(body, "/compile/metrics", ["accuracy", "sparse_top_k_categorical_accuracy"]),
        CLASS_IDS,
    )


@pytest.mark.parametrize(
    ("metric", "ok"), [("AUC", True), ("mse", True), ("binary_crossentropy", False)]
)
def test_metrics_of_one_unit_with_labels_of_one_value(metric: str, ok: bool) -> None:
    binary = changed(BASE, "/model/layers/1/config", {"units": 1, "activation": "sigmoid"})
    body = changed(changed(binary, "/compile/metrics", [metric]), "/data/y", "flags")
    body = changed(body, "/compile/loss", "binary_crossentropy")
    if ok:
        accepted(body, CLASS_IDS)
    else:
        assert refusal(body, CLASS_IDS)[0] == "/data/y"


@pytest.mark.parametrize(("weights", "ok"), [([32], True), ([32, 1], True), ([32, 2], False)])
def test_sample_weights_one_per_row(weights: list[int], ok: bool) -> None:
    arrays = {
        "x": ([32, 784], "float32", stats(0, 1)),
        "y": ([32, 10], "float32", stats(0, 1, [0, 1])),
    }
    found = manifests({**arrays, "w": (weights, "float32", stats(0, 1))})
    body = changed(BASE, "/data/sample_weight", "w")
    if ok:
        accepted(body, found)
    else:
        path, message = refusal(body, found)
        assert path == "/data/sample_weight"
        assert "one value per row" in message


def test_use_cudnn_true_is_refused() -> None:
    layers = [
        {"class_name": "Reshape", "config": {"target_shape": [28, 28]}},
        {"class_name": "LSTM", "config": {"units": 4, "use_cudnn": True}},
        BASE["model"]["layers"][1],
    ]
    body = changed(BASE, "/model/layers", layers)
    path, _ = refusal(body)
    assert path == "/model/layers/1/config/use_cudnn"
    accepted(changed(body, "/model/layers/1/config/use_cudnn", "auto"))


IDS = manifests(
    {"x": ([32, 6], "int64", stats(0, 9, list(range(10)))), "y": ([32, 10], "float32", stats(0, 1))}
)
EMBEDDED = {
    "class_name": "Embedding",
    "config": {"input_dim": 10, "output_dim": 4, "mask_zero": True},
}
SOFTMAX = {"class_name": "Softmax", "config": {}}
FLAT = {"class_name": "Flatten", "config": {}}


@pytest.mark.parametrize(
    ("between", "ok"),
    [
        ([], False),
        ([{"class_name": "Dense", "config": {"units": 3}}], False),
        ([{"class_name": "GRU", "config": {"units": 3, "return_sequences": True}}], False),
        ([{"class_name": "Conv1D", "config": {"filters": 2, "kernel_size": 2}}], True),
        ([{"class_name": "MaxPooling1D", "config": {"pool_size": 2}}], True),
    ],
)
def test_softmax_cannot_take_an_embedding_padding_mask(between: list[Any], ok: bool) -> None:
    layers = [EMBEDDED, *between, SOFTMAX, FLAT, BASE["model"]["layers"][1]]
    body = changed(changed(BASE, "/model/input_shape", [6]), "/model/layers", layers)
    if ok:
        accepted(body, IDS)
    else:
        path, message = refusal(body, IDS)
        assert path == f"/model/layers/{1 + len(between)}"
        assert "padding mask" in message
