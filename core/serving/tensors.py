"""Request bodies to checked arrays and outputs back, for TF Serving's REST and OIP v2 JSON.

Everything a client sends is checked in numpy before TensorFlow sees it: rows must be numbers,
not ragged, of the input's shape, finite once converted to the input's dtype. Each problem is a
FieldError whose path is a JSON pointer into the request (`/instances/3`, `/inputs/image/0`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import orjson

from core.errors import FieldError, InvalidRequest, PayloadTooLarge
from core.serving.cache import TensorInfo

# Open Inference Protocol datatypes and the numpy dtypes they carry (BYTES is not served).
DATATYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}
_NUMERIC = "biuf"


@dataclasses.dataclass(frozen=True)
class InferRequest:
    """An OIP v2 inference request, checked: arrays in model input order, outputs to return."""

    arrays: list[np.ndarray]
    outputs: list[str]
    id: str | None
    parameters: dict[str, Any]


def pointer(*parts: object) -> str:
    """A JSON pointer from its reference tokens (RFC 6901 escapes `~` and `/`)."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def _invalid(path: str, message: str, expected: str, received: Any) -> InvalidRequest:
    return InvalidRequest(message, errors=[FieldError(path, message, expected, received)])


def _preview(value: Any) -> Any:
    """A short, JSON-safe rendering of a received value for an error message."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    text = value if isinstance(value, str) else orjson.dumps(value, default=repr).decode()
    if len(text) > 80:
        return text[:77] + "..."
    return value


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _first_non_number(value: Any) -> Any:
    for leaf in _leaves(value):
        if isinstance(leaf, bool) or not isinstance(leaf, int | float):
            return leaf
    return None


def _fits(shape: Sequence[int], info: TensorInfo) -> bool:
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
            array = np.asarray(row)
        except (ValueError, TypeError, OverflowError):
            return FieldError(
                row_path(index),
                f"Row {index} of input {info.name!r} is ragged: nested lists of one level "
                "must all have the same length.",
                expected,
                _preview(row),
            )
        if array.dtype.kind not in _NUMERIC:
            return FieldError(
                row_path(index),
                f"Row {index} of input {info.name!r} holds a value that is not a number.",
                expected,
                _preview(_first_non_number(row)),
            )
        if not _fits((1, *array.shape), info):
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
            raise _invalid(
                path,
                f"Input {info.name!r} has {int((~finite).sum())} values that are NaN or Inf "
                f"as {target.name} (beyond ±{float(np.finfo(target).max):.3g}).",
                f"finite numbers within the range of {target.name}",
                _preview(bad),
            )
        return converted
    if target.kind in "iu":
        flat = array.reshape(-1)
        limits = np.iinfo(target)
        if array.dtype.kind == "f":
            whole = np.isfinite(flat) & (np.floor(flat) == flat)
            if not whole.all():
                raise _invalid(
                    path,
                    f"Input {info.name!r} takes integers ({target.name}).",
                    f"integers ({target.name})",
                    _preview(flat[np.argmin(whole)].item()),
                )
        if flat.size and (flat.min() < limits.min or flat.max() > limits.max):
            raise _invalid(
                path,
                f"Input {info.name!r} has values outside the range of {target.name}.",
                f"integers in [{limits.min}, {limits.max}]",
                _preview((flat.min() if flat.min() < limits.min else flat.max()).item()),
            )
    return array.astype(target)


def check_batch(
    rows: Any, info: TensorInfo, path: str, row_path: Callable[[int], str], max_rows: int
) -> np.ndarray:
    """Rows for input `info` as an array of its dtype, or a 422/413 pointing at the fault."""
    if not isinstance(rows, list) or not rows:
        raise _invalid(
            path,
            f"Input {info.name!r} needs a non-empty list of rows.",
            f"a list of rows of shape {info.batch_shape()[1:]}",
            _preview(rows),
        )
    if len(rows) > max_rows:
        raise PayloadTooLarge(f"A request may carry at most {max_rows} rows; got {len(rows)}.")
    try:
        array = np.asarray(rows)
    except (ValueError, TypeError, OverflowError):
        array = None
    if array is None or array.dtype.kind not in _NUMERIC or not _fits(array.shape, info):
        error = _row_error(rows, info, path, row_path)
        raise InvalidRequest(error.message, errors=[error])
    return cast_array(array, info, path)


def _named_rows(instances: list, inputs: Sequence[TensorInfo]) -> dict[str, list]:
    names = [info.name for info in inputs]
    columns: dict[str, list] = {name: [] for name in names}
    for index, row in enumerate(instances):
        if not isinstance(row, dict):
            raise _invalid(
                pointer("instances", index),
                "Instances are all objects keyed by input name, or all plain rows.",
                f"an object with keys {names}",
                _preview(row),
            )
        unknown = sorted(set(row) - set(names))
        missing = [name for name in names if name not in row]
        if unknown or missing:
            raise _invalid(
                pointer("instances", index, (unknown or missing)[0]),
                f"Instance {index} has unknown inputs {unknown} and lacks {missing}.",
                f"an object with keys {names}",
                sorted(row),
            )
        for name in names:
            columns[name].append(row[name])
    return columns


def parse_rows(instances: Any, inputs: Sequence[TensorInfo], max_rows: int) -> list[np.ndarray]:
    """TF Serving's row format: `instances` is a list of rows, or of {input name: row}."""
    if not isinstance(instances, list) or not instances:
        raise _invalid(
            "/instances",
            "instances must be a non-empty list.",
            "a list of rows",
            _preview(instances),
        )
    if len(instances) > max_rows:
        raise PayloadTooLarge(f"A request may carry at most {max_rows} rows; got {len(instances)}.")
    if isinstance(instances[0], dict):
        columns = _named_rows(instances, inputs)
        return [
            check_batch(
                columns[info.name],
                info,
                "/instances",
                lambda i, name=info.name: pointer("instances", i, name),
                max_rows,
            )
            for info in inputs
        ]
    if len(inputs) > 1:
        raise _invalid(
            "/instances/0",
            f"This model has {len(inputs)} inputs: each instance is an object keyed by them.",
            f"an object with keys {[info.name for info in inputs]}",
            _preview(instances[0]),
        )
    return [
        check_batch(instances, inputs[0], "/instances", lambda i: pointer("instances", i), max_rows)
    ]


