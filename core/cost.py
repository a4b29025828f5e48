"""What a job will cost a worker, estimated from the normalized request before it is queued.

Per layer: values per row (what the forward pass keeps for the backward pass, and as much again
for gradients), parameters with their gradients and optimizer slots, and floating-point
operations per row, and per step for the optimizer's update; then the data the worker holds
(a few batches of each array as it streams, one-hot targets) and the graph that unrolled
recurrent layers make. A job over the worker's budget (`worker_memory_bytes`,
`max_flops_per_epoch`) is refused with the part that costs most, so it never reaches a worker it
would take down. Pure Python over the shapes of core.grammar.shapes: nothing is built.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from core.batches import BATCHES_HELD
from core.errors import FieldError
from core.grammar.shapes import Shape, model_with_preprocessing, summarize_model
from core.settings import Settings

# Unrolling copies a recurrent layer's step into the graph once per timestep: past this many
# copies the graph takes longer to build and more memory than any job is worth.
MAX_UNROLLED_STEPS = 1024
FLOAT_BYTES = 4
# The forward pass keeps every layer's output for the backward pass, which makes a gradient of
# the same size: two values per activation.
ACTIVATION_COPIES = 2
# A forward pass costs one unit, its backward pass about two (gradients of inputs and weights).
TRAINING_PASSES = 3
CONV_LIKE = frozenset({"Dense", "Conv1D", "Conv2D", "Conv3D", "SeparableConv2D", "DepthwiseConv2D"})
RECURRENT_GATES = {"LSTM": 5, "GRU": 3, "SimpleRNN": 1}
POOLING = frozenset(
    {
        "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
        "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    }
)  # fmt: skip
# Each step's update reads and writes every trainable parameter, its gradient and its slots:
# about ten elementwise operations per parameter (Adam's), whatever the batch.
OPTIMIZER_OPS_PER_PARAMETER = 10
# Optimizer state per trainable parameter (Keras's slot variables).
OPTIMIZER_SLOTS = {
    "SGD": 0, "RMSprop": 1, "Adam": 2, "AdamW": 2, "Adadelta": 2, "Adagrad": 1, "Adamax": 2,
    "Adafactor": 1, "Nadam": 2, "Ftrl": 2, "Lion": 1, "Lamb": 2, "Muon": 2,
}  # fmt: skip

ManifestOf = Callable[[str], dict]


@dataclasses.dataclass
class LayerCost:
    """One layer's share: values per row it keeps, parameters, FLOPs per row, unrolled steps."""

    name: str
    class_name: str
    values_per_row: int
    params: int
    flops_per_row: int
    unrolled_steps: int = 0
    # Timesteps run one after another (each direction of a Bidirectional layer counts).
    recurrent_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def estimate_cost(
    spec: dict[str, Any], settings: Settings, manifest_of: ManifestOf
) -> dict[str, Any]:
    """The estimate of a parsed request; `:validate` answers it under `cost`."""
    model = _model_with_row_shapes(spec, manifest_of)
    summary = summarize_model(model)
    shapes = _tensor_shapes(summary)
    params = {row["name"]: row["params"] for row in summary["layers"]}
    layers = [_layer_cost(layer, params[layer["name"]], shapes) for layer in model["layers"]]
    rows = _rows(spec, manifest_of)
    batch = max(1, min(spec["fit"]["batch_size"], rows["train"] or 1))
    value_bytes = 2 if spec["resources"].get("mixed_precision") else FLOAT_BYTES
    input_values = sum(_values(shape_of(i["shape"])) for i in summary["inputs"])
    values_per_row = input_values + sum(layer.values_per_row for layer in layers)
    trainable = summary["trainable_params"]
    slots = _optimizer_slots(spec["compile"]["optimizer"])
    data = _data_bytes(spec, manifest_of, batch)
    memory = {
        "weights": summary["total_params"] * FLOAT_BYTES,
        "gradients": trainable * FLOAT_BYTES,
        "optimizer": trainable * slots * FLOAT_BYTES,
        "activations": batch * values_per_row * value_bytes * ACTIVATION_COPIES,
        "data": sum(data.values()),
    }
    flops_per_row = sum(layer.flops_per_row for layer in layers)
    train_rows = rows["train"]
    if spec["fit"].get("steps_per_epoch"):
        train_rows = min(train_rows, spec["fit"]["steps_per_epoch"] * batch)
    return {
        "memory_bytes": sum(memory.values()),
        "memory": memory,
        "data": data,
        "batch_size": batch,
        "values_per_row": values_per_row,
        "flops_per_row": flops_per_row,
        "optimizer_flops_per_step": trainable * OPTIMIZER_OPS_PER_PARAMETER,
        "flops_per_epoch": TRAINING_PASSES * flops_per_row * train_rows
        + math.ceil(train_rows / batch) * trainable * OPTIMIZER_OPS_PER_PARAMETER
        + flops_per_row * rows["validation"],
        "recurrent_steps": sum(layer.recurrent_steps for layer in layers),
        "unrolled_steps": sum(layer.unrolled_steps for layer in layers),
        "budget": {
            "memory_bytes": settings.worker_memory_bytes,
            "flops_per_epoch": settings.max_flops_per_epoch,
            "unrolled_steps": MAX_UNROLLED_STEPS,
        },
        "layers": [layer.to_dict() for layer in layers],
    }


