"""Requests the grammar refuses, through `POST /v1/jobs:validate`.

Each case changes one thing in a valid request and checks the answer: 422, the JSON pointer of
the error, the offending key or value, and the accepted alternatives, written out here as text.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from tests.service.test_validate import request_for
from tests.support.datasets import upload_npz

RNG = np.random.default_rng(11)
DELETE = object()


@pytest.fixture
def dataset(client) -> str:
    return upload_npz(
        client, {"x": RNG.random((12, 8), dtype=np.float32), "y": RNG.integers(0, 3, 12)}
    )


def changed(body: dict[str, Any], pointer: str, value: Any) -> dict[str, Any]:
    """A copy of `body` with the value at a JSON pointer set (or deleted)."""
    body = copy.deepcopy(body)
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]
    target: Any = body
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
    if isinstance(target, list):
        target.insert(int(last), value) if value is not DELETE else target.pop(int(last))
    elif value is DELETE:
        del target[last]
    else:
        target[last] = value
    return body


def refusal(client, body: Any, path: str) -> dict[str, Any]:
    """The one error at `path` in a 422 problem document."""
    response = client.post("/v1/jobs:validate", json=body)
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == "application/problem+json"
    document = response.get_json()
    assert document["code"] == "invalid_request"
    found = [error for error in document["errors"] if error["path"] == path]
    assert len(found) == 1, document["errors"]
    return found[0]


LAMBDA_BYTECODE = {
    "module": "keras.layers",
    "class_name": "Lambda",
    "config": {
        "name": "lambda",
        "function": {
            "class_name": "__lambda__",
            "config": {
                "code": "4wEAAAAAAAAAAAAAAAEAAAADAAAA8wgAAACXAHwAUwApAU6pAKkB2gF4cwEAAAAg",
                "defaults": None,
                "closure": None,
            },
        },
        "arguments": {},
    },
    "registered_name": None,
}
LAMBDA_REFERENCE = {
    "class_name": "Lambda",
    "config": {
        "function": {
            "module": "builtins",
            "class_name": "function",
            "config": "eval",
            "registered_name": "function",
        }
    },
}
DENSE = {"class_name": "Dense", "config": {"units": 16, "activation": "relu"}}


def dense_with(**config: Any) -> dict[str, Any]:
    return {"class_name": "Dense", "config": {"units": 16, **config}}


# (test id, pointer to change, new value, pointer of the error, received, text the expected has)
CASES = [
    (
        "lambda-bytecode",
        "/model/layers/1",
        LAMBDA_BYTECODE,
        "/model/layers/1/class_name",
        "Lambda",
        "Dense",
    ),
    (
        "lambda-function-reference",
        "/model/layers/1",
        LAMBDA_REFERENCE,
        "/model/layers/1/class_name",
        "Lambda",
        "Conv2D",
    ),
    (
        "tfsmlayer",
        "/model/layers/1",
        {"class_name": "TFSMLayer", "config": {"filepath": "/srv/model", "call_endpoint": "serve"}},
        "/model/layers/1/class_name",
        "TFSMLayer",
        "Dense",
    ),
    (
        "stringlookup-vocabulary-path",
        "/model/layers/0",
        {"class_name": "StringLookup", "config": {"vocabulary": "/etc/passwd"}},
        "/model/layers/0/class_name",
        "StringLookup",
        "Embedding",
    ),
    (
        "textvectorization-vocabulary-path",
        "/model/layers/0",
        {"class_name": "TextVectorization", "config": {"vocabulary": "/data/vocab.txt"}},
        "/model/layers/0/class_name",
        "TextVectorization",
        "Embedding",
    ),
    (
        "input-shape-given-twice",
        "/model/layers/0/config/input_shape",
        [9],
        "/model/layers",
        None,
        "one of: input_shape at the top, input_shape in the first layer, an InputLayer",
    ),
    (
        "foreign-module",
        "/model/layers/0/module",
        "evil.layers",
        "/model/layers/0/module",
        "evil.layers",
        "'keras' or a module starting with 'keras.'",
    ),
    (
        "keras-lookalike-module",
        "/model/layers/0/module",
        "kerasx.layers",
        "/model/layers/0/module",
        "kerasx.layers",
        "'keras' or a module starting with 'keras.'",
    ),
    (
        "registered-name",
        "/model/layers/0/registered_name",
        "MyPackage>Dense",
        "/model/layers/0/registered_name",
        "MyPackage>Dense",
        "null",
    ),
    (
        "unknown-layer",
        "/model/layers/0/class_name",
        "Dense2",
        "/model/layers/0/class_name",
        "Dense2",
        "Dense",
    ),
    (
        "unknown-config-key",
        "/model/layers/0/config/unit",
        16,
        "/model/layers/0/config/unit",
        "unit",
        "units",
    ),
    (
        "negative-units",
        "/model/layers/0/config/units",
        -3,
        "/model/layers/0/config/units",
        -3,
        "a positive integer up to 100000",
    ),
    (
        "zero-units",
        "/model/layers/0/config/units",
        0,
        "/model/layers/0/config/units",
        0,
        "a positive integer up to 100000",
    ),
    (
        "huge-units",
        "/model/layers/0/config/units",
        10**12,
        "/model/layers/0/config/units",
        10**12,
        "a positive integer up to 100000",
    ),
    (
        "string-units",
        "/model/layers/0/config/units",
        "16",
        "/model/layers/0/config/units",
        "16",
        "a positive integer up to 100000",
    ),
    (
        "float-kernel-size",
        "/model/layers/0",
        {"class_name": "Conv1D", "config": {"filters": 4, "kernel_size": 2.5}},
        "/model/layers/0/config/kernel_size",
        2.5,
        "an integer from 1 to 1024, or a list of 1 such integers",
    ),
    (
        "kernel-size-of-the-wrong-rank",
        "/model/layers/0",
        {"class_name": "Conv2D", "config": {"filters": 4, "kernel_size": [3, 3, 3]}},
        "/model/layers/0/config/kernel_size",
        [3, 3, 3],
        "a list of 2 such integers",
    ),
    (
        "dropout-rate-1.5",
        "/model/layers/1",
        {"class_name": "Dropout", "config": {"rate": 1.5}},
        "/model/layers/1/config/rate",
        1.5,
        "a number in [0, 1)",
    ),
    (
        "activation-dict-foreign-module",
        "/model/layers/0/config/activation",
        {"module": "os", "class_name": "system", "config": "rm -rf /"},
        "/model/layers/0/config/activation/module",
        "os",
        "'keras' or a module starting with 'keras.'",
    ),
    (
        "initializer-dict-foreign-module",
        "/model/layers/0/config/kernel_initializer",
        {"module": "numpy.random", "class_name": "HeNormal", "config": {}},
        "/model/layers/0/config/kernel_initializer/module",
        "numpy.random",
        "'keras' or a module starting with 'keras.'",
    ),
    (
        "unknown-activation",
        "/model/layers/0/config/activation",
        "relu7",
        "/model/layers/0/config/activation",
        "relu7",
        "relu6",
    ),
    (
        "unknown-initializer",
        "/model/layers/0/config/kernel_initializer",
        "he_normall",
        "/model/layers/0/config/kernel_initializer",
        "he_normall",
        "he_normal",
    ),
    (
        "negative-regularizer",
        "/model/layers/0/config/kernel_regularizer",
        {"class_name": "L2", "config": {"l2": -0.01}},
        "/model/layers/0/config/kernel_regularizer/config/l2",
        -0.01,
        "a number of at least 0",
    ),
    (
        "bidirectional-around-dense",
        "/model/layers/1",
        {"class_name": "Bidirectional", "config": {"layer": DENSE}},
        "/model/layers/1/config/layer/class_name",
        "Dense",
        "LSTM, GRU, SimpleRNN",
    ),
    (
        "learning-rate-nan-string",
        "/compile/optimizer/config/learning_rate",
        "NaN",
        "/compile/optimizer/config/learning_rate",
        "NaN",
        "a positive number or a learning-rate schedule",
    ),
    (
        "learning-rate-infinity-string",
        "/compile/optimizer/config/learning_rate",
        "1e400",
        "/compile/optimizer/config/learning_rate",
        "1e400",
        "a positive number or a learning-rate schedule",
    ),
    (
        "negative-learning-rate",
        "/compile/optimizer/config/learning_rate",
        -0.001,
        "/compile/optimizer/config/learning_rate",
        -0.001,
        "a positive number or a learning-rate schedule",
    ),
    (
        "unknown-schedule",
        "/compile/optimizer/config/learning_rate",
        {"class_name": "OneCycle", "config": {}},
        "/compile/optimizer/config/learning_rate/class_name",
        "OneCycle",
        "ExponentialDecay",
    ),
    (
        "schedule-with-negative-decay-steps",
        "/compile/optimizer/config/learning_rate",
        {
            "class_name": "ExponentialDecay",
            "config": {"initial_learning_rate": 0.1, "decay_steps": -5, "decay_rate": 0.9},
        },
        "/compile/optimizer/config/learning_rate/config/decay_steps",
        -5,
        "a positive integer up to 100000000",
    ),
    (
        "fit-sample-weight-belongs-in-data",
        "/fit/sample_weight",
        "y",
        "/fit/sample_weight",
        "sample_weight",
        "data.sample_weight",
    ),
    (
        "unknown-optimizer",
        "/compile/optimizer",
        "adamm",
        "/compile/optimizer",
        "adamm",
        "adam",
    ),
    (
        "unknown-optimizer-class",
        "/compile/optimizer/class_name",
        "Sophia",
        "/compile/optimizer/class_name",
        "Sophia",
        "RMSprop",
    ),
    (
        "unknown-optimizer-argument",
        "/compile/optimizer/config/decay",
        0.1,
        "/compile/optimizer/config/decay",
        "decay",
        "rho",
    ),
    (
        "unknown-loss",
        "/compile/loss",
        "sparse_categorical_crossentropyy",
        "/compile/loss",
        "sparse_categorical_crossentropyy",
        "sparse_categorical_crossentropy",
    ),
    (
        "unknown-metric",
        "/compile/metrics/0",
        "acuracy",
        "/compile/metrics/0",
        "acuracy",
        "accuracy",
    ),
    (
        "compile-workers",
        "/compile/workers",
        4,
        "/compile/workers",
        "workers",
        "steps_per_execution",
    ),
    (
        "compile-run-eagerly",
        "/compile/run_eagerly",
        True,
        "/compile/run_eagerly",
        "run_eagerly",
        "jit_compile",
    ),
    ("fit-workers", "/fit/workers", 4, "/fit/workers", "workers", "batch_size"),
    (
        "fit-use-multiprocessing",
        "/fit/use_multiprocessing",
        True,
        "/fit/use_multiprocessing",
        "use_multiprocessing",
        "validation_split",
    ),
    ("zero-epochs", "/fit/epochs", 0, "/fit/epochs", 0, "a positive integer up to 1000"),
    ("too-many-epochs", "/fit/epochs", 1001, "/fit/epochs", 1001, "a positive integer up to 1000"),
    (
        "zero-batch-size",
        "/fit/batch_size",
        0,
        "/fit/batch_size",
        0,
        "a positive integer up to 65536",
    ),
    (
        "huge-batch-size",
        "/fit/batch_size",
        65537,
        "/fit/batch_size",
        65537,
        "a positive integer up to 65536",
    ),
    (
        "validation-split-1",
        "/fit/validation_split",
        1.0,
        "/fit/validation_split",
        1.0,
        "a number in [0, 1)",
    ),
    (
        "model-checkpoint-callback",
        "/fit/callbacks",
        [{"class_name": "ModelCheckpoint", "config": {"filepath": "/etc/cron.d/x"}}],
        "/fit/callbacks/0/class_name",
        "ModelCheckpoint",
        "EarlyStopping, ReduceLROnPlateau, TerminateOnNaN",
    ),
    (
        "lambda-callback",
        "/fit/callbacks",
        [{"class_name": "LambdaCallback", "config": {"on_epoch_end": "print"}}],
        "/fit/callbacks/0/class_name",
        "LambdaCallback",
        "EarlyStopping, ReduceLROnPlateau, TerminateOnNaN",
    ),
    (
        "csv-logger-callback",
        "/fit/callbacks",
        [{"class_name": "CSVLogger", "config": {"filename": "/data/jobs/x.csv"}}],
        "/fit/callbacks/0/class_name",
        "CSVLogger",
        "EarlyStopping, ReduceLROnPlateau, TerminateOnNaN",
    ),
    (
        "early-stopping-negative-patience",
        "/fit/callbacks",
        [{"class_name": "EarlyStopping", "config": {"patience": -1}}],
        "/fit/callbacks/0/config/patience",
        -1,
        "an integer from 0 to 100000",
    ),
    (
        "name-with-a-slash",
        "/name",
        "../etc/passwd",
        "/name",
        "../etc/passwd",
        "a name of 1 to 100 letters, digits, '.', '_' or '-'",
    ),
    ("priority-10", "/priority", 10, "/priority", 10, "an integer from 0 to 9"),
    ("too-many-gpus", "/resources/gpus", 99, "/resources/gpus", 99, "a positive integer up to 8"),
    ("unknown-top-level-key", "/callbacks", [], "/callbacks", "callbacks", "checkpoint"),
]


@pytest.mark.parametrize(
    ("pointer", "value", "path", "received", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_refused(client, dataset, pointer, value, path, received, expected) -> None:
    error = refusal(client, changed(request_for(dataset), pointer, value), path)
    assert error.get("received") == received
    assert expected in error["expected"]
    assert error["message"]


def test_the_message_reads_like_keras(client, dataset) -> None:
    body = changed(request_for(dataset), "/model/layers/1/config/units", -3)
    error = refusal(client, body, "/model/layers/1/config/units")
    assert error == {
        "path": "/model/layers/1/config/units",
        "message": "Layer 2 ('Dense') has units=-3. Expected a positive integer up to 100000. "
        "Received: units=-3",
        "expected": "a positive integer up to 100000",
        "received": -3,
    }


def test_lambda_is_refused_with_the_reason(client, dataset) -> None:
    body = changed(request_for(dataset), "/model/layers/1", LAMBDA_BYTECODE)
    error = refusal(client, body, "/model/layers/1/class_name")
    assert error["message"] == (
        "Lambda is refused: it runs arbitrary Python code (bytecode or a function reference)."
    )


def test_ten_thousand_layers_are_refused_without_reading_them(client, dataset) -> None:
    body = changed(request_for(dataset), "/model/layers", [DENSE] * 10_000)
    error = refusal(client, body, "/model/layers")
    assert error["expected"] == "at most 512 layers"
    assert error["received"] == "10000 layers"


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"NaN", b"Infinity"])
def test_numbers_json_cannot_carry_are_malformed(client, dataset, number: bytes) -> None:
    """orjson refuses them while parsing: a 400 before the grammar sees anything."""
    body = (
        b'{"model": {"input_shape": [8], "layers": [{"class_name": "Dense", "config": '
        b'{"units": 3}}]}, "compile": {"loss": "mse", "optimizer": {"class_name": "SGD", '
        b'"config": {"learning_rate": ' + number + b"}}}}"
    )
    response = client.post(
        "/v1/jobs:validate", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.get_json()["code"] == "malformed_request"


KERAS_SEQUENTIAL = {
    "module": "keras",
    "class_name": "Sequential",
    "config": {
        "name": "sequential",
        "layers": [
            {
                "module": "keras.layers",
                "class_name": "InputLayer",
                "config": {"batch_shape": [None, 8], "dtype": "float32", "name": "input_layer"},
                "registered_name": None,
            },
            {
                "module": "keras.layers",
                "class_name": "Dense",
                "config": {"name": "dense", "units": 3, "activation": "softmax"},
                "registered_name": None,
            },
        ],
    },
    "registered_name": None,
}


@pytest.mark.parametrize(
    ("pointer", "value", "path", "received", "expected"),
    [
        ("/model/module", "evil", "/model/module", "evil", "'keras' or a module"),
        ("/model/registered_name", "Custom>Seq", "/model/registered_name", "Custom>Seq", "null"),
        ("/model/class_name", "Model2", "/model/class_name", "Model2", "Sequential, Functional"),
        (
            "/model/config/layers/1",
            LAMBDA_BYTECODE,
            "/model/config/layers/1/class_name",
            "Lambda",
            "Dense",
        ),
        (
            "/model/config/layers/1/config/units",
            -1,
            "/model/config/layers/1/config/units",
            -1,
            "a positive integer",
        ),
    ],
    ids=["module", "registered-name", "class-name", "lambda", "units"],
)
def test_refused_in_to_json_form(client, dataset, pointer, value, path, received, expected) -> None:
    body = changed(request_for(dataset, model=KERAS_SEQUENTIAL), pointer, value)
    error = refusal(client, body, path)
    assert error["received"] == received
    assert expected in error["expected"]


def test_every_error_is_reported_at_once(client, dataset) -> None:
    body = request_for(dataset)
    for pointer, value in [
        ("/model/layers/0/config/units", 0),
        ("/model/layers/1/config/activation", "softmaxx"),
        ("/compile/loss", "msee"),
        ("/fit/epochs", 0),
        ("/fit/workers", 2),
        ("/priority", -1),
    ]:
        body = changed(body, pointer, value)
    response = client.post("/v1/jobs:validate", json=body)
    assert response.status_code == 422
    document = response.get_json()
    assert document["detail"] == "The job request is invalid: 6 errors."
    assert [e["path"] for e in document["errors"]] == [
        "/priority",
        "/model/layers/0/config/units",
        "/model/layers/1/config/activation",
        "/compile/loss",
        "/fit/epochs",
        "/fit/workers",
    ]


def test_a_request_that_is_not_an_object(client) -> None:
    response = client.post("/v1/jobs:validate", json=[1, 2])
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["path"] == "/"