def parse_columns(columns: Any, inputs: Sequence[TensorInfo], max_rows: int) -> list[np.ndarray]:
    """TF Serving's columnar format: `inputs` is the batch, or {input name: batch}."""
    names = [info.name for info in inputs]
    if isinstance(columns, dict):
        unknown = sorted(set(columns) - set(names))
        missing = [name for name in names if name not in columns]
        if unknown or missing:
            raise _invalid(
                pointer("inputs", (unknown or missing)[0]),
                f"inputs has unknown names {unknown} and lacks {missing}.",
                f"an object with keys {names}",
                sorted(columns),
            )
        paths = {name: pointer("inputs", name) for name in names}
    elif len(inputs) == 1:
        columns, paths = {names[0]: columns}, {names[0]: "/inputs"}
    else:
        raise _invalid(
            "/inputs",
            f"This model has {len(inputs)} inputs: inputs is an object keyed by them.",
            f"an object with keys {names}",
            _preview(columns),
        )
    arrays = [
        check_batch(
            columns[info.name],
            info,
            paths[info.name],
            lambda i, base=paths[info.name]: f"{base}/{i}",
            max_rows,
        )
        for info in inputs
    ]
    _check_same_rows(arrays, [paths[name] for name in names])
    return arrays


def _check_same_rows(arrays: list[np.ndarray], paths: list[str]) -> None:
    rows = [len(array) for array in arrays]
    for array, path in zip(arrays, paths, strict=True):
        if len(array) != rows[0]:
            raise _invalid(
                path,
                f"Every input needs the same number of rows: {rows[0]} at {paths[0]}, "
                f"{len(array)} here.",
                f"{rows[0]} rows",
                len(array),
            )


