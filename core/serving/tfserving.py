"""Request bodies to checked arrays and outputs back, in TF Serving's REST dialect.

Everything a client sends is checked in numpy before TensorFlow sees it: rows must be numbers,
not ragged, of the input's shape, finite once converted to the input's dtype. Each problem is a
FieldError whose path is a JSON pointer into the request (`/instances/3`, `/inputs/image/0`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core.errors import FieldError, InvalidRequest, PayloadTooLarge, pointer, preview
from core.serving.signature import Batch, TensorInfo

NUMBERS = frozenset({int, float})
# Deeper than any tensor numpy can build (64 dimensions): nothing a model takes.
MAX_NESTING = 64


def invalid(path: str, message: str, expected: str, received: Any) -> InvalidRequest:
    """A 422 with one FieldError, its message also the detail; `received` is previewed."""
    return InvalidRequest(message, errors=[FieldError(path, message, expected, preview(received))])


class NotNumbers(Exception):
    """Nested lists that are not uniformly nested lists of numbers; `value` is the culprit."""

    def __init__(self, value: Any) -> None:
        super().__init__("not nested lists of numbers")
        self.value = value


def nesting_depth(value: Any, leaves: frozenset[type] = NUMBERS) -> int:
    """How many levels of lists hold `value`'s numbers (0 for a number itself).

    The scan runs level by level at C speed (`set(map(type, ...))`), so a string, an object or
    a list where a number belongs is found before numpy sizes an array for it (a long string in
    a batch would make numpy allocate rows x columns x its length). NotNumbers otherwise.
    """
    level, depth = [value], 0
    while level:
        kinds = set(map(type, level))
        if kinds <= leaves:
            return depth
        if kinds != {list} or depth == MAX_NESTING:
            raise NotNumbers(_first_misfit(level, leaves))
        level = list(itertools.chain.from_iterable(level))
        depth += 1
    return depth  # empty lists all the way: numpy sees an empty array


def _first_misfit(level: list, leaves: frozenset[type]) -> Any:
    """The first item of a level that is neither a list nor a number; else the first item
    whose kind (list or number) differs from the first item's."""
    for item in level:
        if type(item) is not list and type(item) not in leaves:
            return item
    first_is_list = type(level[0]) is list
    return next((item for item in level if (type(item) is list) != first_is_list), level[0])


def fits(shape: Sequence[int], info: TensorInfo) -> bool:
    """Whether a batch of this shape fits the input (unknown dims take any size)."""
    return len(shape) == len(info.shape) + 1 and all(
        want is None or want == got for want, got in zip(info.shape, shape[1:], strict=False)
    )


def _row_error(
    rows: list, info: TensorInfo, path: str, row_path: Callable[[int], str]
) -> FieldError:
    """Find the first bad row of a batch that did not convert or fit, to point at it."""
    row_shape = list(info.batch_shape()[1:])
    expected = f"rows of shape {row_shape} (-1: any size) of numbers"
    for index, row in enumerate(rows):
        try:
            depth = nesting_depth(row)
        except NotNumbers as error:
            if type(error.value) is list or type(error.value) in NUMBERS:  # nesting, not kind
                return FieldError(
                    row_path(index),
                    f"Row {index} of input {info.name!r} is not nested as rows of shape "
                    f"{row_shape} are.",
                    expected,
                    preview(error.value),
                )
            return FieldError(
                row_path(index),
                f"Row {index} of input {info.name!r} holds a value that is not a number.",
                expected,
                preview(error.value),
            )
        try:
            array = np.asarray(row)
        except ValueError:
            return FieldError(
                row_path(index),
                f"Row {index} of input {info.name!r} is ragged: nested lists of one level "
                "must all have the same length.",
                expected,
                preview(row),
            )
        if depth != len(info.shape) or not fits((1, *array.shape), info):
            return FieldError(
                row_path(index),
                f"Row {index} of input {info.name!r} has shape {list(array.shape)}; "
                f"expected {row_shape}.",
                expected,
                list(array.shape),
            )
    return FieldError(
        path,
        f"The rows of input {info.name!r} have different shapes.",
        expected,
        f"{len(rows)} rows of different shapes",
    )


