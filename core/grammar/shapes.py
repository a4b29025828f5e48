"""Output shapes and parameter counts of a normalized model, by formula, before anything is built.

Every allowlisted layer has a rule here: its output shape and its trainable and non-trainable
parameter counts from its config and its input shapes, in pure Python. So a model of 10^10
parameters is refused in milliseconds, with no weight allocated and no TensorFlow imported.
Shapes here leave out the batch axis; the summary puts it back as `None`, as Keras prints it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from core.errors import FieldError, InvalidRequest
from core.settings import Settings

Shape = tuple[int | None, ...]
# Values in one row of any tensor: TensorFlow indexes with int32 in many kernels, and the cap keeps
# every count in this module small enough for JSON and for error messages.
MAX_ROW_VALUES = 2**31 - 1
# A rule answers (output shape, trainable parameters, non-trainable parameters).
Counted = tuple[Shape, int, int]
Rule = Callable[[dict[str, Any], list[Shape]], Counted]


class ShapeMismatch(ValueError):
    """A layer cannot take the shapes it is given; carries what it expected, and the argument
    at fault when one is (a pointer below the layer's `config`)."""

    def __init__(self, message: str, expected: str, argument: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.argument = argument


def show(shape: Shape) -> str:
    """A shape as a reader sees it, batch axis included: `(None, 28, 28, 1)`."""
    return "(" + ", ".join(["None", *("None" if d is None else str(d) for d in shape)]) + ")"


def _tuple(value: Any, rank: int) -> tuple[Any, ...]:
    if isinstance(value, list | tuple):
        return tuple(value)
    return (value,) * rank


def _one(shapes: list[Shape]) -> Shape:
    if len(shapes) != 1:
        raise ShapeMismatch(f"the layer takes one input, it was given {len(shapes)}", "one input")
    return shapes[0]


def _rank(shape: Shape, rank: int, what: str) -> Shape:
    if len(shape) != rank:
        raise ShapeMismatch(
            f"the layer needs an input of rank {rank + 1} {what}, received {show(shape)}",
            f"an input of rank {rank + 1} {what}",
        )
    return shape


def _known(dim: int | None, what: str, shape: Shape) -> int:
    if dim is None:
        raise ShapeMismatch(
            f"the {what} of the input must be known, received {show(shape)}",
            f"an input whose {what} is known",
        )
    return dim


def _size(shape: Shape) -> int | None:
    """Values in one row; None while any dimension is unknown."""
    known = [d for d in shape if d is not None]
    return math.prod(known) if len(known) == len(shape) else None


def _split(shape: Shape, cfg: dict[str, Any]) -> tuple[int | None, Shape]:
    """(channels, spatial dims) for channels_last (the default) or channels_first."""
    if cfg.get("data_format") == "channels_first":
        return shape[0], shape[1:]
    return shape[-1], shape[:-1]


def _join(channels: int | None, spatial: Shape, cfg: dict[str, Any]) -> Shape:
    if cfg.get("data_format") == "channels_first":
        return (channels, *spatial)
    return (*spatial, channels)


def _window(length: int | None, size: int, stride: int, dilation: int, padding: str) -> int | None:
    """Length after a convolution or pooling window, as Keras computes it."""
    if length is None:
        return None
    if padding in ("same", "causal"):
        return (length - 1) // stride + 1
    out = (length - dilation * (size - 1) - 1) // stride + 1
    if out <= 0:
        raise ShapeMismatch(
            f"a window of {size} (dilation {dilation}, stride {stride}) does not fit a length of "
            f"{length} with padding 'valid'",
            "a window no larger than the input, or padding 'same'",
        )
    return out


def identity(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    return _one(shapes), 0, 0


def dropout(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    """Dropout's mask (noise_shape, batch axis first) must broadcast to the input, not widen it."""
    shape = _one(shapes)
    mask = cfg.get("noise_shape")
    if mask is not None:
        full = (None, *shape)
        fits = len(mask) == len(full) and all(
            m is None or m == 1 or m == d for m, d in zip(mask, full, strict=True)
        )
        if not fits:
            raise ShapeMismatch(
                f"noise_shape {list(mask)} does not match the input {show(shape)}",
                f"a noise_shape of {len(full)} entries (batch axis first), each null, 1 or the "
                "input's size",
            )
    return shape, 0, 0


def spatial_dropout(rank: int) -> Rule:
    def rule(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
        return _rank(_one(shapes), rank + 1, "(batch, steps..., channels)"), 0, 0

    return rule


def dense(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    shape = _one(shapes)
    if not shape:
        raise ShapeMismatch(
            f"Dense needs an input of rank 2 or more, received {show(shape)}", "(batch, features)"
        )
    features = _known(shape[-1], "last axis", shape)
    units = cfg["units"]
    bias = units if cfg.get("use_bias", True) else 0
    return (*shape[:-1], units), features * units + bias, 0


def flatten(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    return (_size(_one(shapes)),), 0, 0


def reshape(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    shape = _one(shapes)
    target = tuple(cfg["target_shape"])
    known = math.prod(d for d in target if d != -1)
    size = _size(shape)
    if size is None:
        return tuple(None if d == -1 else d for d in target), 0, 0
    if -1 in target:
        if known == 0 or size % known:
            raise ShapeMismatch(
                f"cannot reshape {show(shape)} ({size} values) into {list(target)}",
                f"a target shape whose known sizes divide {size}",
            )
        return tuple(size // known if d == -1 else d for d in target), 0, 0
    if known != size:
        raise ShapeMismatch(
            f"cannot reshape {show(shape)} ({size} values) into {list(target)} ({known} values)",
            f"a target shape of {size} values",
        )
    return target, 0, 0


def permute(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    shape = _one(shapes)
    dims = list(cfg["dims"])
    if sorted(dims) != list(range(1, len(shape) + 1)):
        raise ShapeMismatch(
            f"dims {dims} are not a permutation of the {len(shape)} non-batch axes of "
            f"{show(shape)}",
            f"a permutation of {list(range(1, len(shape) + 1))}",
        )
    return tuple(shape[d - 1] for d in dims), 0, 0


def repeat_vector(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    shape = _rank(_one(shapes), 1, "(batch, features)")
    return (cfg["n"], shape[0]), 0, 0


def _pairs(value: Any, rank: int) -> list[tuple[int, int]]:
    """Keras's padding/cropping forms: int, (a, b) per axis or ((before, after), ...)."""
    if rank == 1:
        value = _tuple(value, 2)
        return [(value[0], value[1])]
    pairs = []
    for item in _tuple(value, rank):
        before, after = _tuple(item, 2)
        pairs.append((before, after))
    return pairs


def padding_or_cropping(rank: int, sign: int, key: str, default: Any) -> Rule:
    def rule(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
        shape = _rank(_one(shapes), rank + 1, "(batch, steps..., channels)")
        channels, spatial = _split(shape, cfg)
        out = []
        for length, (before, after) in zip(
            spatial, _pairs(cfg.get(key, default), rank), strict=False
        ):
            new = None if length is None else length + sign * (before + after)
            if new is not None and new <= 0:
                raise ShapeMismatch(
                    f"cropping {before + after} from a length of {length} leaves nothing",
                    f"cropping of less than {length} in all",
                )
            out.append(new)
        return _join(channels, tuple(out), cfg), 0, 0

    return rule


def up_sampling(rank: int) -> Rule:
    def rule(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
        shape = _rank(_one(shapes), rank + 1, "(batch, steps..., channels)")
        channels, spatial = _split(shape, cfg)
        sizes = _tuple(cfg.get("size", 2), rank)
        out = tuple(None if d is None else d * s for d, s in zip(spatial, sizes, strict=False))
        return _join(channels, out, cfg), 0, 0

    return rule


def _conv_geometry(
    rank: int, cfg: dict[str, Any], shapes: list[Shape]
) -> tuple[int, Shape, tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    shape = _rank(_one(shapes), rank + 1, "(batch, spatial..., channels)")
    channels, spatial = _split(shape, cfg)
    channels = _known(channels, "channels axis", shape)
    kernel = _tuple(cfg["kernel_size"], rank)
    strides = _tuple(cfg.get("strides", 1), rank)
    dilation = _tuple(cfg.get("dilation_rate", 1), rank)
    return channels, spatial, kernel, strides, dilation


def _refuse_strided_dilation(strides: tuple[int, ...], dilation: tuple[int, ...]) -> None:
    """Keras's plain and transposed convolutions refuse both at once (depthwise ones do not)."""
    if max(strides) > 1 and max(dilation) > 1:
        raise ShapeMismatch(
            f"strides {list(strides)} and dilation_rate {list(dilation)} are both above 1, "
            "which Keras does not support",
            "strides of 1 or a dilation_rate of 1",
        )


def conv(rank: int) -> Rule:
    def rule(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
        channels, spatial, kernel, strides, dilation = _conv_geometry(rank, cfg, shapes)
        _refuse_strided_dilation(strides, dilation)
        groups, filters = cfg.get("groups", 1), cfg["filters"]
        if channels % groups or filters % groups:
            raise ShapeMismatch(
                f"{channels} input channels and {filters} filters cannot both be split into "
                f"{groups} groups",
                f"groups dividing the input channels ({channels}) and the filters ({filters})",
            )
        padding = cfg.get("padding", "valid")
        out = tuple(
            _window(*args, padding)
            for args in zip(spatial, kernel, strides, dilation, strict=False)
        )
        weights = math.prod(kernel) * (channels // groups) * filters
        bias = filters if cfg.get("use_bias", True) else 0
        return _join(filters, out, cfg), weights + bias, 0

    return rule


def _transposed_length(
    length: int | None,
    size: int,
    stride: int,
    dilation: int,
    padding: str,
    output_padding: int | None,
) -> int | None:
    if length is None:
        return None
    size = (size - 1) * dilation + 1
    if padding == "valid":
        extra = max(size, stride) - size if output_padding is None else output_padding
        return (length - 1) * stride + size + extra
    if output_padding is None:
        return length * stride
    return (length - 1) * stride + size % 2 + output_padding


def conv_transpose(rank: int) -> Rule:
    def rule(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
        channels, spatial, kernel, strides, dilation = _conv_geometry(rank, cfg, shapes)
        padding = cfg.get("padding", "valid")
        _refuse_strided_dilation(strides, dilation)
        output_padding = cfg.get("output_padding")
        extras = (None,) * rank if output_padding is None else _tuple(output_padding, rank)
        if any(e is not None and e >= s for e, s in zip(extras, strides, strict=False)):
            raise ShapeMismatch(
                f"output_padding {list(extras)} is not below strides {list(strides)}",
                "an output_padding smaller than the strides on every axis",
            )
        out = tuple(
            _transposed_length(length, size, stride, rate, padding, extra)
            for length, size, stride, rate, extra in zip(
                spatial, kernel, strides, dilation, extras, strict=False
            )
        )
        filters = cfg["filters"]
        bias = filters if cfg.get("use_bias", True) else 0
        return _join(filters, out, cfg), math.prod(kernel) * channels * filters + bias, 0

    return rule


def depthwise_conv(separable: bool) -> Rule:
    def rule(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
        channels, spatial, kernel, strides, dilation = _conv_geometry(2, cfg, shapes)
        padding = cfg.get("padding", "valid")
        out = tuple(
            _window(*args, padding)
            for args in zip(spatial, kernel, strides, dilation, strict=False)
        )
        depth = channels * cfg.get("depth_multiplier", 1)
        weights = math.prod(kernel) * depth
        if separable:
            filters = cfg["filters"]
            weights += depth * filters
        else:
            filters = depth
        bias = filters if cfg.get("use_bias", True) else 0
        return _join(filters, out, cfg), weights + bias, 0

    return rule


def pooling(rank: int) -> Rule:
    def rule(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
        shape = _rank(_one(shapes), rank + 1, "(batch, spatial..., channels)")
        channels, spatial = _split(shape, cfg)
        pool = _tuple(cfg.get("pool_size", 2), rank)
        strides = pool if cfg.get("strides") is None else _tuple(cfg["strides"], rank)
        padding = cfg.get("padding", "valid")
        out = tuple(
            _window(d, p, s, 1, padding) for d, p, s in zip(spatial, pool, strides, strict=False)
        )
        return _join(channels, out, cfg), 0, 0

    return rule


def global_pooling(rank: int) -> Rule:
    def rule(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
        shape = _rank(_one(shapes), rank + 1, "(batch, spatial..., channels)")
        channels, _ = _split(shape, cfg)
        if cfg.get("keepdims", False):
            return _join(channels, (1,) * rank, cfg), 0, 0
        return (channels,), 0, 0

    return rule


def _axis_dims(shape: Shape, axes: Any) -> list[int]:
    """The sizes on Keras axes (which count the batch axis as 0), each known."""
    dims, seen = [], set()
    full = len(shape) + 1
    for axis in axes if isinstance(axes, list | tuple) else [axes]:
        if not -full <= axis < full or axis % full == 0 or axis % full in seen:
            raise ShapeMismatch(
                f"axis {axis} is not a feature axis of {show(shape)}, or is named twice",
                f"distinct axes in 1..{full - 1} or -{full - 1}..-1",
            )
        seen.add(axis % full)
        dims.append(_known(shape[axis % full - 1], f"axis {axis}", shape))
    return dims


def batch_normalization(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    shape = _one(shapes)
    (size,) = _axis_dims(shape, cfg.get("axis", -1))
    trainable = size * (int(cfg.get("center", True)) + int(cfg.get("scale", True)))
    return shape, trainable, 2 * size


def layer_normalization(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    shape = _one(shapes)
    size = math.prod(_axis_dims(shape, cfg.get("axis", -1)))
    rms = cfg.get("rms_scaling", False)
    gamma = size if cfg.get("scale", True) or rms else 0
    beta = size if cfg.get("center", True) and not rms else 0
    return shape, gamma + beta, 0


def prelu(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    shape = _one(shapes)
    shared = set(cfg.get("shared_axes") or [])
    if shared - set(range(1, len(shape) + 1)):
        raise ShapeMismatch(
            f"shared_axes {sorted(shared)} name axes that {show(shape)} does not have",
            f"axes from 1 to {len(shape)}",
        )
    sizes = [1 if i in shared else _known(d, f"axis {i}", shape) for i, d in enumerate(shape, 1)]
    return shape, math.prod(sizes), 0


def embedding(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    shape = _one(shapes)
    return (*shape, cfg["output_dim"]), cfg["input_dim"] * cfg["output_dim"], 0


def _recurrent_params(class_name: str, cfg: dict[str, Any], features: int) -> int:
    units = cfg["units"]
    bias = units if cfg.get("use_bias", True) else 0
    if class_name == "LSTM":
        return 4 * (features * units + units * units + bias)
    if class_name == "GRU":
        # reset_after (the default) keeps separate input and recurrent biases.
        if cfg.get("reset_after", True) and cfg.get("use_bias", True):
            bias = 2 * units
        return 3 * (features * units + units * units + bias)
    return features * units + units * units + bias


def _recurrent_input(shapes: list[Shape], cfg: dict[str, Any]) -> tuple[Shape, int]:
    shape = _rank(_one(shapes), 2, "(batch, timesteps, features)")
    if cfg.get("unroll") and shape[0] is None:
        raise ShapeMismatch(
            f"unroll needs a known number of timesteps, received {show(shape)}",
            "a fixed number of timesteps, or unroll: false",
            "unroll",
        )
    return shape, _known(shape[1], "features axis", shape)


def _refuse_state(cfg: dict[str, Any]) -> None:
    if cfg.get("return_state"):
        raise ShapeMismatch(
            "return_state gives several outputs, which a layer in this grammar cannot have",
            "return_state: false",
        )


def recurrent(class_name: str) -> Rule:
    def rule(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
        _refuse_state(cfg)
        shape, features = _recurrent_input(shapes, cfg)
        out = (shape[0], cfg["units"]) if cfg.get("return_sequences") else (cfg["units"],)
        return out, _recurrent_params(class_name, cfg, features), 0

    return rule


def bidirectional(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    forward = cfg["layer"]
    backward = cfg.get("backward_layer") or forward
    if backward is forward and forward["config"].get("go_backwards"):
        # Keras makes the backward half from the layer's own config and then refuses both.
        raise ShapeMismatch(
            "the layer reads backwards and no backward_layer is given",
            "go_backwards false on the layer (Bidirectional adds the backward half)",
        )
    for inner in (forward, backward):
        _refuse_state(inner["config"])
        shape, features = _recurrent_input(shapes, inner["config"])
    params = sum(
        _recurrent_params(inner["class_name"], inner["config"], features)
        for inner in (forward, backward)
    )
    merge = cfg.get("merge_mode", "concat")
    if merge is None:
        raise ShapeMismatch(
            "merge_mode null gives two outputs, which a layer in this grammar cannot have",
            "merge_mode 'concat', 'sum', 'mul' or 'ave'",
        )
    units, back_units = forward["config"]["units"], backward["config"]["units"]
    if merge != "concat" and units != back_units:
        raise ShapeMismatch(
            f"merge_mode {merge!r} combines {units} forward and {back_units} backward units "
            "element-wise",
            "the same units forward and backward, or merge_mode 'concat'",
        )
    if backward is not forward:
        _check_backward_layer(forward["config"], backward["config"])
    if merge == "concat":
        units += back_units
    out = (shape[0], units) if forward["config"].get("return_sequences") else (units,)
    return out, params, 0


def _check_backward_layer(forward: dict[str, Any], backward: dict[str, Any]) -> None:
    """Keras's own rule: opposite directions, the same return_sequences."""
    if bool(forward.get("go_backwards")) == bool(backward.get("go_backwards")):
        raise ShapeMismatch(
            "the forward and backward layers read in the same direction",
            "a backward_layer with go_backwards opposite to the layer's",
        )
    if bool(forward.get("return_sequences")) != bool(backward.get("return_sequences")):
        raise ShapeMismatch(
            "the forward and backward layers disagree on return_sequences",
            "the same return_sequences forward and backward",
        )


def _several(shapes: list[Shape], least: int = 2) -> None:
    if len(shapes) < least:
        raise ShapeMismatch(
            f"a merge layer takes at least {least} inputs, it was given {len(shapes)}",
            f"at least {least} inputs",
        )
    ranks = {len(s) for s in shapes}
    if len(ranks) != 1:
        raise ShapeMismatch(
            "the inputs have different ranks: " + ", ".join(show(s) for s in shapes),
            "inputs of one rank",
        )


def concatenate(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    _several(shapes, least=1)
    rank = len(shapes[0])
    axis = cfg.get("axis", -1)
    if not -rank <= axis <= rank or axis == 0 or axis == -rank - 1:
        raise ShapeMismatch(
            f"axis {axis} is not a feature axis of {show(shapes[0])}",
            f"an axis in 1..{rank} or -{rank}..-1",
        )
    index = axis - 1 if axis > 0 else rank + axis
    out: list[int | None] = list(shapes[0])
    for shape in shapes[1:]:
        for i, (a, b) in enumerate(zip(out, shape, strict=True)):
            if i != index and a is not None and b is not None and a != b:
                raise ShapeMismatch(
                    "cannot concatenate "
                    + " and ".join(show(s) for s in shapes)
                    + f" on axis {axis}: they differ on another axis",
                    f"shapes equal except on axis {axis}",
                )
        a, b = out[index], shape[index]
        out[index] = None if a is None or b is None else a + b
    return tuple(out), 0, 0


def elementwise(least: int, most: int | None = None) -> Rule:
    def rule(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
        _several(shapes, least)
        if most is not None and len(shapes) > most:
            raise ShapeMismatch(
                f"the layer takes exactly {most} inputs, it was given {len(shapes)}",
                f"exactly {most} inputs",
            )
        out: list[int | None] = list(shapes[0])
        for shape in shapes[1:]:
            for i, (a, b) in enumerate(zip(out, shape, strict=True)):
                if a is None or b is None:
                    out[i] = None
                elif a == 1 or b == 1:
                    out[i] = max(a, b)
                elif a != b:
                    raise ShapeMismatch(
                        "inputs of shapes "
                        + " and ".join(show(s) for s in shapes)
                        + " cannot be combined element-wise",
                        "inputs of equal shapes (or 1 where they differ)",
                    )
        return tuple(out), 0, 0

    return rule


def softmax(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    shape = _one(shapes)
    axes = cfg.get("axis", -1)
    rank = len(shape) + 1
    named = [axes] if isinstance(axes, int) else list(axes)
    inside = all(-rank <= axis < rank for axis in named)
    if not inside or len({axis % rank for axis in named}) < len(named):
        raise ShapeMismatch(
            f"axis {axes} names an axis that {show(shape)} does not have, or one axis twice",
            f"distinct axes in -{rank}..{rank - 1}",
        )
    return shape, 0, 0


def _per_feature(value: Any, size: int | None, what: str, argument: str) -> None:
    """A list of values per feature must have one value for each entry of its axis."""
    if isinstance(value, list) and len(value) != 1 and len(value) != size:
        raise ShapeMismatch(
            f"{argument} lists {len(value)} values, and the {what} has {size}",
            f"a number, or a list of {size} values (one per entry of the {what})",
            argument,
        )


def rescaling(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    shape = _one(shapes)
    for argument in ("scale", "offset"):
        _per_feature(cfg.get(argument), shape[-1] if shape else None, "last axis", argument)
    return shape, 0, 0


def normalization(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    """Given statistics are constants, not weights: no parameters."""
    shape = _one(shapes)
    axes = cfg.get("axis", -1)
    dims = [] if axes is None else _axis_dims(shape, axes)
    for argument in ("mean", "variance"):
        value = cfg.get(argument)
        if isinstance(value, list) and len(dims) != 1:
            raise ShapeMismatch(
                f"{argument} is a list, and it can apply only to one axis (axis={axes})",
                "one axis for a list of statistics, or one number for all",
                argument,
            )
        _per_feature(value, dims[0] if dims else None, f"axis {axes}", argument)
    return shape, 0, 0


def augmentation(cfg: dict[str, Any], shapes: list[Shape]) -> Counted:
    """Image augmentations take rows of images: height, width and channels."""
    return _rank(_one(shapes), 3, "(images: batch, height, width, channels)"), 0, 0


RULES: dict[str, Rule] = {
    "InputLayer": identity,
    "Dense": dense,
    "Activation": identity,
    "Dropout": dropout,
    "GaussianNoise": identity,
    "SpatialDropout1D": spatial_dropout(1),
    "SpatialDropout2D": spatial_dropout(2),
    "Flatten": flatten,
    "Reshape": reshape,
    "Permute": permute,
    "RepeatVector": repeat_vector,
    "ZeroPadding1D": padding_or_cropping(1, 1, "padding", 1),
    "ZeroPadding2D": padding_or_cropping(2, 1, "padding", (1, 1)),
    "Cropping1D": padding_or_cropping(1, -1, "cropping", (1, 1)),
    "Cropping2D": padding_or_cropping(2, -1, "cropping", ((0, 0), (0, 0))),
    "UpSampling1D": up_sampling(1),
    "UpSampling2D": up_sampling(2),
    "Conv1D": conv(1),
    "Conv2D": conv(2),
    "Conv3D": conv(3),
    "Conv2DTranspose": conv_transpose(2),
    "SeparableConv2D": depthwise_conv(separable=True),
    "DepthwiseConv2D": depthwise_conv(separable=False),
    "MaxPooling1D": pooling(1),
    "MaxPooling2D": pooling(2),
    "MaxPooling3D": pooling(3),
    "AveragePooling1D": pooling(1),
    "AveragePooling2D": pooling(2),
    "AveragePooling3D": pooling(3),
    "GlobalAveragePooling1D": global_pooling(1),
    "GlobalAveragePooling2D": global_pooling(2),
    "GlobalMaxPooling1D": global_pooling(1),
    "GlobalMaxPooling2D": global_pooling(2),
    "BatchNormalization": batch_normalization,
    "LayerNormalization": layer_normalization,
    "ReLU": identity,
    "LeakyReLU": identity,
    "PReLU": prelu,
    "ELU": identity,
    "Softmax": softmax,
    "Embedding": embedding,
    "LSTM": recurrent("LSTM"),
    "GRU": recurrent("GRU"),
    "SimpleRNN": recurrent("SimpleRNN"),
    "Bidirectional": bidirectional,
    "Concatenate": concatenate,
    "Add": elementwise(2),
    "Multiply": elementwise(2),
    "Average": elementwise(2),
    "Subtract": elementwise(2, 2),
    "Rescaling": rescaling,
    "Normalization": normalization,
    "RandomFlip": augmentation,
    "RandomRotation": augmentation,
    "RandomZoom": augmentation,
    "RandomContrast": augmentation,
}


# The rank of each weight a layer makes, by the prefix of its arguments (`kernel_regularizer`).
WEIGHT_RANKS: dict[str, dict[str, int]] = {
    "Dense": {"kernel": 2, "bias": 1},
    "Conv1D": {"kernel": 3, "bias": 1},
    "Conv2D": {"kernel": 4, "bias": 1},
    "Conv3D": {"kernel": 5, "bias": 1},
    "Conv2DTranspose": {"kernel": 4, "bias": 1},
    "SeparableConv2D": {"depthwise": 4, "pointwise": 4, "bias": 1},
    "DepthwiseConv2D": {"depthwise": 4, "bias": 1},
    "Embedding": {"embeddings": 2},
    "BatchNormalization": {"beta": 1, "gamma": 1},
    "LSTM": {"kernel": 2, "recurrent": 2, "bias": 1},
    "SimpleRNN": {"kernel": 2, "recurrent": 2, "bias": 1},
    "GRU": {"kernel": 2, "recurrent": 2, "bias": 1},
}
ORTHOGONAL = ("orthogonal_regularizer", "OrthogonalRegularizer")


def weight_ranks(class_name: str, cfg: dict[str, Any], shape: Shape) -> dict[str, int]:
    """The rank of each weight of a layer given its config and input shape."""
    if class_name == "LayerNormalization":
        axes = cfg.get("axis", -1)
        size = len(axes) if isinstance(axes, list) else 1
        return {"beta": size, "gamma": size}
    if class_name == "PReLU":
        return {"alpha": len(shape)}
    if class_name == "GRU" and cfg.get("reset_after", True):
        # reset_after keeps the input and recurrent biases as the two rows of one weight.
        return {**WEIGHT_RANKS["GRU"], "bias": 2}
    return WEIGHT_RANKS.get(class_name, {})


def _class_of(value: Any) -> Any:
    return value.get("class_name") if isinstance(value, dict) else value


def check_weight_arguments(class_name: str, cfg: dict[str, Any], shape: Shape, out: Shape) -> None:
    """Arguments that act on a weight or an output must fit its rank: Keras raises only once
    training runs. An orthogonal regularizer needs a matrix; a norm constraint's axes must exist."""
    if _class_of(cfg.get("activity_regularizer")) in ORTHOGONAL and len(out) != 1:
        raise ShapeMismatch(
            f"an orthogonal activity regularizer needs outputs of rank 2, the layer gives "
            f"{show(out)}",
            "an activity regularizer other than orthogonal_regularizer on this layer",
            "activity_regularizer",
        )
    for prefix, rank in weight_ranks(class_name, cfg, shape).items():
        argument = f"{prefix}_regularizer"
        if _class_of(cfg.get(argument)) in ORTHOGONAL and rank != 2:
            raise ShapeMismatch(
                f"orthogonal_regularizer needs a weight of two axes, and {prefix} has {rank}",
                f"l1, l2 or l1_l2 for the {prefix}",
                argument,
            )
        argument = f"{prefix}_constraint"
        constraint = cfg.get(argument)
        axes = (
            (constraint.get("config") or {}).get("axis", 0) if isinstance(constraint, dict) else 0
        )
        named = axes if isinstance(axes, list) else [axes]
        if not all(-rank <= axis < rank for axis in named) or len({a % rank for a in named}) < len(
            named
        ):
            raise ShapeMismatch(
                f"the constraint's axis {axes} is not an axis of the {prefix}, which has {rank}",
                f"distinct axes from {-rank} to {rank - 1}",
                f"{argument}/config/axis",
            )
    for key in ("layer", "backward_layer"):
        inner = cfg.get(key)
        if isinstance(inner, dict):
            try:
                check_weight_arguments(inner["class_name"], inner["config"], shape, out)
            except ShapeMismatch as error:
                error.argument = f"{key}/config/{error.argument}"
                raise


# Layers that only move, repeat or zero-pad values: token ids pass through them unchanged.
VALUE_KEEPING = frozenset(
    {"Reshape", "Flatten", "Permute", "RepeatVector", "Cropping1D", "Cropping2D", "Concatenate"}
)
ZERO_PADDING = frozenset({"ZeroPadding1D", "ZeroPadding2D"})


@dataclasses.dataclass(frozen=True)
class ValueRange:
    """The values a tensor can hold, and the model inputs they come from."""

    low: float
    high: float
    inputs: frozenset[str]


def rescaled_range(
    low: float, high: float, scale: float | list[float], offset: float | list[float]
) -> tuple[float, float]:
    """The range of values in [low, high] once rescaled; per-feature lists give the range
    over every feature."""
    scales = scale if isinstance(scale, list) else [scale]
    offsets = offset if isinstance(offset, list) else [offset]
    ends = [v * s + o for v in (low, high) for s in scales for o in offsets]
    return min(ends), max(ends)


def value_ranges(
    model: dict[str, Any], inputs: Mapping[str, tuple[float, float]]
) -> dict[str, ValueRange]:
    """Each tensor's range of values where a layer passes its inputs' values on: through
    value-keeping layers, zero padding and Rescaling. Tensors a layer computes have none."""
    ranges = {
        name: ValueRange(low, high, frozenset({name})) for name, (low, high) in inputs.items()
    }
    for layer in model["layers"]:
        given = [ranges.get(source) for source in layer["inbound"]]
        if not given or None in given:
            continue
        low = min(r.low for r in given if r is not None)
        high = max(r.high for r in given if r is not None)
        sources = frozenset().union(*(r.inputs for r in given if r is not None))
        class_name, cfg = layer["class_name"], layer["config"]
        if class_name in ZERO_PADDING:
            low, high = min(low, 0.0), max(high, 0.0)
        elif class_name == "Rescaling":
            low, high = rescaled_range(low, high, cfg["scale"], cfg.get("offset", 0.0))
        elif class_name not in VALUE_KEEPING:
            continue
        ranges[layer["name"]] = ValueRange(low, high, sources)
    return ranges


def _reads_ids(model: dict[str, Any]) -> set[str]:
    """Tensors whose values are a model input's, through layers that keep or rescale them."""
    names = {given["name"] for given in model["inputs"]}
    passing = VALUE_KEEPING | ZERO_PADDING | {"Rescaling"}
    for layer in model["layers"]:
        if layer["class_name"] in passing and all(s in names for s in layer["inbound"]):
            names.add(layer["name"])
    return names


# Layers whose output keeps the padding mask of their input (Keras's `compute_mask`), measured
# on the pinned Keras; the others (reshaping, convolution, pooling) drop it.
MASK_KEEPING = frozenset(
    {
        "InputLayer", "Dense", "Activation", "Dropout", "GaussianNoise", "SpatialDropout1D",
        "SpatialDropout2D", "BatchNormalization", "LayerNormalization", "ReLU", "LeakyReLU",
        "PReLU", "ELU", "Rescaling", "Softmax", "Concatenate",
    }
)  # fmt: skip
RECURRENT = frozenset({"LSTM", "GRU", "SimpleRNN"})


def _masked(model: dict[str, Any]) -> set[str]:
    """Tensors carrying the padding mask of an Embedding with `mask_zero`."""
    names: set[str] = set()
    for layer in model["layers"]:
        class_name, cfg, sources = layer["class_name"], layer["config"], layer["inbound"]
        inner = cfg["layer"]["config"] if class_name == "Bidirectional" else cfg
        if class_name == "Embedding":
            keeps = bool(cfg.get("mask_zero"))
        elif class_name in MASK_KEEPING:
            keeps = any(source in names for source in sources)
        elif class_name in ("Add", "Multiply", "Average", "Subtract"):
            keeps = all(source in names for source in sources)
        elif class_name in RECURRENT or class_name == "Bidirectional":
            keeps = sources[0] in names and bool(inner.get("return_sequences"))
        else:
            keeps = False
        if keeps:
            names.add(layer["name"])
    return names


def infer_model(
    model: dict[str, Any], settings: Settings, *, paths: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Walk the normalized model in order: each layer's output shape and parameters, then the cap.

    `paths` maps layer names to JSON pointers into the request (default `/model/layers/<i>`).
    Raises InvalidRequest with every shape mismatch found, or with the total over
    `settings.max_params`; returns the summary otherwise.
    """
    summary = summarize_model(model, paths=paths)
    total, cap = summary["total_params"], settings.max_params
    if total > cap:
        raise InvalidRequest(
            f"The model has {total:,} parameters, over the cap of {cap:,}.",
            errors=[
                FieldError(
                    "/model",
                    f"the model has {total:,} parameters, more than the cap of {cap:,}",
                    f"at most {cap:,} parameters",
                    # JSON numbers past 64 bits break clients (and orjson refuses them).
                    total if total < 2**63 else f"{total:.3e}",
                )
            ],
        )
    return summary


def summarize_model(
    model: dict[str, Any], *, paths: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The summary of a normalized model without the cap; InvalidRequest on shape mismatches."""
    shapes: dict[str, Shape | None] = {}
    rows, errors = [], []
    for given in model["inputs"]:
        shape = tuple(given["shape"])
        try:
            shapes[given["name"]] = _bounded(shape)
        except ShapeMismatch as error:
            shapes[given["name"]] = None
            path = (paths or {}).get(given["name"], "/model")
            errors.append(
                FieldError(
                    path,
                    f"input {given['name']!r}: {error.message}",
                    error.expected,
                    f"input shape {show(shape)}",
                )
            )
    trainable = non_trainable = 0
    id_tensors, masked = _reads_ids(model), _masked(model)
    for index, layer in enumerate(model["layers"]):
        name, class_name = layer["name"], layer["class_name"]
        given = [shapes.get(source) for source in layer["inbound"]]
        shapes[name] = None
        if any(shape is None for shape in given):
            continue  # an earlier layer's mismatch is already reported
        try:
            if class_name == "Embedding" and layer["inbound"][0] not in id_tensors:
                raise ShapeMismatch(
                    f"Embedding reads token ids, and {layer['inbound'][0]!r} computes its values",
                    "an Embedding reading a model input, through Reshape, Flatten, Permute, "
                    "RepeatVector, Cropping, ZeroPadding, Rescaling or Concatenate only",
                )
            if class_name == "Softmax" and layer["inbound"][0] in masked:
                # Keras's Softmax applies a mask to its input, and this one, made per step of
                # the sequence, has one axis fewer: the call fails.
                raise ShapeMismatch(
                    "the layer receives the padding mask of an Embedding with mask_zero, "
                    "which has one axis fewer than its input, and Softmax cannot apply it",
                    "Activation('softmax') here, or mask_zero false",
                )
            out, train, frozen = RULES[class_name](layer["config"], given)
            check_weight_arguments(class_name, layer["config"], given[0], out)
            _bounded(out)
        except ShapeMismatch as error:
            path = (paths or {}).get(name, f"/model/layers/{index}")
            if error.argument:
                path = f"{path}/config/{error.argument}"
            received = ", ".join(show(shape) for shape in given)
            errors.append(
                FieldError(
                    path,
                    f"layer '{name}' ({class_name}): {error.message}",
                    error.expected,
                    f"input shape {received}",
                )
            )
            continue
        if layer["config"].get("trainable") is False:
            train, frozen = 0, train + frozen
        shapes[name] = out
        trainable += train
        non_trainable += frozen
        rows.append(_row(name, class_name, out, train + frozen))
    if errors:
        raise InvalidRequest(
            f"{len(errors)} layer(s) cannot take the shapes they are given.", errors=errors
        )
    return {
        "layers": rows,
        "total_params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "inputs": [
            {"name": i["name"], "shape": _batched(tuple(i["shape"])), "dtype": i["dtype"]}
            for i in model["inputs"]
        ],
        "outputs": [{"name": o, "shape": _batched(shapes[o])} for o in model["outputs"]],
    }


def _bounded(shape: Shape) -> Shape:
    """The shape, if one row of it holds at most MAX_ROW_VALUES values."""
    size = math.prod(d for d in shape if d is not None)
    if size > MAX_ROW_VALUES:
        raise ShapeMismatch(
            f"one row of shape {show(shape)} would hold {size:.3e} values, over the limit of "
            f"{MAX_ROW_VALUES:,}",
            f"at most {MAX_ROW_VALUES:,} values per row",
        )
    return shape


def _batched(shape: Shape | None) -> list[int | None]:
    return [None, *(shape or ())]


def _row(name: str, class_name: str, shape: Shape, params: int) -> dict[str, Any]:
    return {
        "name": name,
        "class_name": class_name,
        "output_shape": _batched(shape),
        "params": params,
    }


def model_with_preprocessing(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's model with `data.preprocess.x` as named layers right after each input.

    An input with a reshape takes the raw shape of its array (`raw_shape`), so the built model
    and its exports take raw data; the first layers are rewired to read the last added layer.
    """
    model = spec["model"]
    preprocess = spec.get("data", {}).get("preprocess", {}).get("x", {})
    inputs, front, rename = [], [], {}
    taken = {layer["name"] for layer in model["layers"]} | {i["name"] for i in model["inputs"]}
    for given in model["inputs"]:
        name, steps = given["name"], preprocess.get(given["name"])
        source, shape = name, given["shape"]
        for config, suffix in _preprocess_layers(steps or {}):
            layer_name = _free_name(f"{name}_{suffix}", taken)
            front.append(
                {
                    "name": layer_name,
                    "class_name": suffix.title(),
                    "config": config,
                    "inbound": [source],
                }
            )
            source = layer_name
        if steps and steps.get("reshape") is not None:
            shape = steps["raw_shape"]
        inputs.append({**given, "shape": list(shape)})
        rename[name] = source
    layers = [
        {**layer, "inbound": [rename.get(source, source) for source in layer["inbound"]]}
        for layer in model["layers"]
    ]
    outputs = [rename.get(name, name) for name in model["outputs"]]
    return {"inputs": inputs, "layers": front + layers, "outputs": outputs}


def _preprocess_layers(steps: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    out = []
    if steps.get("scale") is not None or steps.get("offset") is not None:
        scale = 1.0 if steps.get("scale") is None else steps["scale"]
        out.append(({"scale": scale, "offset": steps.get("offset") or 0.0}, "rescaling"))
    if steps.get("normalize"):
        # The worker fills in the training data's statistics before it builds the model; until
        # then (validation, shape inference) the layer is the identity.
        statistics = {"mean": steps.get("mean", 0.0), "variance": steps.get("variance", 1.0)}
        out.append(({"axis": -1, **statistics}, "normalization"))
    if steps.get("reshape") is not None:
        out.append(({"target_shape": list(steps["reshape"])}, "reshape"))
    return out


def _free_name(name: str, taken: set[str]) -> str:
    candidate, n = name, 0
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def summarize(spec: dict[str, Any]) -> dict[str, Any]:
    """The summary of a normalized spec's model as built: preprocessing layers included."""
    return summarize_model(model_with_preprocessing(spec))
