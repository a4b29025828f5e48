"""`data` and `checkpoint` against hand-written manifests: normal forms, defaults, refusals."""

from __future__ import annotations

from typing import Any

import hypothesis
import orjson
import pytest
from hypothesis import strategies as st

from core.errors import FieldError, InvalidRequest, NotFound
from core.grammar.data import DATA_KEYS, parse_checkpoint, parse_data
from core.grammar.kinds import INVALID
from core.settings import Settings

DATASET, HOLDOUT = "a" * 32, "b" * 32


def array(shape: list[int], *, low=0.0, high=1.0, integer=False, nan=0, inf=0) -> dict[str, Any]:
    stats = {"min": low, "max": high, "integer_valued": integer, "nan": nan, "inf": inf}
    return {"file": "a0.npy", "shape": shape, "dtype": "float32", "stats": stats}


MANIFESTS = {
    DATASET: {
        "id": DATASET,
        "rows": None,
        "arrays": {
            "x": array([10, 4]),
            "tokens": array([10, 6], low=0, high=49, integer=True),
            "y": array([10], high=2, integer=True),
            "animals": array([10], high=3, integer=True),
            "pixels": array([10, 2, 2]),
            "few": array([7, 4]),
            "w": array([10]),
        },
        "classes": {"animals": ["cat", "dog", "eel", "fox"]},
    },
    HOLDOUT: {
        "id": HOLDOUT,
        "rows": 3,
        "arrays": {
            "x": array([3, 4]),
            "pixels": array([3, 2, 2]),
            "y": array([3], high=2, integer=True),
        },
    },
}


def manifest_of(dataset_id: str) -> dict[str, Any]:
    if dataset_id not in MANIFESTS:
        raise NotFound(f"No dataset with id {dataset_id!r}.")
    return MANIFESTS[dataset_id]


def spec_with(units: int = 3, loss: Any = "sparse_categorical_crossentropy", dtype="float32"):
    return {
        "model": {
            "inputs": [{"name": "input", "shape": [4], "dtype": dtype}],
            "layers": [
                {"name": "output", "class_name": "Dense", "config": {"units": units},
                 "inbound": ["input"]},
            ],
            "outputs": ["output"],
        },
        "compile": {"loss": loss},
        "fit": {"validation_split": 0.0, "callbacks": []},
    }  # fmt: skip


