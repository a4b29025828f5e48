"""Resumable uploads (tus 1.0): a file sent in chunks to `uploads/<id>/` that may stop and resume.

An upload is a folder named by a server id holding `info.json` (owner, declared length, the
client's metadata, written once at creation) and `data`, the bytes received so far. The offset is
never stored: it is the size of `data`, which is fsynced before an offset is answered, so a
request killed halfway leaves an offset that matches the bytes on disk. A chunk with a checksum
goes to `chunk` first and is appended only once it matches, so a mismatched or cut chunk leaves
nothing behind. One writer at a time per upload (an exclusive lock on `data`); a second gets a
Conflict. An upload expires `expiry_seconds` after its last write and is then removed by
`remove_expired`, which the API runs as uploads are used.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from core.errors import (
    ChecksumMismatch,
    Conflict,
    FieldError,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
)
from core.settings import Settings
from core.storage import DataDir, check_id, new_id, read_json, write_json

INFO = "info.json"
DATA = "data"
CHUNK = "chunk"
# Upload-Checksum algorithms (tus's checksum extension names them as hashlib does).
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "md5")
# Upload-Metadata: at most this many pairs, keys of this shape, values this long once decoded.
MAX_METADATA_PAIRS = 32
MAX_METADATA_VALUE_BYTES = 1024
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_COPY_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Upload:
    """One upload as its files describe it; `offset` is the bytes received so far."""

    id: str
    owner: str | None
    length: int
    offset: int
    metadata: dict[str, str]
    expires_at: float

    @property
    def finished(self) -> bool:
        return self.offset == self.length


def upload_folder(data: DataDir, upload_id: str) -> Path:
    """`uploads/<id>`, from a checked server id (NotFound for anything else)."""
    return data.resumable_uploads / check_id(upload_id, "upload")


def parse_metadata(header: str) -> dict[str, str]:
    """Upload-Metadata: comma-separated `key base64value` pairs (the value may be absent);
    values are kept as UTF-8 text. MalformedRequest names what is wrong."""
    metadata: dict[str, str] = {}
    pairs = [pair.strip() for pair in header.split(",") if pair.strip()]
    if len(pairs) > MAX_METADATA_PAIRS:
        raise _bad_metadata(f"it has {len(pairs)} pairs; at most {MAX_METADATA_PAIRS} are taken")
    for pair in pairs:
        key, _, encoded = pair.partition(" ")
        if not _METADATA_KEY.fullmatch(key) or key in metadata:
            raise _bad_metadata(f"key {key[:64]!r} is malformed or repeated")
        try:
            value = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise _bad_metadata(f"the value of {key!r} is not base64 of UTF-8 text") from None
        if len(value.encode()) > MAX_METADATA_VALUE_BYTES:
            raise _bad_metadata(f"the value of {key!r} is over {MAX_METADATA_VALUE_BYTES} bytes")
        metadata[key] = value
    return metadata


def check_length(length: int, settings: Settings) -> None:
    """PayloadTooLarge when an upload of `length` bytes could not become a dataset."""
    if length > settings.max_dataset_bytes:
        raise PayloadTooLarge(
            f"Upload-Length is {length} bytes; a dataset may hold at most "
            f"{settings.max_dataset_bytes} bytes (FITSERVE_MAX_DATASET_BYTES)."
        )


def create_upload(
    data: DataDir,
    *,
    length: int,
    metadata: dict[str, str],
    owner: str | None,
    settings: Settings,
) -> Upload:
    """A new, empty upload of `length` bytes for `owner`, within the dataset size cap (the
    caller checks the key's storage quota first)."""
    check_length(length, settings)
    upload_id = new_id()
    folder = upload_folder(data, upload_id)
    staging = data.resumable_uploads / f".new-{upload_id}"
    staging.mkdir(parents=True)
    (staging / DATA).touch()
    write_json(staging / INFO, {"owner": owner, "length": length, "metadata": metadata})
    # Complete or absent: a reader never finds an upload without its info.
    staging.rename(folder)
    return load_upload(data, upload_id, settings)


def load_upload(data: DataDir, upload_id: str, settings: Settings) -> Upload:
    """The upload with this id; NotFound when there is none or it has expired (then removed)."""
    folder = upload_folder(data, upload_id)
    try:
        info = read_json(folder / INFO)
        created = (folder / INFO).stat().st_mtime
        written = (folder / DATA).stat()
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"No upload with id {upload_id!r}.") from None
    upload = Upload(
        id=upload_id,
        owner=info["owner"],
        length=info["length"],
        offset=written.st_size,
        metadata=info["metadata"],
        expires_at=max(created, written.st_mtime) + settings.upload_expiry_seconds,
    )
    if upload.expires_at <= time.time():
        delete_upload(data, upload_id)
        raise NotFound(f"No upload with id {upload_id!r}: it expired and was removed.")
    return upload


def append_chunk(
    data: DataDir,
    upload: Upload,
    *,
    offset: int,
    stream: IO[bytes],
    declared: int | None,
    checksum: tuple[str, bytes] | None,
) -> int:
    """Append a PATCH body at `offset` (which must be the upload's offset); the new offset.

    The body is read from `stream` in bounded chunks and never held whole. `declared` is its
    Content-Length, if any; `checksum` is (algorithm, digest) from Upload-Checksum.
    """
    remaining = upload.length - upload.offset
    if declared is not None and declared > remaining:
        raise PayloadTooLarge(
            f"The chunk has {declared} bytes but only {remaining} remain of the upload's "
            f"Upload-Length {upload.length}."
        )
    folder = upload_folder(data, upload.id)
    with _writer(folder / DATA, upload.id) as target:
        current = os.fstat(target.fileno()).st_size
        if offset != current:
            raise Conflict(
                f"Upload-Offset is {offset} but the upload has {current} bytes; resume from "
                f"{current} (HEAD tells the offset).",
            )
        if checksum is None:
            _receive(stream, target, remaining)
        else:
            _receive_checked(folder / CHUNK, stream, target, remaining, checksum)
        target.flush()
        return os.fstat(target.fileno()).st_size


