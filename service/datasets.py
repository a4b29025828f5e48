"""`/v1/datasets`: upload (multipart file or JSON arrays), import, list, show, delete.

Uploads stream to disk: `UploadRequest` gives werkzeug's multipart parser a file in the data
folder's uploads area, so a file part is never held in memory and is moved, not copied, into its
dataset when it is a `.npy`. A `.npy`, `.npz` or CSV upload is stored within the request (201
`ready`); an image archive, a finished resumable upload (`{"upload": "<id>"}`, service/uploads.py)
and an import (`{"import": "<relative path>"}`, admin keys only) are recorded `processing` and
ingested by the CPU task worker (202; core.ingest).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from pathlib import Path
from typing import IO, Any

from flask import Blueprint, Flask, Request, Response, request, send_file, stream_with_context
from werkzeug.datastructures import FileStorage
from werkzeug.formparser import FormDataParser

from core import datasets, downloads, ingest, uploads
from core.archives import detect_archive, parse_image_options
from core.errors import (
    Conflict,
    FieldError,
    InvalidRequest,
    MalformedRequest,
    NotFound,
    UnsupportedMediaType,
)
from core.idempotency import fingerprint
from core.queues import DATASETS_QUEUE, send_ingest
from core.reconciler import waiting_task_ids
from core.storage import new_id
from service.auth import can_see, owner, require_admin
from service.http import idempotency_key, json_body, json_response, page_args
from service.limits import check_dataset_quota, keep_within_dataset_quota
from service.state import data_dir, idempotency_keys, job_store, producer, redis_client, settings
from service.uploads import visible_upload

log = logging.getLogger("fitserve.service")
bp = Blueprint("datasets", __name__, url_prefix="/v1/datasets")

ACCEPTED_TYPES = (
    "multipart/form-data (field 'file') or application/json ({'arrays': {...}}, "
    "{'upload': '<resumable upload id>'} or {'import': '<relative path>'})"
)
# What an import request may say beside the path: the upload form's fields.
IMPORT_KEYS = (
    *("import", "label", "name"),
    *("image_size", "color_mode", "crop_to_aspect_ratio", "on_bad_image"),
)
# What a finished resumable upload may say beside its id: the same fields.
RESUMABLE_KEYS = ("upload", *IMPORT_KEYS[1:])


class UploadRequest(Request):
    """A request whose multipart file parts are written straight into the uploads folder."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        folder = data_dir().uploads
        folder.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115  closed with the request
            dir=folder, prefix="upload-", suffix=".part", delete=False
        )
        self.__dict__.setdefault("upload_paths", []).append(Path(handle.name))
        return handle

    def make_form_data_parser(self) -> FormDataParser:
        parser = super().make_form_data_parser()
        # werkzeug silently drops a broken multipart body; it is the client's 400 here.
        parser.silent = False
        return parser

    def close(self) -> None:
        """Close the file parts, then delete what was not moved into a dataset."""
        super().close()
        for path in self.__dict__.get("upload_paths", []):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@bp.post("")
def create_dataset() -> Response:
    """Upload a dataset: 201 with its manifest (`ready`), 202 (`processing`) for an archive or an
    import, or 200 with the one an Idempotency-Key made for the same upload (409 for another)."""
    is_json = request.mimetype == "application/json" or request.mimetype.endswith("+json")
    if request.mimetype != "multipart/form-data" and not is_json:
        raise UnsupportedMediaType(
            f"Expected {ACCEPTED_TYPES}, got Content-Type {request.mimetype or 'none'!r}."
        )
    # Before the upload is read: a key over its quota sends nothing more to disk.
    check_dataset_quota(owner())
    key = idempotency_key()
    document = json_body() if is_json else None
    import_request = document if isinstance(document, dict) and "import" in document else None
    if import_request is not None:
        require_admin()
    upload = None if is_json else _file_part()
    request_fingerprint = "" if key is None else _fingerprint(document, upload)
    claim = idempotency_keys("datasets").claim(owner(), key, request_fingerprint, _exists)
    with claim as held:
        if held.earlier is not None:
            return _manifest_response(datasets.load_manifest(data_dir(), held.earlier), 200)
        dataset_id = new_id()
        if isinstance(document, dict) and "upload" in document:
            manifest = _begin_resumable(dataset_id, document)
        elif import_request is not None:
            manifest = _begin_import(dataset_id, import_request)
        elif upload is None:
            body = request.get_data(cache=True)
            manifest = datasets.store_json(
                data_dir(), dataset_id, document, body, settings=settings(), owner=owner()
            )
        else:
            manifest = _store_upload(dataset_id, upload)
        if datasets.status_of(manifest) == datasets.PROCESSING:
            send_ingest(producer(), dataset_id)
        else:
            keep_within_dataset_quota(manifest)
        held.bind(dataset_id)
    status = 202 if datasets.status_of(manifest) == datasets.PROCESSING else 201
    return _manifest_response(manifest, status)


