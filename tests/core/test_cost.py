"""The cost model: jobs no worker can run are refused at the part that costs most, with the figure.

Each case is a request that once validated and then took a worker down (or would have run for
days); the estimate of a small job is checked against its own arithmetic.
"""

from __future__ import annotations

from typing import Any

import pytest

from core.batches import BATCHES_HELD
from core.cost import MAX_UNROLLED_STEPS, estimate_cost
from core.errors import InvalidRequest
from core.grammar import parse_job_request
from core.settings import Settings
from tests.core.grammar.test_model_forms import DATASET, manifests, stats

SETTINGS = Settings()


def request(layers: list[dict[str, Any]], input_shape: list[Any], **data: Any) -> dict[str, Any]:
    return {
        "model": {"input_shape": input_shape, "layers": layers},
        "compile": {"optimizer": "adam", "loss": "mse"},
        "fit": {"batch_size": 8, "epochs": 1},
        "data": {"dataset": DATASET, "x": "x", "y": "y", **data},
    }


def refusal(body: dict[str, Any], manifest_of: Any) -> tuple[str, str]:
    with pytest.raises(InvalidRequest) as refused:
        parse_job_request(body, settings=SETTINGS, manifest_of=manifest_of)
    (error,) = refused.value.errors
    return error.path, error.message


def dense(units: int, **config: Any) -> dict[str, Any]:
    return {"class_name": "Dense", "config": {"units": units, **config}}


def test_the_estimate_of_a_small_mlp() -> None:
    manifest_of = manifests(
        {"x": ([100, 8], "float32", stats(0, 1)), "y": ([100, 2], "float32", stats(0, 1))}
    )
    body = request([dense(4), dense(2)], [8])
    body["fit"]["validation_split"] = 0.2
    spec = parse_job_request(body, settings=SETTINGS, manifest_of=manifest_of)
    cost = estimate_cost(spec, SETTINGS, manifest_of)
    params = 8 * 4 + 4 + 4 * 2 + 2
    assert cost["memory"]["weights"] == params * 4
    # Adam keeps two slots per trainable parameter.
    assert cost["memory"]["optimizer"] == 2 * params * 4
    assert cost["values_per_row"] == 8 + 4 + 2
    assert cost["memory"]["activations"] == 8 * (8 + 4 + 2) * 4 * 2
    # The worker holds BATCHES_HELD batches of 8 rows as it streams, each float32 value as read
    # and once more as Keras's tensor.
    assert cost["memory"]["data"] == BATCHES_HELD * 8 * (8 + 2) * 4 * 2
    assert [layer["flops_per_row"] for layer in cost["layers"]] == [2 * 36, 2 * 10]
    # 80 training rows (three passes) in 10 steps of 8, each updating 46 parameters; 20 to validate.
    assert cost["flops_per_epoch"] == 3 * 92 * 80 + 10 * 46 * 10 + 92 * 20
    assert cost["unrolled_steps"] == 0


def test_repeat_vector_and_dense_at_two_billion_values_per_row() -> None:
    manifest_of = manifests(
        {"x": ([64, 1], "float32", stats(0, 1)), "y": ([64, 100_000, 1], "float32", stats(0, 1))}
    )
    layers = [
        dense(20_000),
        {"class_name": "RepeatVector", "config": {"n": 100_000}},
        dense(1),
    ]
    path, message = refusal(request(layers, [1]), manifest_of)
    assert path == "/model/layers/1"
    assert "2,000,000,000 values per row" in message
    assert "FITSERVE_WORKER_MEMORY_BYTES" in message


def test_an_rnn_unrolled_over_100000_steps() -> None:
    manifest_of = manifests(
        {"x": ([8, 100_000, 1], "float32", stats(0, 1)), "y": ([8, 1], "float32", stats(0, 1))}
    )
    layers = [{"class_name": "SimpleRNN", "config": {"units": 1, "unroll": True}}]
    path, message = refusal(request(layers, [100_000, 1]), manifest_of)
    assert path == "/model/layers/0/config/unroll"
    assert f"cap of {MAX_UNROLLED_STEPS:,}" in message
    assert "100,000" in message


