"""`request_from_spec`: a stored job's normalized spec written back as a request parses to the
same spec (the clone of a job stored before requests were kept)."""

from __future__ import annotations

import json
from typing import Any

import keras
import pytest

from core.grammar import parse_job_request
from core.grammar.requests import request_from_spec
from tests.core.grammar.test_model_forms import (
    BINARY,
    COMPILE,
    DATASET,
    MNIST_LIKE,
    SETTINGS,
    manifests,
    request,
    stats,
    two_in_two_out,
)

TWO_IN_TWO_OUT = manifests(
    {
        "xa": ([32, 4], "float32", stats(-1, 1)),
        "xb": ([32, 6], "float32", stats(-1, 1)),
        "price": ([32, 1], "float32", stats(0, 100)),
        "kind": ([32], "int64", stats(0, 2, [0, 1, 2])),
    }
)
SEQUENCES = manifests(
    {
        "x": ([32, 10, 3], "float32", stats(0, 1)),
        "y": ([32], "float32", stats(0, 1, [0, 1])),
        "w": ([32], "float32", stats(0, 1)),
    }
)
LABELS = manifests(
    {
        "x": ([32, 28, 28], "uint8", stats(0, 255)),
        "y": ([32], "int64", stats(0, 9, list(range(10)))),
    }
)


def short_form_with_preprocessing() -> tuple[dict[str, Any], Any]:
    body = request(
        {
            "input_shape": [784],
            "layers": [
                {"class_name": "Dense", "config": {"units": 8, "trainable": False}},
                {"class_name": "Dense", "config": {"units": 10, "activation": "softmax"}},
            ],
        },
        {
            "dataset": DATASET,
            "x": "x",
            "y": "y",
            "preprocess": {"x": {"scale": 0.5, "reshape": [784]}, "y": {"one_hot": 10}},
        },
        compile=COMPILE,
        tags={"project": "mnist"},
        priority=7,
        seed=3,
    )
    return body, LABELS


def functional_two_in_two_out() -> tuple[dict[str, Any], Any]:
    data = {
        "dataset": DATASET,
        "x": {"a": "xa", "b": "xb"},
        "y": {"price": "price", "kind": "kind"},
    }
    compile_ = {
        "optimizer": {"class_name": "Adam", "config": {"learning_rate": 0.01}},
        "loss": {"price": "mse", "kind": "sparse_categorical_crossentropy"},
        "metrics": {"kind": ["accuracy"]},
    }
    model = json.loads(two_in_two_out().to_json())
    return request(model, data, compile=compile_), TWO_IN_TWO_OUT


def nested_layers() -> tuple[dict[str, Any], Any]:
    reference = keras.Sequential(
        [
            keras.Input((10, 3)),
            keras.layers.Conv1D(4, 3, kernel_regularizer=keras.regularizers.L1L2(0.01, 0.02)),
            keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True)),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    data = {"dataset": DATASET, "x": "x", "y": "y", "sample_weight": "w"}
    body = request(json.loads(reference.to_json()), data, compile=BINARY)
    body["checkpoint"] = {"monitor": "loss", "keep": 1}
    return body, SEQUENCES


def seed_model() -> tuple[dict[str, Any], Any]:
    model = {"input_shape": [784], "layers": [{"class_name": "Dense", "config": {"units": 10}}]}
    return request(model, compile=COMPILE), MNIST_LIKE


@pytest.mark.parametrize(
    "make", [short_form_with_preprocessing, functional_two_in_two_out, nested_layers, seed_model]
)
def test_a_rebuilt_request_parses_to_the_same_spec(make) -> None:
    body, manifest_of = make()
    spec = parse_job_request(body, settings=SETTINGS, manifest_of=manifest_of)
    rebuilt = json.loads(json.dumps(request_from_spec(spec)))
    assert parse_job_request(rebuilt, settings=SETTINGS, manifest_of=manifest_of) == spec