def refusals(raw: Any, spec: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(InvalidRequest) as caught:
        parse_data(raw, spec or spec_with(), settings=Settings(), manifest_of=manifest_of)
    return [(e.path, e.message) for e in caught.value.errors]


def test_normal_form_with_defaults():
    raw = {
        "dataset": DATASET,
        "x": "pixels",
        "y": "y",
        "sample_weight": "w",
        "preprocess": {"x": {"scale": 0.5, "reshape": [4]}, "y": {"one_hot": 3}},
        "validation": {"dataset": HOLDOUT},
    }
    data = parse_data(raw, spec_with(loss="categorical_crossentropy"), settings=Settings(),
                      manifest_of=manifest_of)  # fmt: skip
    assert data == {
        "dataset": DATASET,
        "x": {"input": "pixels"},
        "y": {"output": "y"},
        "sample_weight": "w",
        "one_hot": {"output": 3},
        "preprocess": {
            "x": {"input": {"scale": 0.5, "offset": None, "reshape": [4], "raw_shape": [2, 2]}}
        },
        "validation": {"dataset": HOLDOUT, "x": {"input": "pixels"}, "y": {"output": "y"}},
        "test": None,
    }


def test_every_split_takes_the_raw_rows_the_model_takes():
    raw = {
        "dataset": DATASET,
        "x": "pixels",
        "y": "y",
        "preprocess": {"x": {"reshape": [4]}},
        "validation": {"dataset": HOLDOUT, "x": "x"},
    }
    ((path, message),) = refusals(raw)
    assert path == "/data/validation/x"
    assert "[4]" in message
    assert "[2, 2]" in message


def test_rows_must_agree_when_the_manifest_has_no_common_rows():
    ((path, message),) = refusals({"dataset": DATASET, "x": "few", "y": "y"})
    assert path == "/data"
    assert "'few' has 7" in message
    assert "'y' has 10" in message


def test_string_classes_count_against_units():
    ((path, message),) = refusals({"dataset": DATASET, "x": "x", "y": "animals"})
    assert path == "/data/y"
    assert "4 classes (0..3)" in message
    assert "3 units" in message


def test_integer_input_refuses_fractions_and_accepts_token_ids():
    spec = spec_with(dtype="int32")
    ((path, message),) = refusals({"dataset": DATASET, "x": "x", "y": "y"}, spec)
    assert path == "/data/x"
    assert "int32" in message
    assert "fractions" in message
    spec["model"]["inputs"][0]["shape"] = [6]
    data = parse_data({"dataset": DATASET, "x": "tokens", "y": "y"}, spec, settings=Settings(),
                      manifest_of=manifest_of)  # fmt: skip
    assert data["x"] == {"input": "tokens"}


def test_token_ids_must_fit_the_embedding():
    spec = spec_with(dtype="int32")
    spec["model"]["inputs"][0]["shape"] = [6]
    spec["model"]["layers"][:0] = [
        {"name": "embedding", "class_name": "Embedding",
         "config": {"input_dim": 40, "output_dim": 4}, "inbound": ["input"]},
        {"name": "flatten", "class_name": "Flatten", "config": {}, "inbound": ["embedding"]},
    ]  # fmt: skip
    spec["model"]["layers"][2]["inbound"] = ["flatten"]
    ((path, message),) = refusals({"dataset": DATASET, "x": "tokens", "y": "y"}, spec)
    assert path == "/data/x"
    assert "ids from 0 to 49" in message
    assert "input_dim=40" in message


def test_one_sigmoid_unit_takes_labels():
    data = parse_data({"dataset": DATASET, "x": "x", "y": "y"}, spec_with(1, "mse"),
                      settings=Settings(), manifest_of=manifest_of)  # fmt: skip
    assert data["y"] == {"output": "y"}


def test_an_array_of_nothing_but_nan_is_refused_cleanly():
    MANIFESTS[DATASET]["arrays"]["void"] = array([10], low=None, high=None, integer=True, nan=10)
    try:
        ((path, message),) = refusals({"dataset": DATASET, "x": "x", "y": "void"})
    finally:
        del MANIFESTS[DATASET]["arrays"]["void"]
    assert path == "/data/y"
    assert "10 NaN and 0 Inf" in message


def test_nan_and_inf_counts_are_named():
    MANIFESTS[HOLDOUT]["arrays"]["dirty"] = array([3, 4], nan=2, inf=5)
    try:
        ((path, message),) = refusals(
            {"dataset": DATASET, "x": "x", "y": "y", "test": {"dataset": HOLDOUT, "x": "dirty"}}
        )
    finally:
        del MANIFESTS[HOLDOUT]["arrays"]["dirty"]
    assert path == "/data/test/x"
    assert "'dirty'" in message.replace('"', "'")
    assert "2 NaN and 5 Inf" in message


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("x", "/data"),
        ({"dataset": 7, "x": "x", "y": "y"}, "/data/dataset"),
        ({"dataset": DATASET, "x": "x", "y": "y", "extra": 1}, "/data/extra"),
        ({"dataset": DATASET, "x": ["x"], "y": "y"}, "/data/x"),
        ({"dataset": DATASET, "x": {"inputs": "x"}, "y": "y"}, "/data/x/inputs"),
        ({"dataset": DATASET, "x": "x"}, "/data/y"),
        ({"dataset": DATASET, "x": "x", "y": "y", "preprocess": {"x": {"scale": "big"}}},
         "/data/preprocess/x/scale"),
        ({"dataset": DATASET, "x": "x", "y": "y", "preprocess": {"x": {"reshape": [0]}}},
         "/data/preprocess/x/reshape/0"),
        ({"dataset": DATASET, "x": "x", "y": "y", "preprocess": {"y": {"one_hot": 1}}},
         "/data/preprocess/y/one_hot"),
        ({"dataset": DATASET, "x": "x", "y": "y", "preprocess": {"z": {}}}, "/data/preprocess/z"),
        ({"dataset": DATASET, "x": "x", "y": "y", "validation": {"dataset": HOLDOUT, "w": 1}},
         "/data/validation/w"),
    ],
)  # fmt: skip
def test_malformed_data_is_located(raw, path):
    assert path in [p for p, _ in refusals(raw)]


def test_without_a_model_only_the_dataset_is_checked():
    spec = {**spec_with(), "model": INVALID}
    assert [p for p, _ in refusals({"dataset": "c" * 32, "x": "x", "y": "y"}, spec)] == [
        "/data/dataset"
    ]


def checkpoint(raw: Any, *, split=0.0, callbacks=(), validation=None, keep=3) -> dict[str, Any]:
    spec = {
        "fit": {"validation_split": split, "callbacks": list(callbacks)},
        "data": {"validation": validation},
    }
    return parse_checkpoint(raw, spec, settings=Settings(keep_checkpoints=keep))