def test_a_conv1d_of_ten_trillion_operations_per_row() -> None:
    manifest_of = manifests(
        {
            "x": ([16, 200_000, 64], "float32", stats(0, 1)),
            "y": ([16, 200_000, 512], "float32", stats(0, 1)),
        }
    )
    conv = {
        "class_name": "Conv1D",
        "config": {"filters": 512, "kernel_size": 1024, "padding": "same"},
    }
    body = request([conv], [200_000, 64])
    body["fit"]["batch_size"] = 1
    spec_cost = estimate_cost(
        parse_job_request(
            body,
            settings=SETTINGS.with_overrides(max_flops_per_epoch=10**18),
            manifest_of=manifest_of,
        ),
        SETTINGS,
        manifest_of,
    )
    assert spec_cost["flops_per_row"] > 10**13
    path, message = refusal(body, manifest_of)
    assert path == "/model/layers/0"
    assert "FITSERVE_MAX_FLOPS_PER_EPOCH" in message


def test_one_hot_of_100000_classes_on_60000_rows_is_made_per_batch() -> None:
    """Once 96 GB (the whole one-hot array, as float64, cast and copied); streamed, the worker
    holds a few batches of it."""
    manifest_of = manifests(
        {
            "x": ([60_000, 4], "float32", stats(0, 1)),
            "y": ([60_000], "int64", stats(0, 99_999, [0, 1])),
        }
    )
    body = request([dense(100_000, activation="softmax")], [4])
    body["compile"]["loss"] = "categorical_crossentropy"
    body["data"]["preprocess"] = {"y": {"one_hot": 100_000}}
    spec = parse_job_request(body, settings=SETTINGS, manifest_of=manifest_of)
    cost = estimate_cost(spec, SETTINGS, manifest_of)
    assert cost["data"]["/data/preprocess/y/one_hot"] == BATCHES_HELD * 8 * 100_000 * 4


def test_the_data_side_does_not_grow_with_the_rows() -> None:
    def data_bytes(rows: int) -> int:
        manifest_of = manifests(
            {"x": ([rows, 8], "float32", stats(0, 1)), "y": ([rows, 2], "float32", stats(0, 1))}
        )
        body = request([dense(2)], [8])
        spec = parse_job_request(body, settings=SETTINGS, manifest_of=manifest_of)
        return estimate_cost(spec, SETTINGS, manifest_of)["memory"]["data"]

    assert data_bytes(10_000) == data_bytes(10_000_000)


TOKENS = manifests(
    {"x": ([32, 5], "int64", stats(0, 255, [0, 1])), "y": ([32, 1], "float32", stats(0, 1))}
)
EMBEDDING = [
    {"class_name": "Embedding", "config": {"input_dim": 256, "output_dim": 2}},
    {"class_name": "Flatten", "config": {}},
    dense(1),
]


@pytest.mark.parametrize(("scale", "ok"), [(0.5, True), (1.0, True), (4.0, False)])
def test_embedding_ids_after_preprocess_scale(scale: float, ok: bool) -> None:
    body = request(EMBEDDING, [5], preprocess={"x": {"scale": scale}})
    if ok:
        parse_job_request(body, settings=SETTINGS, manifest_of=TOKENS)
        return
    path, message = refusal(body, TOKENS)
    assert path == "/data/x"
    assert "ids from 0 to 1020" in message


def test_embedding_ids_after_a_rescaling_layer() -> None:
    rescaling = {"class_name": "Rescaling", "config": {"scale": 2.0, "offset": -10.0}}
    path, message = refusal(request([rescaling, *EMBEDDING], [5]), TOKENS)
    assert path == "/data/x"
    assert "ids from -10 to 500" in message