def delete_upload(data: DataDir, upload_id: str) -> None:
    """Remove an upload's folder (renamed away first, so no reader sees half of it)."""
    folder = upload_folder(data, upload_id)
    trash = data.resumable_uploads / f".deleted-{upload_id}-{new_id()}"
    try:
        folder.rename(trash)
    except FileNotFoundError:
        raise NotFound(f"No upload with id {upload_id!r}.") from None
    shutil.rmtree(trash, ignore_errors=True)


def remove_expired(data: DataDir, settings: Settings) -> list[str]:
    """Delete uploads past their expiry and leftovers of interrupted creations and deletions;
    the ids of the uploads removed."""
    removed = []
    folders = data.resumable_uploads.iterdir() if data.resumable_uploads.is_dir() else ()
    cutoff = time.time() - settings.upload_expiry_seconds
    for folder in folders:
        if folder.name.startswith("."):
            with contextlib.suppress(FileNotFoundError):
                if folder.lstat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
        elif _expired(data, folder.name, settings):
            removed.append(folder.name)
    return removed


def _expired(data: DataDir, upload_id: str, settings: Settings) -> bool:
    """Whether loading the upload found it expired (and removed it)."""
    try:
        load_upload(data, upload_id, settings)
    except NotFound:
        return not upload_folder(data, upload_id).exists()
    return False


def reserved_bytes(data: DataDir, owner: str | None) -> int:
    """The declared lengths of `owner`'s uploads (everyone's when None): what they will hold."""
    total = 0
    folders = data.resumable_uploads.iterdir() if data.resumable_uploads.is_dir() else ()
    for folder in folders:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, ValueError):
            info = read_json(folder / INFO)
            if owner is None or info.get("owner") == owner:
                total += int(info["length"])
    return total


def data_path(data: DataDir, upload: Upload) -> Path:
    """The file holding a finished upload's bytes, for turning it into a dataset."""
    if not upload.finished:
        raise Conflict(
            f"Upload {upload.id} has {upload.offset} of its {upload.length} bytes; finish it "
            "(PATCH the rest) before making a dataset of it."
        )
    return upload_folder(data, upload.id) / DATA


@contextlib.contextmanager
def _writer(path: Path, upload_id: str) -> Iterator[IO[bytes]]:
    """`data` opened for appending under an exclusive lock; fsynced before it is let go."""
    try:
        handle = open(path, "ab")  # noqa: SIM115  closed below, after the fsync
    except FileNotFoundError:
        raise NotFound(f"No upload with id {upload_id!r}.") from None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(
                f"Another request is writing to upload {upload_id}; wait for it to end, then "
                "ask for the offset (HEAD) and resume."
            ) from None
        try:
            yield handle
        finally:
            # Whatever arrived before a cut is kept and counted: the offset is what is on disk.
            handle.flush()
            os.fsync(handle.fileno())


def _receive(stream: IO[bytes], target: IO[bytes], remaining: int) -> None:
    """Copy the body into `target`, refusing (and taking back) a body longer than `remaining`."""
    start = target.tell()
    copied = _copy(stream, target, remaining)
    if copied == remaining and stream.read(1):
        target.flush()
        os.truncate(target.fileno(), start)
        raise PayloadTooLarge(f"The chunk is longer than the {remaining} bytes that remain.")


def _receive_checked(
    chunk_path: Path,
    stream: IO[bytes],
    target: IO[bytes],
    remaining: int,
    checksum: tuple[str, bytes],
) -> None:
    """Receive the body into `chunk`, compare its digest, and append it only if it matches."""
    algorithm, expected = checksum
    try:
        with open(chunk_path, "w+b") as chunk:
            _receive(stream, chunk, remaining)
            chunk.seek(0)
            digest = hashlib.file_digest(chunk, algorithm).digest()
            if digest != expected:
                raise ChecksumMismatch(
                    f"The chunk's {algorithm} is {base64.b64encode(digest).decode()}, not the "
                    f"{base64.b64encode(expected).decode()} Upload-Checksum names; it was "
                    "discarded. Send it again."
                )
            chunk.seek(0)
            shutil.copyfileobj(chunk, target, _COPY_BYTES)
    finally:
        with contextlib.suppress(FileNotFoundError):
            chunk_path.unlink()


def _copy(stream: IO[bytes], target: IO[bytes], limit: int) -> int:
    """Copy up to `limit` bytes. A connection that breaks raises from `stream` (werkzeug's
    ClientDisconnected, a 400); what arrived before it stays written."""
    copied = 0
    while copied < limit:
        block = stream.read(min(_COPY_BYTES, limit - copied))
        if not block:
            break
        target.write(block)
        copied += len(block)
    return copied


def _bad_metadata(reason: str) -> MalformedRequest:
    message = f"Upload-Metadata is malformed: {reason}."
    expected = "comma-separated 'key base64value' pairs"
    return MalformedRequest(
        message, errors=[FieldError("/headers/Upload-Metadata", message, expected)]
    )
