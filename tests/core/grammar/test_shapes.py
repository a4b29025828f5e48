"""The shape and parameter formulas against Keras itself, for every allowlisted layer."""

from __future__ import annotations

import subprocess
import sys
import warnings
from typing import Any

import hypothesis
import keras
import numpy as np
import orjson
import pytest
from hypothesis import strategies as st

from core.errors import InvalidRequest
from core.grammar import allowlist
from core.grammar.kinds import INVALID, Place, check_arguments
from core.grammar.shapes import RULES, infer_model
from core.settings import Settings

LSTM8 = {"class_name": "LSTM", "config": {"units": 8}}
GRU_SEQ = {"class_name": "GRU", "config": {"units": 4, "return_sequences": True}}

# (class_name, config, input shapes without the batch axis)
CASES: list[tuple[str, dict[str, Any], list[list[int | None]]]] = [
    ("InputLayer", {}, [[5]]),
    ("Dense", {"units": 7}, [[5]]),
    ("Dense", {"units": 3, "use_bias": False}, [[4, 6]]),
    ("Dense", {"units": 2}, [[None, 3]]),
    ("Activation", {"activation": "relu"}, [[3, 4]]),
    ("Dropout", {"rate": 0.5}, [[10]]),
    ("Dropout", {"rate": 0.5, "noise_shape": [None, 1, 3]}, [[4, 3]]),
    ("SpatialDropout1D", {"rate": 0.2}, [[6, 3]]),
    ("SpatialDropout2D", {"rate": 0.2}, [[6, 5, 3]]),
    ("GaussianNoise", {"stddev": 0.1}, [[4]]),
    ("Flatten", {}, [[3, 4, 5]]),
    ("Flatten", {}, [[None, 4]]),
    ("Reshape", {"target_shape": [4, 6]}, [[24]]),
    ("Reshape", {"target_shape": [-1, 3]}, [[4, 6]]),
    ("Permute", {"dims": [2, 1]}, [[3, 5]]),
    ("Permute", {"dims": [3, 1, 2]}, [[2, 3, 4]]),
    ("RepeatVector", {"n": 4}, [[6]]),
    ("ZeroPadding1D", {"padding": 2}, [[7, 3]]),
    ("ZeroPadding1D", {"padding": [1, 3]}, [[7, 3]]),
    ("ZeroPadding2D", {"padding": 1}, [[5, 6, 2]]),
    ("ZeroPadding2D", {"padding": [[1, 2], [0, 3]]}, [[5, 6, 2]]),
    ("ZeroPadding2D", {"padding": [1, 2], "data_format": "channels_first"}, [[2, 5, 6]]),
    ("Cropping1D", {"cropping": [1, 2]}, [[9, 3]]),
    ("Cropping2D", {"cropping": [[1, 1], [2, 0]]}, [[8, 7, 3]]),
    ("Cropping2D", {"cropping": 2}, [[8, 7, 3]]),
    ("UpSampling1D", {"size": 3}, [[4, 2]]),
    ("UpSampling2D", {"size": [2, 3]}, [[4, 5, 2]]),
    ("UpSampling2D", {"size": 2, "data_format": "channels_first"}, [[2, 4, 5]]),
    ("Conv1D", {"filters": 4, "kernel_size": 3}, [[10, 2]]),
    (
        "Conv1D",
        {"filters": 4, "kernel_size": 3, "padding": "causal", "dilation_rate": 2},
        [[10, 2]],
    ),
    ("Conv1D", {"filters": 6, "kernel_size": 2, "strides": 2, "groups": 2}, [[None, 4]]),
    ("Conv2D", {"filters": 8, "kernel_size": 3}, [[12, 12, 3]]),
    (
        "Conv2D",
        {"filters": 8, "kernel_size": [3, 2], "strides": 2, "padding": "same"},
        [[11, 9, 3]],
    ),
    (
        "Conv2D",
        {"filters": 5, "kernel_size": 3, "dilation_rate": 2, "use_bias": False},
        [[12, 12, 1]],
    ),
    ("Conv2D", {"filters": 4, "kernel_size": 3, "data_format": "channels_first"}, [[3, 9, 9]]),
    ("Conv3D", {"filters": 2, "kernel_size": 2}, [[5, 6, 7, 3]]),
    (
        "Conv3D",
        {"filters": 2, "kernel_size": [1, 2, 3], "strides": [1, 2, 2], "padding": "same"},
        [[5, 6, 7, 3]],
    ),
    ("Conv2DTranspose", {"filters": 4, "kernel_size": 3}, [[5, 5, 2]]),
    (
        "Conv2DTranspose",
        {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
        [[5, 6, 2]],
    ),
    (
        "Conv2DTranspose",
        {"filters": 3, "kernel_size": 4, "strides": 3, "output_padding": 1},
        [[5, 5, 2]],
    ),
    (
        "Conv2DTranspose",
        {"filters": 3, "kernel_size": 3, "dilation_rate": 2, "use_bias": False},
        [[5, 5, 2]],
    ),
    ("SeparableConv2D", {"filters": 6, "kernel_size": 3}, [[9, 9, 4]]),
    (
        "SeparableConv2D",
        {"filters": 6, "kernel_size": 3, "depth_multiplier": 2, "padding": "same", "strides": 2},
        [[9, 9, 4]],
    ),
    ("DepthwiseConv2D", {"kernel_size": 3}, [[8, 8, 3]]),
    ("DepthwiseConv2D", {"kernel_size": 2, "depth_multiplier": 3, "use_bias": False}, [[8, 8, 3]]),
    ("MaxPooling1D", {}, [[9, 3]]),
    ("MaxPooling1D", {"pool_size": 3, "strides": 1, "padding": "same"}, [[9, 3]]),
    ("MaxPooling2D", {"pool_size": [2, 3]}, [[9, 10, 2]]),
    ("MaxPooling2D", {"pool_size": 2, "strides": 1, "data_format": "channels_first"}, [[2, 5, 5]]),
    ("MaxPooling3D", {"pool_size": 2}, [[4, 5, 6, 2]]),
    ("AveragePooling1D", {"pool_size": 2, "strides": 3}, [[10, 2]]),
    ("AveragePooling2D", {"pool_size": 3, "padding": "same"}, [[7, 8, 2]]),
    ("AveragePooling3D", {"pool_size": [1, 2, 2]}, [[4, 5, 6, 2]]),
    ("GlobalAveragePooling1D", {}, [[7, 3]]),
    ("GlobalAveragePooling2D", {"keepdims": True}, [[7, 5, 3]]),
    ("GlobalMaxPooling1D", {"keepdims": True}, [[7, 3]]),
    ("GlobalMaxPooling2D", {"data_format": "channels_first"}, [[3, 7, 5]]),
    ("BatchNormalization", {}, [[5]]),
    ("BatchNormalization", {"axis": 1, "center": False}, [[4, 6, 6]]),
    ("BatchNormalization", {"scale": False}, [[6, 6, 3]]),
    ("LayerNormalization", {}, [[5, 3]]),
    ("LayerNormalization", {"axis": [1, 2], "center": False}, [[5, 3]]),
    ("LayerNormalization", {"rms_scaling": True}, [[5, 3]]),
    ("ReLU", {"max_value": 6.0}, [[4]]),
    ("LeakyReLU", {"negative_slope": 0.2}, [[4]]),
    ("PReLU", {}, [[4, 3]]),
    ("PReLU", {"shared_axes": [1, 2]}, [[4, 5, 3]]),
    ("ELU", {"alpha": 0.5}, [[4]]),
    ("Softmax", {"axis": -1}, [[4]]),
    ("Embedding", {"input_dim": 50, "output_dim": 8}, [[12]]),
    ("Embedding", {"input_dim": 30, "output_dim": 4}, [[None]]),
    ("LSTM", {"units": 8}, [[5, 3]]),
    ("LSTM", {"units": 4, "return_sequences": True, "use_bias": False}, [[None, 3]]),
    ("GRU", {"units": 6}, [[5, 3]]),
    ("GRU", {"units": 6, "reset_after": False}, [[5, 3]]),
    ("GRU", {"units": 2, "return_sequences": True, "use_bias": False}, [[5, 3]]),
    ("SimpleRNN", {"units": 5}, [[5, 3]]),
    ("SimpleRNN", {"units": 5, "return_sequences": True}, [[5, 3]]),
    ("Bidirectional", {"layer": LSTM8}, [[5, 3]]),
    ("Bidirectional", {"layer": GRU_SEQ, "merge_mode": "sum"}, [[5, 3]]),
    ("Bidirectional", {"layer": GRU_SEQ, "merge_mode": "concat"}, [[None, 3]]),
    (
        "Bidirectional",
        {"layer": {"class_name": "SimpleRNN", "config": {"units": 3}}, "merge_mode": "ave"},
        [[5, 3]],
    ),
    (
        "Bidirectional",
        {
            "layer": LSTM8,
            "merge_mode": "mul",
            "backward_layer": {"class_name": "LSTM", "config": {"units": 8, "go_backwards": True}},
        },
        [[5, 3]],
    ),
    ("Concatenate", {}, [[4], [6]]),
    ("Concatenate", {"axis": 1}, [[2, 3], [5, 3]]),
    ("Add", {}, [[4, 3], [4, 3]]),
    ("Add", {}, [[4, 3], [4, 3], [4, 3]]),
    ("Multiply", {}, [[4], [4]]),
    ("Average", {}, [[1, 3], [4, 3]]),
    ("Subtract", {}, [[6], [6]]),
    ("Rescaling", {"scale": 0.5, "offset": 1.0}, [[4]]),
    ("Rescaling", {"scale": [0.5, 1.0, 2.0], "offset": [0.0, 1.0, -1.0]}, [[5, 3]]),
    ("Normalization", {"mean": [1.0, 2.0, 3.0], "variance": [1.0, 4.0, 9.0]}, [[3]]),
    ("Normalization", {"axis": 1, "mean": [1.0, 2.0], "variance": [1.0, 4.0]}, [[2, 5]]),
    ("Normalization", {"axis": None, "mean": 2.0, "variance": 4.0}, [[4, 4, 3]]),
    ("RandomFlip", {"mode": "horizontal", "seed": 1}, [[8, 8, 3]]),
    ("RandomRotation", {"factor": [-0.2, 0.3], "fill_mode": "constant"}, [[8, 8, 1]]),
    ("RandomZoom", {"height_factor": 0.2, "width_factor": [-0.1, 0.1]}, [[6, 8, 3]]),
    ("RandomContrast", {"factor": 0.3, "value_range": [0.0, 1.0]}, [[8, 8, 3]]),
]


def keras_layer(class_name: str, config: dict[str, Any]):
    """Keras's own layer, built from the test's literal config (the tests' reference only)."""
    config = dict(config)
    for key in ("layer", "backward_layer"):
        if key in config:
            inner = config[key]
            config[key] = getattr(keras.layers, inner["class_name"])(**inner["config"])
    return getattr(keras.layers, class_name)(**config)


def one_layer_model(class_name: str, config: dict[str, Any], shapes: list[list[int | None]]):
    inputs = [{"name": f"in{i}", "shape": s, "dtype": "float32"} for i, s in enumerate(shapes)]
    layer = {
        "name": "probe",
        "class_name": class_name,
        "config": config,
        "inbound": [i["name"] for i in inputs],
    }
    return {"inputs": inputs, "layers": [layer], "outputs": ["probe"]}


def test_every_allowlisted_layer_has_a_formula_and_a_case():
    assert set(RULES) == set(allowlist.LAYERS)
    assert {case[0] for case in CASES} == set(RULES)


@pytest.mark.parametrize(
    ("class_name", "config", "shapes"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_formula_equals_keras(class_name, config, shapes):
    summary = infer_model(one_layer_model(class_name, config, shapes), Settings())
    if class_name == "InputLayer":
        layer = keras.layers.InputLayer(shape=tuple(shapes[0]))
        expected_shape, params, trainable = (None, *shapes[0]), 0, 0
    else:
        layer = keras_layer(class_name, config)
        tensors = [keras.Input(shape=tuple(s)) for s in shapes]
        output = layer(tensors if len(tensors) > 1 else tensors[0])
        expected_shape = tuple(output.shape)
        params = layer.count_params()
        trainable = sum(int(w.numpy().size) for w in layer.trainable_weights)
    (row,) = summary["layers"]
    assert tuple(row["output_shape"]) == expected_shape
    assert row["params"] == params
    assert summary["trainable_params"] == trainable
    assert summary["non_trainable_params"] == params - trainable


def test_summary_names_inputs_outputs_and_totals():
    model = {
        "inputs": [{"name": "pixels", "shape": [784], "dtype": "float32"}],
        "layers": [
            {
                "name": "dense",
                "class_name": "Dense",
                "config": {"units": 32},
                "inbound": ["pixels"],
            },
            {
                "name": "output",
                "class_name": "Dense",
                "config": {"units": 10},
                "inbound": ["dense"],
            },
        ],
        "outputs": ["output"],
    }
    summary = infer_model(model, Settings())
    assert summary["total_params"] == 784 * 32 + 32 + 32 * 10 + 10
    assert summary["inputs"] == [{"name": "pixels", "shape": [None, 784], "dtype": "float32"}]
    assert summary["outputs"] == [{"name": "output", "shape": [None, 10]}]
    assert [row["name"] for row in summary["layers"]] == ["dense", "output"]


def test_ten_billion_parameters_refused_before_any_weight():
    layers = [
        {"name": "dense", "class_name": "Dense", "config": {"units": 100_000}, "inbound": ["input"]}
    ]
    layers += [
        {
            "name": "dense_1",
            "class_name": "Dense",
            "config": {"units": 100_000},
            "inbound": ["dense"],
        }
    ]
    model = {
        "inputs": [{"name": "input", "shape": [100_000], "dtype": "float32"}],
        "layers": layers,
        "outputs": ["dense_1"],
    }
    with pytest.raises(InvalidRequest) as caught:
        infer_model(model, Settings(max_params=50_000_000))
    (error,) = caught.value.errors
    assert error.path == "/model"
    assert "20,000,200,000 parameters" in error.message
    assert "50,000,000" in error.message
    assert error.received == 20_000_200_000


@pytest.mark.parametrize(
    ("class_name", "config", "shapes", "words"),
    [
        ("Concatenate", {}, [[4, 3], [5, 2]], ["(None, 4, 3)", "(None, 5, 2)"]),
        ("Reshape", {"target_shape": [5, 5]}, [[24]], ["(None, 24)", "[5, 5]", "25 values"]),
        ("Conv2D", {"filters": 2, "kernel_size": 3}, [[10]], ["rank 4", "(None, 10)"]),
        ("Conv1D", {"filters": 2, "kernel_size": 5}, [[3, 1]], ["window of 5", "length of 3"]),
        ("Add", {}, [[4], [5]], ["(None, 4)", "(None, 5)"]),
        ("Subtract", {}, [[4], [4], [4]], ["exactly 2 inputs"]),
        ("LSTM", {"units": 3}, [[4]], ["rank 3", "(None, 4)"]),
        ("Dense", {"units": 3}, [[None]], ["last axis", "(None, None)"]),
        ("Permute", {"dims": [1, 3]}, [[2, 3]], ["[1, 3]", "[1, 2]"]),
        ("Cropping1D", {"cropping": [3, 3]}, [[5, 2]], ["cropping 6", "length of 5"]),
        ("Dropout", {"rate": 0.5, "noise_shape": [None, 2]}, [[2, 2]], ["[None, 2]", "3 entries"]),
        ("Dropout", {"rate": 0.5, "noise_shape": [None, 3]}, [[2]], ["[None, 3]", "(None, 2)"]),
    ],
)
def test_shape_mismatch_names_the_layer_and_both_shapes(class_name, config, shapes, words):
    model = one_layer_model(class_name, config, shapes)
    with pytest.raises(InvalidRequest) as caught:
        infer_model(model, Settings(), paths={"probe": "/model/config/layers/3"})
    (error,) = caught.value.errors
    assert error.path == "/model/config/layers/3"
    text = f"{error.message} {error.received} {error.expected}"
    assert "'probe'" in error.message
    for word in words:
        assert word in text
    assert error.expected


def test_every_mismatch_is_reported_and_dependents_are_skipped():
    model = {
        "inputs": [
            {"name": "a", "shape": [4], "dtype": "float32"},
            {"name": "b", "shape": [3, 3], "dtype": "float32"},
        ],
        "layers": [
            {
                "name": "bad_conv",
                "class_name": "Conv1D",
                "config": {"filters": 1, "kernel_size": 2},
                "inbound": ["a"],
            },
            {
                "name": "after",
                "class_name": "Dense",
                "config": {"units": 2},
                "inbound": ["bad_conv"],
            },
            {
                "name": "bad_reshape",
                "class_name": "Reshape",
                "config": {"target_shape": [4]},
                "inbound": ["b"],
            },
        ],
        "outputs": ["after", "bad_reshape"],
    }
    with pytest.raises(InvalidRequest) as caught:
        infer_model(model, Settings())
    assert [e.path for e in caught.value.errors] == ["/model/layers/0", "/model/layers/2"]


def test_rows_of_more_than_two_billion_values_are_refused():
    model = one_layer_model("Flatten", {}, [[1 << 24] * 3])
    with pytest.raises(InvalidRequest) as caught:
        infer_model(model, Settings())
    (error,) = caught.value.errors
    assert error.path == "/model"
    assert "2,147,483,647 values per row" in error.expected
    chain = {
        "inputs": [{"name": "input", "shape": [2, 2, 1], "dtype": "float32"}],
        "layers": [
            {"name": "up", "class_name": "UpSampling2D", "config": {"size": 1024},
             "inbound": ["input"]},
            {"name": "up_1", "class_name": "UpSampling2D", "config": {"size": 1024},
             "inbound": ["up"]},
        ],
        "outputs": ["up_1"],
    }  # fmt: skip
    with pytest.raises(InvalidRequest) as caught:
        infer_model(chain, Settings())
    (error,) = caught.value.errors
    assert error.path == "/model/layers/1"
    assert "(None, 2097152, 2097152, 1)" in error.message


def test_a_total_past_64_bits_is_reported_as_text():
    model = one_layer_model(
        "Conv3D", {"filters": 16_384, "kernel_size": 1024, "padding": "same"}, [[1, 1, 1, 1 << 24]]
    )
    with pytest.raises(InvalidRequest) as caught:
        infer_model(model, Settings())
    (error,) = caught.value.errors
    assert error.received == "2.951e+20"
    assert orjson.loads(orjson.dumps(error.to_dict()))["received"] == "2.951e+20"


SMALL = st.integers(1, 4)
FORMAT = st.sampled_from([None, "channels_last", "channels_first"])
PADDING = st.sampled_from(["valid", "same"])


def sizes(rank: int, low: int = 1) -> st.SearchStrategy:
    return st.integers(low, 4) | st.lists(st.integers(low, 4), min_size=rank, max_size=rank)


def conv_config(rank: int, *, filters: bool = True, groups: bool = True) -> tuple[dict, dict]:
    required = {"kernel_size": sizes(rank)}
    optional = {
        "strides": sizes(rank),
        "dilation_rate": sizes(rank),
        "padding": PADDING,
        "data_format": FORMAT,
        "use_bias": st.booleans(),
    }
    if filters:
        required["filters"] = st.integers(1, 6)
    if groups:
        optional["groups"] = st.integers(1, 3)
    return required, optional


def pool_config(rank: int, *, required: bool = False) -> tuple[dict, dict]:
    optional = {"pool_size": sizes(rank), "strides": st.none() | sizes(rank),
                "padding": PADDING, "data_format": FORMAT}  # fmt: skip
    if required:
        return {"pool_size": optional.pop("pool_size")}, optional
    return {}, optional


def with_optional(config: tuple[dict, dict], **more: st.SearchStrategy) -> tuple[dict, dict]:
    return config[0], {**config[1], **more}


GLOBAL = {"keepdims": st.booleans(), "data_format": FORMAT}
AXES = st.integers(-4, 3) | st.lists(st.integers(-4, 3), min_size=1, max_size=2, unique=True)
RNN = ({"units": SMALL}, {"return_sequences": st.booleans(), "use_bias": st.booleans()})
# (required, optional) config strategies per layer: small values that reach the edge cases.
FUZZED: dict[str, tuple[dict, dict]] = {
    "Dense": ({"units": SMALL}, {"use_bias": st.booleans()}),
    "Dropout": ({"rate": st.just(0.5)}, {}),
    "SpatialDropout1D": ({"rate": st.just(0.5)}, {}),
    "SpatialDropout2D": ({"rate": st.just(0.5)}, {"data_format": FORMAT}),
    "Flatten": ({}, {"data_format": FORMAT}),
    "Reshape": ({"target_shape": st.lists(st.integers(-1, 6).filter(bool), min_size=1,
                                          max_size=3)}, {}),
    "Permute": ({"dims": st.lists(st.integers(1, 4), min_size=1, max_size=4)}, {}),
    "RepeatVector": ({"n": SMALL}, {}),
    "ZeroPadding1D": ({}, {"padding": sizes(2, 0), "data_format": FORMAT}),
    "ZeroPadding2D": ({}, {"padding": sizes(2, 0), "data_format": FORMAT}),
    "Cropping1D": ({}, {"cropping": sizes(2, 0)}),
    "Cropping2D": ({}, {"cropping": sizes(2, 0), "data_format": FORMAT}),
    "UpSampling1D": ({}, {"size": SMALL}),
    "UpSampling2D": ({}, {"size": sizes(2), "data_format": FORMAT}),
    "Conv1D": with_optional(conv_config(1), padding=st.sampled_from(["valid", "same", "causal"])),
    "Conv2D": conv_config(2),
    "Conv2DTranspose": with_optional(conv_config(2, groups=False),
                                     output_padding=st.none() | sizes(2, 0)),
    "SeparableConv2D": with_optional(conv_config(2, groups=False), depth_multiplier=SMALL),
    "DepthwiseConv2D": with_optional(conv_config(2, filters=False, groups=False),
                                     depth_multiplier=SMALL),
    "Conv3D": conv_config(3),
    "MaxPooling1D": pool_config(1),
    "MaxPooling2D": pool_config(2),
    "MaxPooling3D": pool_config(3),
    "AveragePooling1D": pool_config(1, required=True),
    "AveragePooling2D": pool_config(2, required=True),
    "AveragePooling3D": pool_config(3, required=True),
    "GlobalAveragePooling1D": ({}, GLOBAL),
    "GlobalAveragePooling2D": ({}, GLOBAL),
    "GlobalMaxPooling1D": ({}, GLOBAL),
    "GlobalMaxPooling2D": ({}, GLOBAL),
    "Activation": ({"activation": st.sampled_from(["relu", "softmax", "tanh"])}, {}),
    "GaussianNoise": ({"stddev": st.just(0.1)}, {}),
    "ReLU": ({}, {"max_value": st.none() | st.just(6.0)}),
    "LeakyReLU": ({}, {"negative_slope": st.just(0.2)}),
    "ELU": ({}, {"alpha": st.just(0.5)}),
    "Rescaling": ({"scale": st.just(0.5)}, {"offset": st.just(1.0)}),
    "Normalization": ({"mean": st.just(1.0), "variance": st.just(4.0)},
                      {"axis": st.integers(-4, 3)}),
    "RandomFlip": ({}, {"mode": st.sampled_from(["horizontal", "vertical"]), "seed": SMALL}),
    "RandomRotation": ({"factor": st.just(0.2)},
                       {"fill_mode": st.sampled_from(["wrap", "nearest"])}),
    "RandomZoom": ({"height_factor": st.just(0.2)}, {"width_factor": st.just([-0.1, 0.2])}),
    "RandomContrast": ({"factor": st.just(0.3)}, {"value_range": st.just([0.0, 1.0])}),
    "BatchNormalization": ({}, {"axis": st.integers(-4, 3), "center": st.booleans()}),
    "LayerNormalization": ({}, {"axis": AXES, "scale": st.booleans()}),
    "PReLU": ({}, {"shared_axes": st.lists(st.integers(1, 4), min_size=1, max_size=2)}),
    "Softmax": ({}, {"axis": AXES}),
    "Embedding": ({"input_dim": SMALL, "output_dim": SMALL}, {}),
    "LSTM": RNN,
    "GRU": with_optional(RNN, reset_after=st.booleans()),
    "SimpleRNN": RNN,
}  # fmt: skip


@st.composite
def layer_cases(draw: st.DrawFn) -> tuple[str, dict[str, Any], list[list[int]]]:
    class_name = draw(st.sampled_from(sorted(FUZZED)))
    required, optional = FUZZED[class_name]
    config = draw(st.fixed_dictionaries(required, optional=optional))
    # Augmentations are refused on purpose on anything but rows of images (rank 3), though
    # Keras runs some of them on other ranks.
    rank = (3, 3) if class_name in allowlist.AUGMENTATION_LAYERS else (1, 4)
    return (
        class_name,
        config,
        [draw(st.lists(st.integers(1, 6), min_size=rank[0], max_size=rank[1]))],
    )


MERGED = ["Add", "Average", "Bidirectional", "Concatenate", "Multiply", "Subtract"]


def test_the_differential_test_reaches_every_layer():
    assert {*FUZZED, *MERGED, "InputLayer"} == set(RULES)


@st.composite
def merge_cases(draw: st.DrawFn) -> tuple[str, dict[str, Any], list[list[int]]]:
    """Merges of 2-3 inputs of one rank, and Bidirectional wrappers.

    Left out on purpose, being refused though Keras runs them: merges of a single input or
    across the batch axis, and element-wise merges that broadcast across ranks or unit counts.
    """
    class_name = draw(st.sampled_from(MERGED))
    if class_name == "Bidirectional":
        inner = draw(st.sampled_from(["LSTM", "GRU", "SimpleRNN"]))
        units, sequences = draw(SMALL), draw(st.booleans())
        merge = draw(st.sampled_from([None, "concat", "sum", "mul", "ave"]))
        config = {"layer": {"class_name": inner,
                            "config": {"units": units, "return_sequences": sequences}},
                  "merge_mode": merge}  # fmt: skip
        if draw(st.booleans()):
            back = {
                "units": units if merge != "concat" else draw(SMALL),
                "go_backwards": draw(st.booleans()),
                "return_sequences": draw(st.booleans()),
            }
            config["backward_layer"] = {"class_name": inner, "config": back}  # fmt: skip
        return class_name, config, [draw(st.lists(SMALL, min_size=1, max_size=3))]
    rank = draw(st.integers(1, 3))
    count = 2 if class_name == "Subtract" else draw(st.integers(2, 3))
    shapes = [draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank)) for _ in range(count)]
    if class_name != "Concatenate":
        return class_name, {}, shapes
    return class_name, {"axis": draw(st.integers(-rank, rank).filter(bool))}, shapes


def keras_outcome(class_name: str, config: dict[str, Any], shapes: list[list[int]]):
    """Keras's answer for one layer on a real batch: (output shape, params) or None if it fails.

    Keras's warnings (a softmax over an axis of size 1) are advice, not refusals: it runs.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _keras_outcome(class_name, config, shapes)


def _keras_outcome(class_name: str, config: dict[str, Any], shapes: list[list[int]]):
    try:
        layer = keras_layer(class_name, config)
        symbolic = [keras.Input(tuple(shape)) for shape in shapes]
        batch = [np.zeros((2, *shape), dtype="float32") for shape in shapes]
        if len(shapes) == 1 and class_name not in allowlist.MERGE_LAYERS:
            symbolic, batch = symbolic[0], batch[0]
        layer(symbolic)
        output = layer(batch, training=True)  # dropout masks apply only in training
        return tuple(output.shape)[1:], layer.count_params()
    except Exception:  # any refusal by Keras, at construction, build or call
        return None


@hypothesis.settings(
    max_examples=150, deadline=None, suppress_health_check=[hypothesis.HealthCheck.filter_too_much]
)
@hypothesis.given(layer_cases() | merge_cases())
def test_formulas_accept_exactly_what_keras_runs(case):
    """Grammar + formulas against Keras on random configs: no crash at build, no false refusal."""
    class_name, config, shapes = case
    checked = check_arguments(config, allowlist.LAYERS[class_name], Place([]))
    hypothesis.assume(checked is not INVALID)
    expected = keras_outcome(class_name, config, shapes)
    try:
        summary = infer_model(one_layer_model(class_name, checked, shapes), Settings())
    except InvalidRequest:
        assert expected is None, f"refused what Keras runs: {expected}"
        return
    assert expected is not None, f"accepted what Keras refuses: {summary['layers']}"
    (row,) = summary["layers"]
    assert (tuple(row["output_shape"][1:]), row["params"]) == expected


def test_the_parameter_cap_is_checked_without_tensorflow():
    """Refusing a 10^10-parameter request never imports TensorFlow, so no weight can exist."""
    script = """
import sys
from core.settings import Settings
from core.errors import InvalidRequest, NotFound
from core.grammar import parse_job_request
body = {"model": {"input_shape": [100000], "layers": [
    {"class_name": "Dense", "config": {"units": 100000}},
    {"class_name": "Dense", "config": {"units": 10}}]},
    "compile": {"optimizer": "sgd", "loss": "mse"}, "fit": {"epochs": 1},
    "data": {"dataset": "0" * 32, "x": "x", "y": "y"}}
def unknown(dataset_id):
    raise NotFound(dataset_id)
try:
    parse_job_request(body, settings=Settings(), manifest_of=unknown)
except InvalidRequest as error:
    print([e.path for e in error.errors if "parameters" in e.message])
print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.splitlines() == ["['/model']", "[]"], result.stderr