def cast_array(array: np.ndarray, info: TensorInfo, path: str) -> np.ndarray:
    """`array` converted to the input's dtype, refusing values that would not survive it."""
    target = np.dtype(info.dtype)
    if target.kind == "f":
        with np.errstate(over="ignore"):  # overflow to Inf is reported below
            converted = array.astype(target)
        finite = np.isfinite(converted)
        if not finite.all():
            bad = array.reshape(-1)[np.argmin(finite.reshape(-1))].item()
            raise invalid(
                path,
                f"Input {info.name!r} has {int((~finite).sum())} values that are NaN or Inf "
                f"as {target.name} (beyond ±{float(np.finfo(target).max):.3g}).",
                f"finite numbers within the range of {target.name}",
                preview(bad),
            )
        return converted
    if target.kind in "iu":
        flat = array.reshape(-1)
        limits = np.iinfo(target)
        if array.dtype.kind == "f":
            whole = np.isfinite(flat) & (np.floor(flat) == flat)
            if not whole.all():
                raise invalid(
                    path,
                    f"Input {info.name!r} takes integers ({target.name}).",
                    f"integers ({target.name})",
                    preview(flat[np.argmin(whole)].item()),
                )
        if flat.size and (flat.min() < limits.min or flat.max() > limits.max):
            raise invalid(
                path,
                f"Input {info.name!r} has values outside the range of {target.name}.",
                f"integers in [{limits.min}, {limits.max}]",
                preview((flat.min() if flat.min() < limits.min else flat.max()).item()),
            )
    return array.astype(target)


def check_batch(
    rows: Any, info: TensorInfo, path: str, row_path: Callable[[int], str], max_rows: int
) -> np.ndarray:
    """Rows for input `info` as an array of its dtype, or a 422/413 pointing at the fault."""
    if not isinstance(rows, list) or not rows:
        raise invalid(
            path,
            f"Input {info.name!r} needs a non-empty list of rows.",
            f"a list of rows of shape {info.batch_shape()[1:]}",
            preview(rows),
        )
    if len(rows) > max_rows:
        raise PayloadTooLarge(f"A request may carry at most {max_rows} rows; got {len(rows)}.")
    try:
        nesting_depth(rows)
        array = np.asarray(rows)
    except (NotNumbers, ValueError):
        array = None
    if array is None or not fits(array.shape, info):
        error = _row_error(rows, info, path, row_path)
        raise InvalidRequest(error.message, errors=[error])
    return cast_array(array, info, path)


def _named_rows(instances: list, inputs: Sequence[TensorInfo]) -> dict[str, list]:
    names = [info.name for info in inputs]
    columns: dict[str, list] = {name: [] for name in names}
    for index, row in enumerate(instances):
        if not isinstance(row, dict):
            raise invalid(
                pointer("instances", index),
                "Instances are all objects keyed by input name, or all plain rows.",
                f"an object with keys {names}",
                preview(row),
            )
        unknown = sorted(set(row) - set(names))
        missing = [name for name in names if name not in row]
        if unknown or missing:
            raise invalid(
                pointer("instances", index, (unknown or missing)[0]),
                f"Instance {index} has unknown inputs {preview(unknown)} and lacks {missing}.",
                f"an object with keys {names}",
                preview(sorted(row)),
            )
        for name in names:
            columns[name].append(row[name])
    return columns


def parse_rows(instances: Any, inputs: Sequence[TensorInfo], max_rows: int) -> Batch:
    """TF Serving's row format: `instances` is a list of rows, or of {input name: row}."""
    if not isinstance(instances, list) or not instances:
        raise invalid(
            "/instances",
            "instances must be a non-empty list.",
            "a list of rows",
            preview(instances),
        )
    if len(instances) > max_rows:
        raise PayloadTooLarge(f"A request may carry at most {max_rows} rows; got {len(instances)}.")
    if isinstance(instances[0], dict):
        columns = _named_rows(instances, inputs)

        def locate(index: int, row: int | None) -> str:
            return "/instances" if row is None else pointer("instances", row, inputs[index].name)

    elif len(inputs) > 1:
        raise invalid(
            "/instances/0",
            f"This model has {len(inputs)} inputs: each instance is an object keyed by them.",
            f"an object with keys {[info.name for info in inputs]}",
            preview(instances[0]),
        )
    else:
        columns = {inputs[0].name: instances}

        def locate(index: int, row: int | None) -> str:
            return "/instances" if row is None else pointer("instances", row)

    return _checked(columns, inputs, locate, max_rows)


