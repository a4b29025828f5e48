"""The Open Inference Protocol (KServe v2) over the same models as the TF Serving routes.

A version segment is a version number or a label (`best`, `latest`, `final`); without one the
model's default version answers. Tensors come and go as JSON or, with the binary tensor data
extension, as bytes after a JSON header. Errors are problem documents, whose `error` member is
what the protocol's clients read.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any

from flask import Blueprint, Flask, Response, request

from core.errors import (
    MalformedRequest,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
    show,
)
from core.integers import read_int
from core.jobs import describe_record
from core.serving import catalog
from core.serving.cache import LoadedModel
from core.serving.oip import HEADER_LENGTH, datatype_of, parse_infer, render_infer
from core.serving.signature import TensorInfo
from service import servables
from service.http import json_response, parse_json
from service.servables import Found, answering, tagged
from service.state import data_dir, settings

bp = Blueprint("oip", __name__)


def register(app: Flask) -> None:
    app.register_blueprint(bp)


def server_version() -> str:
    try:
        return importlib.metadata.version("fitserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@bp.get("/v2")
def server_metadata() -> Response:
    return json_response(
        {"name": "fitserve", "version": server_version(), "extensions": ["binary_tensor_data"]}
    )


@bp.get("/v2/health/live")
def live() -> Response:
    return json_response({"live": True})


@bp.get("/v2/health/ready")
def ready() -> Response:
    """Ready when the data volume, where every model lives, can be read."""
    if not os.access(data_dir().jobs, os.R_OK | os.X_OK):
        raise Unavailable("The data folder cannot be read.", code="not_ready")
    return json_response({"ready": True})


def find_segment(model: str, version: str | None) -> Found:
    """A version segment: a label (`best`, `latest`, `final`), else a version number."""
    if version in catalog.LABELS:
        return servables.find(model, label=version)
    return servables.find(model, version=servables.version_number(version))


def _tensor(info: TensorInfo) -> dict:
    return {
        "name": info.name,
        "datatype": datatype_of(info.dtype),
        "shape": info.batch_shape(),
    }


@bp.get("/v2/models/<model>")
@bp.get("/v2/models/<model>/versions/<version>")
def model_metadata(model: str, version: str | None = None) -> Response:
    found = find_segment(model, version)
    loaded = servables.load(found)
    versions = catalog.version_entries(found.manifest)
    document = {
        "name": model,
        "versions": [str(v) for v in sorted(versions)],
        "platform": "keras",
        "inputs": [_tensor(info) for info in loaded.inputs],
        "outputs": [_tensor(info) for info in loaded.outputs],
        # The class names of the one output's scores and the CSV feature names of the one
        # input, where the training data had them (Triton puts such extras in `parameters`).
        "parameters": dict(servables.labels(found)),
        "record": describe_record(found.manifest),
    }
    return tagged(json_response(document), loaded.servable.version)


@bp.get("/v2/models/<model>/ready")
@bp.get("/v2/models/<model>/versions/<version>/ready")
def model_ready(model: str, version: str | None = None) -> Response:
    """Ready once the version is loaded in this process (this call loads it)."""
    loaded = servables.load(find_segment(model, version))
    document = {"name": model, "version": _version(loaded), "ready": True}
    return tagged(json_response(document), loaded.servable.version)


@bp.post("/v2/models/<model>/infer")
@bp.post("/v2/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None) -> Response:
    body, binary = infer_body()
    loaded = servables.load(find_segment(model, version))
    with answering(loaded.servable.version):
        checked = parse_infer(
            body, binary, loaded.inputs, loaded.outputs, settings().max_predict_rows
        )
        outputs = loaded.run(checked)
    answer: dict[str, Any] = {"model_name": model, "model_version": _version(loaded)}
    if checked.id is not None:
        answer["id"] = checked.id
    content, header_length = render_infer(answer, outputs, checked)
    if header_length is None:
        response = Response(content, mimetype="application/json")
    else:
        response = Response(content, mimetype="application/octet-stream")
        response.headers[HEADER_LENGTH] = str(header_length)
    return tagged(response, loaded.servable.version)


def infer_body() -> tuple[Any, bytes]:
    """The JSON request and the binary tensor bytes after it (none without the extension)."""
    length = request.headers.get(HEADER_LENGTH)
    if length is None:
        return servables.prediction_body(), b""
    if request.content_encoding not in (None, "", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {request.content_encoding!r} is not supported; send it plain."
        )
    limit = settings().max_json_bytes
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(f"An inference request may be at most {limit} bytes.")
    data = request.get_data()
    header_bytes = read_int(length, 0, len(data))
    if header_bytes is None:
        raise MalformedRequest(
            f"{HEADER_LENGTH} must be the JSON header's byte count, at most the body's "
            f"{len(data)} bytes; got {show(length, 32)}."
        )
    return parse_json(data[:header_bytes], "The JSON header"), data[header_bytes:]


def _version(loaded: LoadedModel) -> str:
    return str(loaded.servable.version)
