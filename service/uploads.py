"""`/v1/uploads`: resumable uploads, the tus 1.0 protocol (core, creation, expiration,
termination, checksum), so tuspy and tus-js-client work unchanged.

The protocol's state lives in core/uploads.py; this module reads and writes its headers. Every
answer, errors included, carries `Tus-Resumable`; errors are problem documents like any other.
A finished upload becomes a dataset through `POST /v1/datasets` with `{"upload": "<id>"}`.
"""

from __future__ import annotations

import base64
import binascii
import time
from email.utils import formatdate

from flask import Blueprint, Flask, Response, request

from core import uploads
from core.errors import (
    FieldError,
    MalformedRequest,
    NotFound,
    PreconditionFailed,
    UnsupportedMediaType,
)
from core.integers import read_int
from service.auth import can_see, owner
from service.limits import check_upload_quota
from service.state import data_dir, settings

bp = Blueprint("uploads", __name__, url_prefix="/v1/uploads")

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,expiration,termination,checksum"
PATCH_TYPE = "application/offset+octet-stream"
PREFIX = "/v1/uploads"
# An integer header: ASCII digits within a signed 64-bit value (tus's offsets and lengths).
_MAX_HEADER_INT = 2**63 - 1


@bp.before_request
def require_tus_version() -> None:
    """412 for any tus request but OPTIONS that does not speak tus 1.0.0."""
    if request.method == "OPTIONS":
        return
    given = request.headers.get("Tus-Resumable")
    if given != TUS_VERSION:
        error = PreconditionFailed(
            f"Tus-Resumable is {given!r}; this server speaks tus {TUS_VERSION} only "
            f"(send 'Tus-Resumable: {TUS_VERSION}').",
            code="unsupported_tus_version",
        )
        error.headers["Tus-Version"] = TUS_VERSION
        raise error


@bp.route("", methods=["OPTIONS"], provide_automatic_options=False)
def describe_server() -> Response:
    """What this tus server supports: version, extensions, the largest upload, checksums."""
    return _empty(
        204,
        {
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": TUS_EXTENSIONS,
            "Tus-Max-Size": str(settings().max_dataset_bytes),
            "Tus-Checksum-Algorithm": ",".join(uploads.CHECKSUM_ALGORITHMS),
        },
    )


@bp.post("")
def create_upload() -> Response:
    """Creation: 201 with the new upload's Location; its length is Upload-Length."""
    # Abandoned uploads go as new ones come: each creation sweeps the expired ones.
    uploads.remove_expired(data_dir(), settings())
    length = _header_int("Upload-Length")
    metadata = uploads.parse_metadata(request.headers.get("Upload-Metadata", ""))
    uploads.check_length(length, settings())
    check_upload_quota(owner(), length)
    upload = uploads.create_upload(
        data_dir(), length=length, metadata=metadata, owner=owner(), settings=settings()
    )
    return _empty(
        201,
        {"Location": f"{PREFIX}/{upload.id}", "Upload-Expires": _http_date(upload.expires_at)},
    )


@bp.route("/<upload_id>", methods=["HEAD"])
def show_offset(upload_id: str) -> Response:
    """The offset to resume from, the length, and the metadata given at creation."""
    upload = visible_upload(upload_id)
    headers = {
        "Upload-Offset": str(upload.offset),
        "Upload-Length": str(upload.length),
        "Upload-Expires": _http_date(upload.expires_at),
        "Cache-Control": "no-store",
    }
    if upload.metadata:
        headers["Upload-Metadata"] = ",".join(
            f"{key} {base64.b64encode(value.encode()).decode()}" if value else key
            for key, value in upload.metadata.items()
        )
    return _empty(200, headers)


@bp.patch("/<upload_id>")
def append_chunk(upload_id: str) -> Response:
    """Append the body at Upload-Offset (409 if it is not the upload's offset); 204 with the
    new offset. With Upload-Checksum a chunk whose digest differs is discarded (460)."""
    upload = visible_upload(upload_id)
    if request.mimetype != PATCH_TYPE:
        raise UnsupportedMediaType(
            f"A PATCH carries Content-Type: {PATCH_TYPE}, not {request.mimetype or 'none'!r}."
        )
    offset = _header_int("Upload-Offset")
    checksum = _checksum()
    new_offset = uploads.append_chunk(
        data_dir(),
        upload,
        offset=offset,
        stream=request.stream,
        declared=request.content_length,
        checksum=checksum,
    )
    expires = time.time() + settings().upload_expiry_seconds
    return _empty(204, {"Upload-Offset": str(new_offset), "Upload-Expires": _http_date(expires)})


@bp.delete("/<upload_id>")
def delete_upload(upload_id: str) -> Response:
    """Termination: the upload and its bytes are removed."""
    visible_upload(upload_id)
    uploads.delete_upload(data_dir(), upload_id)
    return _empty(204, {})


def visible_upload(upload_id: str) -> uploads.Upload:
    """An upload this request may use; another key's is as unknown as none."""
    upload = uploads.load_upload(data_dir(), upload_id, settings())
    if not can_see(upload.owner):
        raise NotFound(f"No upload with id {upload_id!r}.")
    return upload


def _header_int(name: str) -> int:
    text = request.headers.get(name)
    value = None if text is None else read_int(text.strip(), 0, _MAX_HEADER_INT)
    if value is None:
        expected = "a non-negative integer in ASCII digits"
        message = f"{name} is missing or not {expected}."
        raise MalformedRequest(
            message, errors=[FieldError(f"/headers/{name}", message, expected, text)]
        )
    return value


def _checksum() -> tuple[str, bytes] | None:
    """Upload-Checksum as (algorithm, digest), None when absent; 400 when malformed."""
    text = request.headers.get("Upload-Checksum")
    if text is None:
        return None
    algorithm, _, encoded = text.strip().partition(" ")
    expected = f"'<algorithm> <base64 digest>', the algorithm one of {uploads.CHECKSUM_ALGORITHMS}"
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        digest = b""
    if algorithm not in uploads.CHECKSUM_ALGORITHMS or not digest:
        message = f"Upload-Checksum is not {expected}."
        raise MalformedRequest(
            message, errors=[FieldError("/headers/Upload-Checksum", message, expected, text)]
        )
    return algorithm, digest


def _http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def _empty(status: int, headers: dict[str, str]) -> Response:
    response = Response(status=status)
    response.headers.update(headers)
    return response


def add_tus_resumable(response: Response) -> Response:
    """Every answer under /v1/uploads says which tus version it speaks, errors included."""
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        response.headers["Tus-Resumable"] = TUS_VERSION
    return response


def register(app: Flask) -> None:
    """Sweep expired uploads once at start, add the routes and the Tus-Resumable header."""
    uploads.remove_expired(app.extensions["fitserve.data"], app.config["FITSERVE"])
    app.after_request(add_tus_resumable)
    app.register_blueprint(bp)
