"""The data volume: server-generated ids, paths under the data folder, atomic writes, hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from core.errors import NotFound

_ID = re.compile(r"[0-9a-f]{32}")
_CHUNK = 1 << 20


def new_id() -> str:
    """A fresh server id (uuid4 hex): the only strings that ever become folder names."""
    return uuid.uuid4().hex


def check_id(value: str, kind: str) -> str:
    """Return `value` if it has the shape of a server id, else raise NotFound (never a path)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise NotFound(f"No {kind} with id {value[:64]!r}: ids are 32 lowercase hex characters.")
    return value


def utc_now() -> str:
    """RFC 3339 UTC with milliseconds, the one timestamp format of the API and manifests."""
    return utc_time(datetime.now(UTC).timestamp())


def utc_time(seconds: float) -> str:
    """`utc_now`'s format for a moment given in seconds since the epoch."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temp file in the same folder, fsync, then `os.replace` it into place.

    The temp name keeps the suffix (Keras insists that a `.keras` path ends in `.keras`).
    A reader sees the old file or the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def temp_path_beside(path: Path) -> Path:
    """A unique temp path in `path`'s folder with its suffix, for writers that want a name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    return Path(tmp)


def write_json(path: Path, document: Any) -> None:
    """Atomically write `document` as indented JSON."""
    with atomic_file(path) as handle:
        handle.write(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def read_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


class DataDir:
    """Paths inside the data folder. Every path is built from a checked server id."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def uploads(self) -> Path:
        """Where uploads stream before they are checked; same filesystem as the datasets."""
        return self.root / "tmp"

    @property
    def resumable_uploads(self) -> Path:
        """Resumable (tus) uploads, one folder each, kept until they expire or become datasets."""
        return self.root / "uploads"

    def dataset(self, dataset_id: str) -> Path:
        return self.datasets / check_id(dataset_id, "dataset")

    def job(self, job_id: str) -> Path:
        return self.jobs / check_id(job_id, "job")

    def ensure(self) -> None:
        for folder in (self.datasets, self.jobs, self.uploads, self.resumable_uploads):
            folder.mkdir(parents=True, exist_ok=True)