def cost_errors(cost: dict[str, Any], paths: Mapping[str, str]) -> list[FieldError]:
    """Why an estimate is over the worker's budget, each error at the part that costs most;
    `paths` maps layer names to their pointers in the request."""
    budget, errors = cost["budget"], []
    layers = [layer for layer in cost["layers"] if layer["name"] in paths]

    def path_of(layer: dict[str, Any] | None) -> str:
        return paths[layer["name"]] if layer else "/model"

    if cost["unrolled_steps"] > budget["unrolled_steps"]:
        worst = max(layers, key=lambda layer: layer["unrolled_steps"], default=None)
        errors.append(
            FieldError(
                f"{path_of(worst)}/config/unroll" if worst else "/model",
                f"Unrolled recurrent layers copy their step {cost['unrolled_steps']:,} times into "
                f"the graph{_naming(worst)}, over the cap of {budget['unrolled_steps']:,}.",
                f"at most {budget['unrolled_steps']:,} unrolled timesteps, or unroll: false",
                cost["unrolled_steps"],
            )
        )
    if cost["memory_bytes"] > budget["memory_bytes"]:
        errors.append(_memory_error(cost, layers, path_of))
    if cost["flops_per_epoch"] > budget["flops_per_epoch"]:
        worst = max(layers, key=lambda layer: layer["flops_per_row"], default=None)
        errors.append(
            FieldError(
                path_of(worst),
                f"An epoch takes about {cost['flops_per_epoch']:.3g} floating-point operations "
                f"({cost['flops_per_row']:.3g} per row){_naming(worst, 'flops_per_row')}, over "
                f"the worker's budget of {budget['flops_per_epoch']:.3g} per epoch "
                "(FITSERVE_MAX_FLOPS_PER_EPOCH).",
                f"at most {budget['flops_per_epoch']:.3g} operations per epoch",
                f"{cost['flops_per_epoch']:.3g}",
            )
        )
    return errors


def _memory_error(
    cost: dict[str, Any], layers: list[dict[str, Any]], path_of: Callable[[Any], str]
) -> FieldError:
    """The memory refusal, located at the largest part: a layer's activations, the weights
    and their optimizer state, or an array the worker holds."""
    memory, batch = cost["memory"], cost["batch_size"]
    parts = {"/fit/batch_size": memory["activations"], "/model": 0, **cost["data"]}
    parts["/model"] = memory["weights"] + memory["gradients"] + memory["optimizer"]
    where = max(parts, key=lambda key: parts[key])
    detail = f"{_bytes(parts[where])} at {where}"
    if where == "/fit/batch_size":
        worst = max(layers, key=lambda layer: layer["values_per_row"], default=None)
        if worst is not None:
            where = path_of(worst)
            detail = (
                f"layer {worst['name']!r} ({worst['class_name']}) keeps "
                f"{worst['values_per_row']:,} values per row, {_bytes(memory['activations'])} "
                f"of activations for a batch of {batch}"
            )
    elif where == "/model":
        detail = f"the weights, their gradients and optimizer state take {_bytes(parts[where])}"
    else:
        detail = f"{where} takes {_bytes(parts[where])} on the worker"
    return FieldError(
        where,
        f"The job needs about {_bytes(cost['memory_bytes'])} on a worker, over its budget of "
        f"{_bytes(cost['budget']['memory_bytes'])} (FITSERVE_WORKER_MEMORY_BYTES): {detail}.",
        f"at most {_bytes(cost['budget']['memory_bytes'])} in all",
        cost["memory_bytes"],
    )


def _naming(layer: dict[str, Any] | None, key: str = "unrolled_steps") -> str:
    if layer is None:
        return ""
    return f", {layer[key]:,} of them in layer {layer['name']!r} ({layer['class_name']})"


def _bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def shape_of(batched: list[int | None]) -> Shape:
    return tuple(batched[1:])


def _values(shape: Shape) -> int:
    """Values in one row; an axis still unknown counts as 1."""
    return math.prod(d or 1 for d in shape)


def _model_with_row_shapes(spec: dict[str, Any], manifest_of: ManifestOf) -> dict[str, Any]:
    """The model as built (preprocessing in front), its variable axes the training arrays' sizes."""
    model = model_with_preprocessing(spec)
    arrays = manifest_of(spec["data"]["dataset"])["arrays"]
    inputs = []
    for given in model["inputs"]:
        shape = given["shape"]
        rows = arrays[spec["data"]["x"][given["name"]]]["shape"][1:]
        if None in shape and len(rows) == len(shape):
            shape = [d if d is not None else r for d, r in zip(shape, rows, strict=True)]
        inputs.append({**given, "shape": shape})
    return {**model, "inputs": inputs}


def _tensor_shapes(summary: dict[str, Any]) -> dict[str, Shape]:
    shapes = {i["name"]: shape_of(i["shape"]) for i in summary["inputs"]}
    shapes.update({row["name"]: shape_of(row["output_shape"]) for row in summary["layers"]})
    return shapes