def test_checkpoint_defaults():
    assert checkpoint(None, keep=4) == {"monitor": "loss", "mode": "min", "keep": 4}
    assert checkpoint({}, split=0.2)["monitor"] == "val_loss"
    assert checkpoint({}, validation={"dataset": HOLDOUT})["monitor"] == "val_loss"
    early = {"class_name": "EarlyStopping", "config": {"monitor": "val_accuracy"}}
    assert checkpoint({}, split=0.1, callbacks=[early]) == {
        "monitor": "val_accuracy",
        "mode": "max",
        "keep": 3,
    }
    assert checkpoint({"monitor": "auc", "keep": 1}) == {"monitor": "auc", "mode": "max", "keep": 1}
    assert checkpoint({"monitor": "accuracy", "mode": "min"})["mode"] == "min"


@pytest.mark.parametrize(
    ("raw", "callbacks", "path", "words"),
    [
        ({"monitor": "val_loss"}, [], "/checkpoint/monitor", "needs validation data"),
        ({}, [{"class_name": "EarlyStopping", "config": {}}],
         "/fit/callbacks/0/config/monitor", "fit.validation_split"),
        ({"keep": 0}, [], "/checkpoint/keep", "0"),
        ({"mode": "up"}, [], "/checkpoint/mode", "up"),
        ({"every": 2}, [], "/checkpoint/every", "every"),
        ([], [], "/checkpoint", "[]"),
    ],
)  # fmt: skip
def test_checkpoint_refusals(raw, callbacks, path, words):
    with pytest.raises(InvalidRequest) as caught:
        checkpoint(raw, callbacks=callbacks)
    (error,) = caught.value.errors
    assert error.path == path
    assert words in error.message


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.sampled_from(["x", "y", "w", "pixels", "tokens", DATASET, HOLDOUT, "input", "output"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from([*DATA_KEYS, "scale", "offset", "reshape", "one_hot", "input", "output",
                         "x", "y", "monitor", "mode", "keep"]),
        inner,
        max_size=5,
    ),
    max_leaves=20,
)  # fmt: skip


def refusals_or_none(parse: Any) -> list[Any]:
    try:
        parse()
    except InvalidRequest as error:
        return error.errors
    return []


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(JSON, JSON)
def test_any_json_is_parsed_or_refused_never_crashes(data, checkpoint_raw):
    """Whatever a client sends, the answer is a normal form or located errors, never a 500."""
    spec = spec_with()
    errors = refusals_or_none(
        lambda: parse_data(data, spec, settings=Settings(), manifest_of=manifest_of)
    )
    errors += refusals_or_none(lambda: parse_checkpoint(checkpoint_raw, spec, settings=Settings()))
    assert all(error.path.startswith(("/data", "/checkpoint", "/fit")) for error in errors)
    orjson.dumps([error.to_dict() for error in errors])


def test_variable_sizes_are_checked_with_the_arrays_sizes():
    spec = spec_with()
    spec["model"]["inputs"][0]["shape"] = [None]
    spec["model"]["layers"][:0] = [
        {"name": "grid", "class_name": "Reshape", "config": {"target_shape": [5, 5]},
         "inbound": ["input"]},
        {"name": "flatten", "class_name": "Flatten", "config": {}, "inbound": ["grid"]},
    ]  # fmt: skip
    spec["model"]["layers"][2]["inbound"] = ["flatten"]
    ((path, message),) = refusals({"dataset": DATASET, "x": "x", "y": "y"}, spec)
    assert path == "/data/x"
    assert "input: [4]" in message
    assert "layer 'grid' (Reshape)" in message
    assert "[5, 5]" in message


def test_labels_beyond_the_one_hot_count():
    raw = {"dataset": DATASET, "x": "x", "y": "animals", "preprocess": {"y": {"one_hot": 3}}}
    spec = spec_with(loss="categorical_crossentropy")
    ((path, message),) = refusals(raw, spec)
    assert path == "/data/y"
    assert "4 classes (0..3) but data.preprocess.y.one_hot is 3" in message


@pytest.mark.parametrize(
    ("received", "rendered"),
    [
        (2**64, str(2**64)),
        ([1, -(2**70)], [1, str(-(2**70))]),
        ({"rows": 2**80, "cols": 3}, {"rows": str(2**80), "cols": 3}),
    ],
)
def test_a_received_integer_past_64_bits_is_reported_as_text(received, rendered):
    """Found by the property test above: such a value made the error document unencodable."""
    error = FieldError("/data/x", "too big", "a smaller number", received)
    assert orjson.loads(orjson.dumps(error.to_dict()))["received"] == rendered