@bp.get("")
def list_datasets() -> Response:
    """The caller's datasets (all of them for an admin key), newest first."""
    limit, cursor = page_args()
    items, next_cursor = datasets.list_manifests(
        data_dir(), visible=can_see, limit=limit, cursor=cursor
    )
    return json_response({"items": items, "next_cursor": next_cursor})


@bp.get("/<dataset_id>")
def show_dataset(dataset_id: str) -> Response:
    return json_response(visible_manifest(dataset_id))


@bp.delete("/<dataset_id>")
def delete_dataset(dataset_id: str) -> tuple[str, int]:
    """204, or 409 while a live job uses the dataset (the jobs keep a Redis set of their ids)."""
    visible_manifest(dataset_id)
    users = job_store().count_live_using(dataset_id)
    if users:
        raise Conflict(f"Dataset {dataset_id} is used by {users} live job(s); nothing was deleted.")
    datasets.delete_dataset(data_dir(), dataset_id)
    return "", 204


@bp.get("/<dataset_id>/download")
def download_dataset(dataset_id: str) -> Response:
    """The dataset as `?format=npz` (default, every array), `npy` (`&array=`, needed when there
    are several) or `csv` (every array side by side, with a header), streamed from its files."""
    manifest = visible_manifest(dataset_id)
    status = datasets.status_of(manifest)
    if status != datasets.READY:
        raise Conflict(f"Dataset {dataset_id} is {status}; it can be downloaded once ready.")
    file_format = request.args.get("format", "npz")
    if file_format not in downloads.FORMATS:
        raise _query_error("format", "Unknown format.", " | ".join(downloads.FORMATS), file_format)
    folder, arrays = data_dir().dataset(dataset_id), manifest["arrays"]
    if file_format == "npy":
        name = _array_name(arrays)
        return send_file(
            folder / arrays[name]["file"],
            mimetype="application/octet-stream",
            as_attachment=True,
            download_name=f"{dataset_id}-{arrays[name]['file']}",
        )
    if file_format == "npz":
        files = {name: folder / entry["file"] for name, entry in arrays.items()}
        chunks, mimetype = downloads.npz_chunks(files), "application/zip"
    else:
        chunks = downloads.csv_chunks(data_dir(), dataset_id, list(arrays), manifest["rows"])
        mimetype = "text/csv"
    disposition = f'attachment; filename="{dataset_id}.{file_format}"'
    return Response(
        stream_with_context(chunks),
        mimetype=mimetype,
        headers={"Content-Disposition": disposition},
    )


def _array_name(arrays: dict) -> str:
    """The `array` a `.npy` download names (its only array when it names none)."""
    name = request.args.get("array")
    if name is None and len(arrays) == 1:
        return next(iter(arrays))
    if name is None or name not in arrays:
        message = "Name one of the dataset's arrays." if name is None else "No such array."
        raise _query_error("array", message, " | ".join(sorted(arrays)), name)
    return name


def _query_error(name: str, message: str, expected: str, received: object) -> InvalidRequest:
    return InvalidRequest(
        f"Bad query parameter {name}: {message}",
        errors=[FieldError(f"/{name}", message, expected, received)],
    )


def visible_manifest(dataset_id: str) -> dict:
    """The manifest of a dataset this request may use; someone else's is as unknown as none.
    A `processing` one whose ingest was lost reads (and is recorded) as failed."""
    manifest = datasets.load_manifest(data_dir(), dataset_id)
    if not can_see(manifest.get("owner")):
        raise NotFound(f"No dataset with id {dataset_id!r}.")
    return ingest.settle_stale(data_dir(), manifest, settings(), _waiting_ingests)


def _waiting_ingests() -> set[str]:
    return waiting_task_ids(redis_client(), [DATASETS_QUEUE])


def _manifest_response(manifest: dict, status: int) -> Response:
    return json_response(manifest, status, {"Location": f"/v1/datasets/{manifest['id']}"})


def _file_part() -> FileStorage:
    """The multipart body's `file` part, on disk in the uploads folder."""
    try:
        upload = request.files.get("file")
    except ValueError as error:
        raise MalformedRequest(f"The multipart body is malformed: {error}.") from None
    if upload is None:
        text_field = "file" in request.form
        message = (
            "The 'file' part has no filename, so it arrived as a text field; send it as a file "
            "(curl -F file=@data.npy)."
            if text_field
            else "The multipart body has no 'file' part."
        )
        received = "a text field" if text_field else sorted(request.files)
        raise InvalidRequest(
            message, errors=[FieldError("/file", message, "a file part named 'file'", received)]
        )
    upload.stream.flush()
    return upload