def _layer_cost(layer: dict[str, Any], params: int, shapes: dict[str, Shape]) -> LayerCost:
    out = shapes[layer["name"]]
    given = [shapes[source] for source in layer["inbound"]]
    class_name, cfg = layer["class_name"], layer["config"]
    values, flops, unrolled = _values(out), _values(out) + sum(map(_values, given)), 0
    if class_name in CONV_LIKE:
        channels = out[0] if cfg.get("data_format") == "channels_first" else out[-1]
        flops = 2 * params * (values // max(1, channels or 1))
    elif class_name == "Conv2DTranspose":
        channels = given[0][0] if cfg.get("data_format") == "channels_first" else given[0][-1]
        flops = 2 * params * (_values(given[0]) // max(1, channels or 1))
    elif class_name in POOLING:
        flops = values * math.prod(_sizes(cfg.get("pool_size", 2), len(out) - 1))
    elif class_name in RECURRENT_GATES or class_name == "Bidirectional":
        steps = given[0][0] or 1
        cells = [layer] if class_name in RECURRENT_GATES else _directions(cfg)
        flops = 2 * params * steps
        # Each step keeps its gates and state for the backward pass.
        values += sum(
            steps * RECURRENT_GATES[cell["class_name"]] * cell["config"]["units"] for cell in cells
        )
        unrolled = sum(steps for cell in cells if cell["config"].get("unroll"))
        return LayerCost(
            layer["name"], class_name, values, params, flops, unrolled, steps * len(cells)
        )
    return LayerCost(layer["name"], class_name, values, params, flops)


def _directions(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """A Bidirectional layer's forward and backward layers."""
    return [cfg["layer"], cfg.get("backward_layer") or cfg["layer"]]


def _sizes(value: Any, rank: int) -> list[int]:
    return list(value) if isinstance(value, list) else [value] * rank


def _optimizer_slots(optimizer: dict[str, Any]) -> int:
    config = optimizer.get("config") or {}
    name = optimizer["class_name"]
    slots = OPTIMIZER_SLOTS.get(name, 2)
    if name == "SGD":
        slots = 1 if config.get("momentum") else 0
    if name == "RMSprop":
        slots += int(bool(config.get("momentum"))) + int(bool(config.get("centered")))
    if name in ("Adam", "AdamW") and config.get("amsgrad"):
        slots += 1
    return slots + int(bool(config.get("use_ema")))


def _rows(spec: dict[str, Any], manifest_of: ManifestOf) -> dict[str, int]:
    """Rows the worker trains and validates on per epoch (Keras's own validation_split)."""
    data = spec["data"]
    total = _array_rows(data, manifest_of)
    validation = 0
    if data.get("validation"):
        validation = _array_rows(data["validation"], manifest_of)
    elif spec["fit"].get("validation_split"):
        validation = total - math.floor(total * (1.0 - spec["fit"]["validation_split"]))
    return {
        "train": total - (0 if data.get("validation") else validation),
        "validation": validation,
    }


def _array_rows(part: dict[str, Any], manifest_of: ManifestOf) -> int:
    arrays = manifest_of(part["dataset"])["arrays"]
    first = next(iter(part["x"].values()))
    return arrays[first]["shape"][0]


def _data_bytes(spec: dict[str, Any], manifest_of: ManifestOf, batch: int) -> dict[str, int]:
    """What the worker holds of the data, by the request's pointer.

    Arrays stream from disk a batch at a time (core.batches): the worker holds BATCHES_HELD
    batches of each array (of the validation batch size for validation and test data), each
    as read and as the float32 tensor Keras makes of it; one-hot targets are made per batch as
    float32. Nothing grows with the dataset's rows.
    """
    data = spec["data"]
    one_hot = data.get("one_hot") or {}
    checked = spec["fit"].get("validation_batch_size") or batch
    out: dict[str, int] = {}
    for part in ("", "validation", "test"):
        source = data if not part else data.get(part)
        if not source:
            continue
        prefix = f"/data/{part}" if part else "/data"
        arrays = manifest_of(source["dataset"])["arrays"]
        named = [("x", n, a) for n, a in source["x"].items()]
        named += [("y", n, a) for n, a in source["y"].items()]
        if not part and data.get("sample_weight"):
            named.append(("sample_weight", "", data["sample_weight"]))
        for key, output, array in named:
            entry = arrays[array]
            rows = min(entry["shape"][0], BATCHES_HELD * (checked if part else batch))
            if key == "y" and output in one_hot:
                where, size = "/data/preprocess/y/one_hot", rows * one_hot[output] * FLOAT_BYTES
            else:
                row_values = math.prod(entry["shape"][1:])
                where = f"{prefix}/{key}"
                size = rows * row_values * _held_bytes(np.dtype(entry["dtype"]))
            out[where] = out.get(where, 0) + size
    return out


def _held_bytes(dtype: np.dtype) -> int:
    """Bytes held per value of a batch: as read, and as the tensor Keras makes of it."""
    return dtype.itemsize + max(dtype.itemsize, FLOAT_BYTES)
