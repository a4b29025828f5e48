"""Files to the server without holding them in memory: a streamed multipart body for small
files, and resumable tus uploads (tuspy) for large ones, resumed after an interruption.

An interrupted resumable upload is found again by the file (its resolved path, size and
modification time) and the server it was going to: their upload URL is kept in a small store
(tuspy's FileStorage) under the user's cache folder, and the next upload of the same file asks
the server for the offset and sends only the rest.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError
from tusclient.fingerprint.interface import Fingerprint
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader import Uploader

# Files above this many bytes go up as resumable uploads (the server's 413 names this figure).
RESUMABLE_THRESHOLD = 64 << 20
# Each PATCH carries this much (tuspy reads one chunk into memory at a time).
CHUNK_BYTES = 16 << 20
_READ_BYTES = 1 << 20
Progress = Callable[[int, int], None]


class MultipartBody(io.RawIOBase):
    """A multipart/form-data body with one file part, read from disk as it is sent.

    `len(body)` is its exact size, so requests sends a Content-Length (a proxy then refuses an
    oversized upload before any byte of it is read) and streams the file in bounded blocks.
    """

    def __init__(self, path: Path, form: dict[str, str]) -> None:
        self.boundary = uuid.uuid4().hex
        fields = b"".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
            for name, value in form.items()
        )
        filename = path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        self.head = (
            fields
            + (
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
        )
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.size = path.stat().st_size
        self.file: IO[bytes] = open(path, "rb")  # noqa: SIM115  closed with the body
        self.parts: list[IO[bytes]] = [io.BytesIO(self.head), self.file, io.BytesIO(self.tail)]
        self.position = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        # requests sizes a body as its length less its position; without one it would send it
        # chunked, by lines, which reads a file without newlines whole.
        return self.position

    def read(self, size: int | None = -1) -> bytes:
        wanted = _READ_BYTES if size is None or size < 0 else size
        while self.parts:
            block = self.parts[0].read(wanted)
            if block:
                self.position += len(block)
                return block
            self.parts.pop(0)
        return b""

    def close(self) -> None:
        self.file.close()
        super().close()


class FileIdentity(Fingerprint):
    """A file known by its resolved path, size and modification time, and the server: the same
    file sent again to the same server resumes; a changed file starts over."""

    def __init__(self, path: Path, server: str) -> None:
        self.path = path
        self.server = server

    def key(self) -> str:
        stat = self.path.stat()
        return f"{self.server}|{self.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    def get_fingerprint(self, fs: IO) -> str:
        return self.key()


def default_store_path() -> Path:
    """Where interrupted uploads are remembered: `$XDG_CACHE_HOME/fitserve` (or ~/.cache)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "fitserve" / "uploads.json"


def upload_resumable(
    server: str,
    path: Path,
    headers: dict[str, str],
    *,
    chunk_bytes: int = CHUNK_BYTES,
    checksum: bool = False,
    store_path: Path | None = None,
    progress: Progress | None = None,
) -> str:
    """Send `path` to `server`'s /v1/uploads with tuspy, resuming where an earlier try stopped;
    returns the upload's id once every byte is on the server.

    Args:
        server: the base URL (`http://host:port`).
        headers: sent with every request (the API key).
        chunk_bytes: the bytes of each PATCH.
        checksum: send each chunk's sha1 (Upload-Checksum); the server discards a mismatch.
        store_path: the file that remembers interrupted uploads (see `default_store_path`).
        progress: called with (bytes on the server, file size) after each chunk.
    """
    store_path = store_path or default_store_path()
    store_path.parent.mkdir(parents=True, exist_ok=True)
    storage = FileStorage(str(store_path))
    identity = FileIdentity(path, server)
    tus = tus_client.TusClient(f"{server}/v1/uploads", headers=headers)

    def make(handle: IO[bytes]) -> FileUploader:
        return FileUploader(
            file_stream=handle,
            client=tus,
            chunk_size=chunk_bytes,
            metadata={"filename": path.name},
            store_url=True,
            url_storage=storage,
            fingerprinter=identity,
            upload_checksum=checksum,
            retries=2,
            retry_delay=1,
        )

    with storage_closed(storage), open(path, "rb") as handle:
        try:
            uploader = make(handle)
        except TusCommunicationError:
            # The upload an earlier try began has expired or was removed: start over.
            storage.remove_item(identity.key())
            uploader = make(handle)
        size = uploader.get_file_size()
        if progress:
            progress(uploader.offset, size)
        if uploader.url is None:
            uploader.set_url(uploader.create_url())
        while uploader.offset < size:
            uploader.upload_chunk()
            if progress:
                progress(uploader.offset, size)
        storage.remove_item(identity.key())
        return str(uploader.url).rstrip("/").rsplit("/", 1)[1]


class FileUploader(Uploader):
    """tuspy's uploader over an open file, known by `FileIdentity`: tuspy's own fingerprint
    closes the stream it reads, and with a path it opens the file again for every chunk."""

    def _get_fingerprint(self) -> str:
        if not isinstance(self.fingerprinter, FileIdentity):
            raise TypeError("FileUploader needs a FileIdentity fingerprinter")
        return self.fingerprinter.key()


@contextlib.contextmanager
def storage_closed(storage: FileStorage) -> Iterator[FileStorage]:
    try:
        yield storage
    finally:
        storage.close()