def parse_predict(
    body: Any, inputs: Sequence[TensorInfo], max_rows: int
) -> tuple[list[np.ndarray], str]:
    """A TF Serving `:predict` body -> (arrays in input order, "row" or "columnar")."""
    if not isinstance(body, dict):
        raise _invalid(
            "",
            "The body must be a JSON object.",
            "an object with instances or inputs",
            _preview(body),
        )
    unknown = sorted(set(body) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise _invalid(
            pointer(unknown[0]),
            f"Unknown key {unknown[0]!r}.",
            "instances or inputs, and optionally signature_name",
            unknown[0],
        )
    if body.get("signature_name") not in (None, "", "serving_default"):
        raise _invalid(
            "/signature_name",
            "This model has one signature, serving_default.",
            "serving_default",
            _preview(body["signature_name"]),
        )
    if ("instances" in body) == ("inputs" in body):
        raise _invalid(
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


def _infer_tensor(
    index: int, tensor: Any, by_name: dict[str, TensorInfo], max_rows: int
) -> tuple[str, np.ndarray]:
    base = pointer("inputs", index)
    if not isinstance(tensor, dict):
        raise _invalid(
            base, "Each input is an object.", "{name, shape, datatype, data}", _preview(tensor)
        )
    name = tensor.get("name")
    if name not in by_name:
        raise _invalid(
            f"{base}/name",
            f"Unknown input {_preview(name)!r}.",
            f"one of {sorted(by_name)}",
            _preview(name),
        )
    info = by_name[name]
    shape = tensor.get("shape")
    if not (
        isinstance(shape, list)
        and shape
        and all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape)
    ):
        raise _invalid(
            f"{base}/shape",
            "shape is a list of sizes.",
            f"like {info.batch_shape()}",
            _preview(shape),
        )
    if shape[0] > max_rows:
        raise PayloadTooLarge(f"A request may carry at most {max_rows} rows; got {shape[0]}.")
    if not _fits(shape, info):
        raise _invalid(
            f"{base}/shape",
            f"Input {name!r} has shape {info.batch_shape()} (-1: any size); received {shape}.",
            str(info.batch_shape()),
            shape,
        )
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise _invalid(
            f"{base}/datatype",
            f"Unsupported datatype {_preview(datatype)!r}.",
            f"one of {sorted(DATATYPES)}; this input is {DATATYPE_OF.get(info.dtype, info.dtype)}",
            _preview(datatype),
        )
    if (tensor.get("parameters") or {}).get("binary_data_size") is not None:
        raise _invalid(
            f"{base}/parameters/binary_data_size",
            "The binary tensor extension is not supported: send the data as JSON.",
            "data as a JSON array",
            tensor["parameters"]["binary_data_size"],
        )
    return name, _infer_data(tensor.get("data"), shape, datatype, info, f"{base}/data")


def _infer_data(
    data: Any, shape: list[int], datatype: str, info: TensorInfo, path: str
) -> np.ndarray:
    """An OIP `data` (flat in row-major order, or nested) as an array of `shape`."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise _invalid(
            path,
            "data is ragged: nested lists must be of one length per level.",
            str(shape),
            _preview(data),
        ) from None
    numbers = "b" if datatype == "BOOL" else "iuf"
    if array.dtype.kind not in numbers:
        raise _invalid(
            path,
            f"data holds values that are not {datatype}.",
            f"{datatype} values",
            _preview(_first_non_number(data)),
        )
    size = math.prod(shape)
    if array.shape != tuple(shape):
        if array.ndim != 1 or array.size != size:
            raise _invalid(
                path,
                f"data has {array.size} values in shape {list(array.shape)}; "
                f"shape {shape} needs {size}.",
                f"{size} values, flat or nested as {shape}",
                list(array.shape),
            )
        array = array.reshape(shape)
    declared = np.dtype(DATATYPES[datatype])
    if declared.kind in "iu" or declared.kind == "b":
        array = cast_array(array, TensorInfo(info.name, info.shape, declared.name), path)
    return cast_array(array, info, path)


def parse_infer(
    body: Any, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], max_rows: int
) -> InferRequest:
    """An OIP v2 `/infer` body (JSON tensors) checked against the model's inputs and outputs."""
    if not isinstance(body, dict):
        raise _invalid(
            "", "The body must be a JSON object.", "an object with inputs", _preview(body)
        )
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _invalid("/id", "id is a string.", "a string", _preview(request_id))
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _invalid("/parameters", "parameters is an object.", "an object", _preview(parameters))
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise _invalid(
            "/inputs",
            "inputs is a non-empty list of tensors.",
            "[{name, shape, datatype, data}]",
            _preview(tensors),
        )
    by_name = {info.name: info for info in inputs}
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name, array = _infer_tensor(index, tensor, by_name, max_rows)
        if name in arrays:
            raise _invalid(
                pointer("inputs", index, "name"),
                f"Input {name!r} is given twice.",
                "each input once",
                name,
            )
        arrays[name] = array
    missing = [info.name for info in inputs if info.name not in arrays]
    if missing:
        raise _invalid(
            "/inputs",
            f"Inputs {missing} are missing.",
            f"tensors for {list(by_name)}",
            sorted(arrays),
        )
    ordered = [arrays[info.name] for info in inputs]
    _check_same_rows(ordered, [pointer("inputs", info.name) for info in inputs])
    return InferRequest(
        ordered, _requested_outputs(body.get("outputs"), outputs), request_id, parameters
    )


def _requested_outputs(requested: Any, outputs: Sequence[TensorInfo]) -> list[str]:
    names = [info.name for info in outputs]
    if requested is None:
        return names
    if not isinstance(requested, list):
        raise _invalid(
            "/outputs", "outputs is a list of {name}.", f"names among {names}", _preview(requested)
        )
    chosen = []
    for index, item in enumerate(requested):
        name = item.get("name") if isinstance(item, dict) else None
        if name not in names:
            raise _invalid(
                pointer("outputs", index, "name"),
                f"Unknown output {_preview(name)!r}.",
                f"one of {names}",
                _preview(name),
            )
        chosen.append(name)
    return chosen


def render_infer(outputs: dict[str, np.ndarray], names: Sequence[str]) -> list[dict[str, Any]]:
    """OIP output tensors: name, datatype, shape and the data flat in row-major order."""
    return [
        {
            "name": name,
            "datatype": DATATYPE_OF.get(outputs[name].dtype.name, outputs[name].dtype.name.upper()),
            "shape": list(outputs[name].shape),
            "data": np.ascontiguousarray(outputs[name]).reshape(-1),
        }
        for name in names
    ]