def _store_upload(dataset_id: str, upload: FileStorage) -> dict:
    """A plain upload stored now; an image archive recorded `processing` for the task worker."""
    path = Path(upload.stream.name)
    filename = (upload.filename or None) and upload.filename[:255]
    archive_format = detect_archive(path)
    if archive_format is not None:
        options = parse_image_options(request.form).to_json()
        origin = {"filename": filename, "format": archive_format, "bytes": path.stat().st_size}
        return ingest.begin_ingest(
            data_dir(), dataset_id, path, owner=owner(), origin=origin, options=options
        )
    return datasets.store_upload(
        data_dir(),
        dataset_id,
        Path(upload.stream.name),
        settings=settings(),
        owner=owner(),
        filename=filename,
        label=request.form.get("label", "label"),
        name=request.form.get("name", "x"),
    )


def _begin_import(dataset_id: str, document: dict) -> dict:
    """Record an import `processing`: its path confined to FITSERVE_IMPORT_DIR, its options."""
    _check_keys(document, IMPORT_KEYS, "an import request")
    relative = document["import"]
    if not isinstance(relative, str):
        message = "import names a file or folder inside FITSERVE_IMPORT_DIR."
        raise InvalidRequest(
            message, errors=[FieldError("/import", message, "a relative path", str(relative))]
        )
    options = {
        **parse_image_options(document).to_json(),
        "label": str(document.get("label", "label")),
        "name": str(document.get("name", "x")),
    }
    return ingest.begin_import(
        data_dir(), dataset_id, relative, settings=settings(), owner=owner(), options=options
    )


def _begin_resumable(dataset_id: str, document: dict) -> dict:
    """Record a finished resumable upload `processing`: its bytes move into the dataset's
    folder for the ingest task, and the upload is gone."""
    _check_keys(document, RESUMABLE_KEYS, "a dataset made of an upload")
    upload_id = document["upload"]
    if not isinstance(upload_id, str):
        message = "upload is the id of a finished resumable upload (/v1/uploads)."
        raise InvalidRequest(
            message, errors=[FieldError("/upload", message, "an upload id", str(upload_id))]
        )
    upload = visible_upload(upload_id)
    try:
        source = uploads.data_path(data_dir(), upload)
    except Conflict as error:
        raise Conflict(
            error.detail,
            errors=[FieldError("/upload", error.detail, "a finished upload", upload.offset)],
        ) from None
    options = {
        **parse_image_options(document).to_json(),
        "label": str(document.get("label", "label")),
        "name": str(document.get("name", "x")),
    }
    filename = upload.metadata.get("filename", "")[:255] or None
    origin = {"filename": filename, "upload": upload.id, "bytes": upload.length}
    manifest = ingest.begin_ingest(
        data_dir(), dataset_id, source, owner=owner(), origin=origin, options=options
    )
    uploads.delete_upload(data_dir(), upload.id)
    return manifest


def _check_keys(document: dict, allowed: tuple[str, ...], what: str) -> None:
    """InvalidRequest for a key the request may not have, or a `label` or `name` not text."""
    unknown = sorted(set(document) - set(allowed))
    if unknown:
        message = f"Unknown key {unknown[0]!r} in {what}."
        raise InvalidRequest(
            message,
            errors=[FieldError(f"/{unknown[0]}", message, " | ".join(allowed), unknown[0])],
        )
    for key in ("label", "name"):
        if key in document and not isinstance(document[key], str):
            message = f"{key} must be a string, as in the upload form."
            raise InvalidRequest(
                message, errors=[FieldError(f"/{key}", message, "a string", document[key])]
            )


def _fingerprint(document: Any, upload: FileStorage | None) -> str:
    """What makes two uploads the same: the JSON body, or the file's bytes, name and form."""
    if upload is None:
        return fingerprint(document)
    with open(upload.stream.name, "rb") as handle:
        content = hashlib.file_digest(handle, "sha256").hexdigest()
    form = sorted(request.form.items(multi=True))
    return fingerprint({"file": content, "filename": upload.filename, "form": form})


def _exists(dataset_id: str) -> bool:
    try:
        datasets.load_manifest(data_dir(), dataset_id)
    except NotFound:
        return False
    return True


def register(app: Flask) -> None:
    """Stream uploads to disk, sweep leftovers of interrupted ones, and add the routes."""
    app.request_class = UploadRequest
    datasets.remove_stale(app.extensions["fitserve.data"])
    app.register_blueprint(bp)
