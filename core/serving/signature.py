"""What a servable takes and gives: its tensors, the id ranges its layers need, a checked batch.

The request parsers (`tfserving`, `oip`) turn a body into a `Batch` against a model's
`TensorInfo`s; the loaded model checks the values its layers need (`IdRange`) before a pass, so a
bad id is a 422 at the row that holds it, on every device (a GPU gathers out-of-range ids as
zeros without a word).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from core.errors import FieldError, InvalidRequest


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """A model input or output: its name, its shape without the batch axis, its dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def batch_shape(self) -> list[int]:
        """The shape as TF Serving and OIP metadata write it: -1 for the batch and unknown dims."""
        return [-1, *(-1 if dim is None else dim for dim in self.shape)]


def tensor_infos(model: Any) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """A Keras model's inputs and outputs, named as the model names them."""
    inputs = tuple(TensorInfo(t.name, tuple(t.shape[1:]), str(t.dtype)) for t in model.inputs)
    names = getattr(model, "output_names", None) or [model.layers[-1].name]
    outputs = tuple(
        TensorInfo(name, tuple(t.shape[1:]), str(t.dtype))
        for name, t in zip(names, model.outputs, strict=True)
    )
    return inputs, outputs


@dataclasses.dataclass(frozen=True)
class Batch:
    """Checked arrays in model input order, and where each input's rows sit in the request.

    `locate(input_index, row)` is the JSON pointer of that row (of the whole input with `row`
    None), so an error found after parsing still points into the request.
    """

    arrays: list[np.ndarray]
    locate: Callable[[int, int | None], str]


@dataclasses.dataclass(frozen=True)
class IdRange:
    """The ids an Embedding layer receives: in [0, size), from model input `source`.

    `direct`: the layer reads the input itself, with no layer in front of it (a Rescaling, a
    preprocessing step) changing the values.
    """

    layer: str
    size: int
    source: int
    direct: bool

    def check(self, ids: np.ndarray, batch: Batch, name: str) -> None:
        """Refuse ids outside [0, size), seen as the layer sees them: a float id is cast to an
        integer (truncated toward zero), so NaN and Inf are refused too."""
        if ids.dtype.kind == "f":
            valid = np.isfinite(ids) & (ids > -1) & (ids < self.size)
        else:
            valid = (ids >= 0) & (ids < self.size)
        if valid.all():
            return
        rows = valid.reshape(len(valid), -1).all(axis=1)
        row = int(np.argmin(rows))
        value = ids.reshape(-1)[np.argmin(valid.reshape(-1))].item()
        computed = "" if self.direct else ", computed by the layers in front of it,"
        message = (
            f"Row {row} of input {name!r} gives layer {self.layer!r} (Embedding){computed} "
            f"the id {value}; it takes ids in [0, {self.size})."
        )
        path = batch.locate(self.source, row)
        expected = f"ids in [0, {self.size}) at layer {self.layer!r}"
        raise InvalidRequest(message, errors=[FieldError(path, message, expected, value)])


def id_ranges(model: Any) -> tuple[list[IdRange], Any | None]:
    """The id ranges of a model's Embedding layers, and a Keras model computing the ids each
    receives from the model's inputs (None without Embedding layers)."""
    import keras

    embeddings = [layer for layer in model.layers if isinstance(layer, keras.layers.Embedding)]
    if not embeddings:
        return [], None
    names = [tensor.name for tensor in model.inputs]
    ranges = []
    for layer in embeddings:
        sources = _source_inputs(layer.input)
        ranges.append(
            IdRange(
                layer.name,
                int(layer.input_dim),
                min(names.index(name) for name in sources),
                layer.input.name in names,
            )
        )
    probe = keras.Model(list(model.inputs), [layer.input for layer in embeddings])
    return ranges, probe


def _source_inputs(tensor: Any) -> set[str]:
    """The names of the model inputs a symbolic tensor is computed from."""
    found, stack = set(), [tensor]
    while stack:
        current = stack.pop()
        operation, node_index, _ = current._keras_history
        parents = operation._inbound_nodes[node_index].input_tensors
        if parents:
            stack.extend(parents)
        else:
            found.add(current.name)
    return found
