"""Open Inference Protocol (KServe v2) tensors: JSON and the binary tensor data extension.

A request's tensors come as JSON `data` (flat in row-major order, or nested) or, with the binary
extension, as little-endian bytes after the JSON header (`parameters.binary_data_size`). Outputs
go back as JSON, or as bytes where the request asks (`binary_data_output`, or an output's
`parameters.binary_data`), the way Triton's and KServe's clients expect.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from core.errors import PayloadTooLarge, pointer, preview
from core.serving.signature import Batch, TensorInfo
from core.serving.tfserving import (
    NUMBERS,
    NotNumbers,
    cast_array,
    check_same_rows,
    fits,
    invalid,
    nesting_depth,
)

# The protocol's datatypes and the numpy dtypes that carry them (BYTES is not served).
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
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclasses.dataclass(frozen=True)
class InferRequest(Batch):
    """A checked inference request: arrays in model input order, the outputs to return."""

    outputs: list[str]
    binary_outputs: set[str]
    id: str | None


def datatype_of(dtype: str) -> str:
    """The protocol's datatype for a numpy dtype name (`float32` -> `FP32`)."""
    return DATATYPE_OF.get(dtype, dtype.upper())


class _Binary:
    """The bytes after the JSON header, handed out in the order the inputs list them."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def take(self, size: Any, path: str) -> memoryview:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise invalid(path, "binary_data_size is a byte count.", "an integer >= 0", size)
        if self.offset + size > len(self.data):
            raise invalid(
                path,
                f"binary_data_size {size} runs past the end of the body "
                f"({len(self.data) - self.offset} bytes left).",
                f"at most {len(self.data) - self.offset}",
                size,
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk


def _parameters(holder: dict, path: str) -> dict:
    """The `parameters` object of a request, input or output ({} when absent)."""
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise invalid(
            f"{path}/parameters", "parameters is an object.", "an object", preview(parameters)
        )
    return parameters


def _check_tensor_header(
    index: int, tensor: Any, by_name: dict[str, TensorInfo], max_rows: int
) -> tuple[TensorInfo, list[int], str]:
    base = pointer("inputs", index)
    if not isinstance(tensor, dict):
        raise invalid(
            base, "Each input is an object.", "{name, shape, datatype, data}", preview(tensor)
        )
    name = tensor.get("name")
    if not isinstance(name, str) or name not in by_name:
        raise invalid(
            f"{base}/name", f"Unknown input {preview(name)!r}.", f"one of {sorted(by_name)}", name
        )
    info = by_name[name]
    shape = tensor.get("shape")
    if not (
        isinstance(shape, list)
        and shape
        and all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape)
    ):
        raise invalid(
            f"{base}/shape", "shape is a list of sizes.", f"like {info.batch_shape()}", shape
        )
    if shape[0] > max_rows:
        raise PayloadTooLarge(f"A request may carry at most {max_rows} rows; got {shape[0]}.")
    if not fits(shape, info):
        raise invalid(
            f"{base}/shape",
            f"Input {name!r} has shape {info.batch_shape()} (-1: any size); "
            f"received {preview(shape)}.",
            str(info.batch_shape()),
            shape,
        )
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise invalid(
            f"{base}/datatype",
            f"Unsupported datatype {preview(datatype)!r}.",
            f"one of {sorted(DATATYPES)}; this input is {datatype_of(info.dtype)}",
            preview(datatype),
        )
    return info, shape, datatype


def _json_data(data: Any, shape: list[int], datatype: str, path: str) -> np.ndarray:
    """JSON `data`, flat in row-major order or nested, as an array of `shape`."""
    try:
        nesting_depth(data, frozenset({bool}) if datatype == "BOOL" else NUMBERS)
    except NotNumbers as error:
        raise invalid(
            path,
            f"data holds values that are not {datatype}, or mixes them with lists at one level.",
            f"{datatype} values, flat or nested as {shape}",
            preview(error.value),
        ) from None
    try:
        array = np.asarray(data)
    except ValueError:
        raise invalid(
            path,
            "data is ragged: nested lists must be of one length per level.",
            str(shape),
            preview(data),
        ) from None
    size = math.prod(shape)
    if array.shape != tuple(shape):
        if array.ndim != 1 or array.size != size:
            raise invalid(
                path,
                f"data has {array.size} values in shape {list(array.shape)}; "
                f"shape {shape} needs {size}.",
                f"{size} values, flat or nested as {shape}",
                list(array.shape),
            )
        array = array.reshape(shape)
    declared = np.dtype(DATATYPES[datatype])
    if declared.kind in "biu":  # JSON numbers must fit the declared integer type
        array = cast_array(array, TensorInfo("data", tuple(shape[1:]), declared.name), path)
    return array


def _binary_data(chunk: memoryview, shape: list[int], datatype: str, path: str) -> np.ndarray:
    """Little-endian bytes of `datatype`, row-major, as an array of `shape`."""
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    if len(chunk) != math.prod(shape) * dtype.itemsize:
        raise invalid(
            path,
            f"{len(chunk)} bytes cannot hold shape {shape} of {datatype} "
            f"({dtype.itemsize} bytes each).",
            f"{math.prod(shape) * dtype.itemsize} bytes",
            len(chunk),
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _input_array(
    index: int,
    tensor: Any,
    by_name: dict[str, TensorInfo],
    max_rows: int,
    binary: _Binary,
) -> tuple[str, np.ndarray]:
    info, shape, datatype = _check_tensor_header(index, tensor, by_name, max_rows)
    base = pointer("inputs", index)
    size = _parameters(tensor, base).get("binary_data_size")
    if size is None:
        array = _json_data(tensor.get("data"), shape, datatype, f"{base}/data")
    else:
        path = f"{base}/parameters/binary_data_size"
        array = _binary_data(binary.take(size, path), shape, datatype, path)
    return info.name, cast_array(array, info, f"{base}/data")


def parse_infer(
    body: Any,
    binary: bytes,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    max_rows: int,
) -> InferRequest:
    """An `/infer` request (its JSON part and the bytes after it) checked against the model."""
    if not isinstance(body, dict):
        raise invalid("", "The body must be a JSON object.", "an object with inputs", preview(body))
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid("/id", "id is a string.", "a string", preview(request_id))
    parameters = _parameters(body, "")
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise invalid(
            "/inputs",
            "inputs is a non-empty list of tensors.",
            "[{name, shape, datatype, data}]",
            preview(tensors),
        )
    by_name = {info.name: info for info in inputs}
    arrays: dict[str, np.ndarray] = {}
    places: dict[str, str] = {}  # input name -> the pointer of its tensor in the request
    rest = _Binary(binary)
    for index, tensor in enumerate(tensors):
        name, array = _input_array(index, tensor, by_name, max_rows, rest)
        if name in arrays:
            raise invalid(
                pointer("inputs", index, "name"), f"Input {name!r} is given twice.", "once", name
            )
        arrays[name] = array
        places[name] = pointer("inputs", index)
    if rest.offset != len(binary):
        raise invalid(
            "/inputs",
            f"{len(binary) - rest.offset} bytes after the JSON header belong to no input.",
            "binary_data_size on the inputs adding up to the bytes sent",
            len(binary),
        )
    missing = [info.name for info in inputs if info.name not in arrays]
    if missing:
        raise invalid(
            "/inputs",
            f"Inputs {missing} are missing.",
            f"tensors for {list(by_name)}",
            sorted(arrays),
        )
    ordered = [arrays[info.name] for info in inputs]
    check_same_rows(ordered, [f"{places[info.name]}/shape" for info in inputs])
    chosen, binary_outputs = _requested_outputs(
        body.get("outputs"), outputs, parameters.get("binary_data_output") is True
    )

    def locate(input_index: int, row: int | None) -> str:
        # A tensor's data is flat or nested: its rows are not addressable, the tensor is.
        return "/inputs" if row is None else places[inputs[input_index].name]

    return InferRequest(ordered, locate, chosen, binary_outputs, request_id)


def _requested_outputs(
    requested: Any, outputs: Sequence[TensorInfo], all_binary: bool
) -> tuple[list[str], set[str]]:
    names = [info.name for info in outputs]
    if requested is None:
        return names, set(names) if all_binary else set()
    if not isinstance(requested, list):
        raise invalid(
            "/outputs", "outputs is a list of {name}.", f"names among {names}", preview(requested)
        )
    chosen, binary = [], set()
    for index, item in enumerate(requested):
        name = item.get("name") if isinstance(item, dict) else None
        if name not in names:
            raise invalid(
                pointer("outputs", index, "name"),
                f"Unknown output {preview(name)!r}.",
                f"one of {names}",
                preview(name),
            )
        chosen.append(name)
        wants = _parameters(item, pointer("outputs", index)).get("binary_data")
        if wants is True or (wants is None and all_binary):
            binary.add(name)
    return chosen, binary


def render_infer(
    answer: dict[str, Any], outputs: dict[str, np.ndarray], request: InferRequest
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    tensors, chunks = [], []
    for name in request.outputs:
        array = np.ascontiguousarray(outputs[name])
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array.dtype.name),
            "shape": list(array.shape),
        }
        if name in request.binary_outputs:
            chunk = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = array.reshape(-1)
        tensors.append(tensor)
    header = orjson.dumps({**answer, "outputs": tensors}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