def parse_columns(columns: Any, inputs: Sequence[TensorInfo], max_rows: int) -> Batch:
    """TF Serving's columnar format: `inputs` is the batch, or {input name: batch}."""
    names = [info.name for info in inputs]
    if isinstance(columns, dict):
        unknown = sorted(set(columns) - set(names))
        missing = [name for name in names if name not in columns]
        if unknown or missing:
            raise invalid(
                pointer("inputs", (unknown or missing)[0]),
                f"inputs has unknown names {preview(unknown)} and lacks {missing}.",
                f"an object with keys {names}",
                preview(sorted(columns)),
            )

        def locate(index: int, row: int | None) -> str:
            return pointer("inputs", names[index], *([] if row is None else [row]))

    elif len(inputs) == 1:
        columns = {names[0]: columns}

        def locate(index: int, row: int | None) -> str:
            return "/inputs" if row is None else pointer("inputs", row)

    else:
        raise invalid(
            "/inputs",
            f"This model has {len(inputs)} inputs: inputs is an object keyed by them.",
            f"an object with keys {names}",
            preview(columns),
        )
    batch = _checked(columns, inputs, locate, max_rows)
    check_same_rows(batch.arrays, [locate(index, None) for index in range(len(inputs))])
    return batch


def _checked(
    columns: dict[str, Any],
    inputs: Sequence[TensorInfo],
    locate: Callable[[int, int | None], str],
    max_rows: int,
) -> Batch:
    """Each input's rows checked (`locate` says where they are in the request)."""
    arrays = [
        check_batch(
            columns[info.name],
            info,
            locate(index, None),
            functools.partial(locate, index),
            max_rows,
        )
        for index, info in enumerate(inputs)
    ]
    return Batch(arrays, locate)


def check_same_rows(arrays: list[np.ndarray], paths: list[str]) -> None:
    """Every input carries as many rows as the first; else a 422 at the one that differs."""
    rows = [len(array) for array in arrays]
    for array, path in zip(arrays, paths, strict=True):
        if len(array) != rows[0]:
            raise invalid(
                path,
                f"Every input needs the same number of rows: {rows[0]} at {paths[0]}, "
                f"{len(array)} here.",
                f"{rows[0]} rows",
                len(array),
            )


def parse_predict(body: Any, inputs: Sequence[TensorInfo], max_rows: int) -> tuple[Batch, str]:
    """A TF Serving `:predict` body -> (the checked batch, "row" or "columnar")."""
    if not isinstance(body, dict):
        raise invalid(
            "",
            "The body must be a JSON object.",
            "an object with instances or inputs",
            preview(body),
        )
    unknown = sorted(set(body) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise invalid(
            pointer(unknown[0]),
            f"Unknown key {preview(unknown[0])!r}.",
            "instances or inputs, and optionally signature_name",
            unknown[0],
        )
    if body.get("signature_name") not in (None, "", "serving_default"):
        raise invalid(
            "/signature_name",
            "This model has one signature, serving_default.",
            "serving_default",
            preview(body["signature_name"]),
        )
    if ("instances" in body) == ("inputs" in body):
        raise invalid(
            "",
            "Send exactly one of instances (row format) or inputs (columnar format).",
            "one of instances, inputs",
            sorted(body),
        )
    if "instances" in body:
        return parse_rows(body["instances"], inputs, max_rows), "row"
    return parse_columns(body["inputs"], inputs, max_rows), "columnar"


def render_predict(
    outputs: dict[str, np.ndarray], infos: Sequence[TensorInfo], layout: str
) -> dict:
    """The answer TF Serving gives: `predictions` per row, or `outputs` per output."""
    names = [info.name for info in infos]
    if layout == "columnar":
        return {"outputs": outputs[names[0]] if len(names) == 1 else outputs}
    if len(names) == 1:
        return {"predictions": outputs[names[0]]}
    rows = len(outputs[names[0]])
    return {"predictions": [{name: outputs[name][i] for name in names} for i in range(rows)]}
