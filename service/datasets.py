"""`/v1/datasets`: upload (multipart file or JSON arrays), list, show, delete.

Uploads stream to disk: `UploadRequest` gives werkzeug's multipart parser a file in the data
folder's uploads area, so a file part is never held in memory and is moved, not copied, into its
dataset when it is a `.npy`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import redis
from flask import Blueprint, Flask, Request, request
from werkzeug.formparser import FormDataParser

from core import datasets
from core.errors import (
    Conflict,
    FieldError,
    InvalidRequest,
    MalformedRequest,
    NotFound,
    Unavailable,
    UnsupportedMediaType,
)
from core.rediskeys import dataset_idempotency_key
from core.storage import new_id
from service.auth import can_see, owner
from service.http import idempotency_key, json_body, json_response, page_args
from service.limits import check_dataset_quota, keep_within_dataset_quota
from service.state import data_dir, job_store, redis_client, settings

log = logging.getLogger("fitserve.service")
bp = Blueprint("datasets", __name__, url_prefix="/v1/datasets")

IDEMPOTENCY_TTL = 24 * 3600
# While an upload with a key is in progress its claim expires sooner, so a crashed upload does
# not block its key for a day.
CLAIM_TTL = 3600
ACCEPTED_TYPES = "multipart/form-data (field 'file') or application/json ({'arrays': {...}})"


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
def create_dataset():
    """Upload a dataset: 201 with its manifest, or 200 with the one an Idempotency-Key made."""
    is_json = request.mimetype == "application/json" or request.mimetype.endswith("+json")
    if request.mimetype != "multipart/form-data" and not is_json:
        raise UnsupportedMediaType(
            f"Expected {ACCEPTED_TYPES}, got Content-Type {request.mimetype or 'none'!r}."
        )
    with _claim(idempotency_key()) as (dataset_id, existing):
        if existing is not None:
            return _manifest_response(existing, 200)
        check_dataset_quota(owner())
        manifest = _store_json(dataset_id) if is_json else _store_multipart(dataset_id)
        keep_within_dataset_quota(manifest)
    return _manifest_response(manifest, 201)


@bp.get("")
def list_datasets():
    """The caller's datasets (all of them for an admin key), newest first."""
    limit, cursor = page_args()
    items, next_cursor = datasets.list_manifests(
        data_dir(), visible=can_see, limit=limit, cursor=cursor
    )
    return json_response({"items": items, "next_cursor": next_cursor})


@bp.get("/<dataset_id>")
def show_dataset(dataset_id: str):
    return json_response(visible_manifest(dataset_id))


@bp.delete("/<dataset_id>")
def delete_dataset(dataset_id: str):
    """204, or 409 while a live job uses the dataset (the jobs keep a Redis set of their ids)."""
    visible_manifest(dataset_id)
    with _redis_guard("nothing was deleted"):
        users = job_store().count_live_using(dataset_id)
    if users:
        raise Conflict(f"Dataset {dataset_id} is used by {users} live job(s); nothing was deleted.")
    datasets.delete_dataset(data_dir(), dataset_id)
    return "", 204


def visible_manifest(dataset_id: str) -> dict:
    """The manifest of a dataset this request may use; someone else's is as unknown as none."""
    manifest = datasets.load_manifest(data_dir(), dataset_id)
    if not can_see(manifest.get("owner")):
        raise NotFound(f"No dataset with id {dataset_id!r}.")
    return manifest


def _manifest_response(manifest: dict, status: int):
    return json_response(manifest, status, {"Location": f"/v1/datasets/{manifest['id']}"})


def _store_multipart(dataset_id: str) -> dict:
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
    return datasets.store_upload(
        data_dir(),
        dataset_id,
        Path(upload.stream.name),
        settings=settings(),
        owner=owner(),
        filename=(upload.filename or None) and upload.filename[:255],
        label=request.form.get("label", "label"),
        name=request.form.get("name", "x"),
    )


def _store_json(dataset_id: str) -> dict:
    document = json_body()
    body = request.get_data(cache=True)
    return datasets.store_json(data_dir(), dataset_id, document, body, owner=owner())


@contextlib.contextmanager
def _claim(key: str | None) -> Iterator[tuple[str, dict | None]]:
    """Yield (new dataset id, None), or (id, manifest) when the key already made a dataset.

    The key is claimed in Redis before anything is stored (SET NX), released if the upload fails,
    and kept for a day once it succeeded, so a repeat never stores a second copy.
    """
    dataset_id = new_id()
    if key is None:
        yield dataset_id, None
        return
    name = dataset_idempotency_key(owner(), key)
    client = redis_client()
    with _redis_guard("nothing was stored"):
        earlier = _claim_key(client, name, dataset_id)
    if earlier is not None:
        yield earlier["id"], earlier
        return
    try:
        yield dataset_id, None
    except BaseException:
        with contextlib.suppress(redis.RedisError):
            client.delete(name)
        raise
    try:
        client.set(name, dataset_id, xx=True, ex=IDEMPOTENCY_TTL)
    except redis.RedisError as error:
        # The dataset is stored, and the pending claim expires: log, don't fail the upload.
        log.warning("idempotency_record_failed dataset=%s error=%s", dataset_id, error)


def _claim_key(client: redis.Redis, name: str, dataset_id: str) -> dict | None:
    """Claim `name` for `dataset_id`; return the manifest the key already made, if any.

    A claim is `pending:<id>` until the upload succeeds; a key whose dataset has since been
    deleted is claimed again.
    """
    if client.set(name, f"pending:{dataset_id}", nx=True, ex=CLAIM_TTL):
        return None
    earlier = (client.get(name) or b"").decode()
    if earlier.startswith("pending:"):
        raise Conflict(
            "An upload with this Idempotency-Key is still in progress; retry when it has ended."
        )
    with contextlib.suppress(NotFound):
        return datasets.load_manifest(data_dir(), earlier)
    client.set(name, f"pending:{dataset_id}", ex=CLAIM_TTL)
    return None


@contextlib.contextmanager
def _redis_guard(consequence: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as error:
        raise Unavailable(f"Redis is unavailable ({error}); {consequence}.") from None


def install(app: Flask) -> None:
    """Stream uploads to disk, sweep leftovers of interrupted ones, and add the routes."""
    app.request_class = UploadRequest
    datasets.remove_stale(app.extensions["fitserve.data"])
    app.register_blueprint(bp)
