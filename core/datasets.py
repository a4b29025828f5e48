"""Datasets on the data volume: one `.npy` per array plus a manifest with per-array statistics.

A dataset is assembled in a staging folder under the uploads folder (same filesystem), its
manifest written last, and the whole folder renamed into `datasets/<id>`: a reader sees a complete
dataset or none. Array files are named by position (`a0.npy`, ...); user strings are metadata only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from core import readers
from core.cursors import decode_cursor, encode_cursor
from core.errors import (
    Conflict,
    FieldError,
    InvalidData,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    pointer,
    too_large_for_one_request,
)
from core.settings import Settings
from core.storage import DataDir, new_id, read_json, sha256_file, utc_now, write_json

MANIFEST = "manifest.json"
PROCESSING, READY, FAILED = "processing", "ready", "failed"
STATUSES = (PROCESSING, READY, FAILED)
# Inside a `processing` dataset's folder: where its arrays are written before they are published.
STAGING = "staging"
MAX_LABELS = 256
STALE_SECONDS = 6 * 3600


def store_upload(
    data: DataDir,
    dataset_id: str,
    source: Path,
    *,
    settings: Settings,
    owner: str | None,
    filename: str | None,
    label: str = "label",
    name: str = "x",
) -> dict:
    """Check and store an uploaded file (format read from its content); return the manifest.

    Reading it may take `settings.upload_cpu_seconds` of CPU; past that it is a 413.
    """
    budget = readers.CpuBudget(settings.upload_cpu_seconds)
    size = source.stat().st_size
    if size > settings.max_upload_bytes:
        raise PayloadTooLarge(too_large_for_one_request(size, settings.max_upload_bytes))
    file_format = readers.detect_format(source)
    # A .npy upload becomes its array file unchanged, so its hash comes from describing it.
    digest = None if file_format == "npy" else sha256_file(source)
    with staging(data, dataset_id) as folder:
        arrays = read_arrays(
            source, folder, file_format, settings=settings, budget=budget, label=label, name=name
        )
        origin = {"filename": filename, "format": file_format, "bytes": size, "sha256": digest}
        return finish(data, folder, dataset_id, arrays, origin, owner, "/file/arrays", budget)


def read_arrays(
    source: Path,
    folder: Path,
    file_format: str,
    *,
    settings: Settings,
    budget: readers.CpuBudget,
    label: str = "label",
    name: str = "x",
) -> readers.Arrays:
    """The arrays of a `.npy` (moved, not copied), `.npz` or CSV file, as `.npy`s in `folder`."""
    if file_format == "npy":
        return readers.read_npy(source, folder, name)
    if file_format == "npz":
        return readers.read_npz(source, folder, settings.max_dataset_bytes, budget)
    return readers.read_csv(source, folder, label, budget)


def store_json(
    data: DataDir,
    dataset_id: str,
    document: Any,
    body: bytes,
    *,
    settings: Settings,
    owner: str | None,
) -> dict:
    """Store `{"arrays": {name: nested lists}}`, already parsed from `body`; return the manifest."""
    budget = readers.CpuBudget(settings.upload_cpu_seconds)
    with staging(data, dataset_id) as folder:
        arrays = readers.arrays_from_json(document, folder)
        origin = {
            "filename": None,
            "format": "json",
            "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        return finish(data, folder, dataset_id, arrays, origin, owner, "/arrays", budget)


def store_files(
    data: DataDir,
    dataset_id: str,
    files: dict[str, Path],
    *,
    origin: dict,
    owner: str | None,
    classes: dict[str, list[str]] | None = None,
) -> dict:
    """Make a dataset of `.npy` files the server wrote itself (a batch prediction's outputs):
    hard-linked into the staging folder, so the originals stay until the dataset exists, then
    described like an upload; return the manifest."""
    with staging(data, dataset_id) as folder:
        arrays = readers.Arrays(classes=dict(classes or {}))
        for index, (name, path) in enumerate(files.items()):
            arrays.files[name] = folder / f"a{index}.npy"
            os.link(path, arrays.files[name])
        origin = {**origin, "bytes": sum(path.stat().st_size for path in files.values())}
        budget = readers.CpuBudget(float("inf"))
        return finish(
            data,
            folder,
            dataset_id,
            arrays,
            origin,
            owner,
            "/arrays",
            budget,
            describe=_describe_written,
        )


def _describe_written(path: Path, budget: readers.CpuBudget) -> dict:
    """A server-written array's manifest entry: text (class names, fixed-width unicode, which
    no upload may hold) gets its hash and labels; numbers are described as uploads are."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.dtype.kind != "U":
        return _describe(path, budget)
    labels = np.unique(array)
    return {
        "file": path.name,
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "stats": {
            "min": None,
            "max": None,
            "integer_valued": False,
            "nan": 0,
            "inf": 0,
            "labels": labels.tolist() if len(labels) <= MAX_LABELS else None,
        },
    }


def load_manifest(data: DataDir, dataset_id: str) -> dict:
    """The manifest of a stored dataset; NotFound for an unknown or malformed id."""
    path = data.dataset(dataset_id) / MANIFEST
    try:
        return read_json(path)
    except FileNotFoundError:
        raise NotFound(f"No dataset with id {dataset_id!r}.") from None
    except orjson.JSONDecodeError:
        raise Unavailable(
            f"The manifest of dataset {dataset_id} is unreadable.", code="corrupt_dataset"
        ) from None


def array_file(data: DataDir, dataset_id: str, name: str) -> Path:
    """The `.npy` file of a stored array, as its manifest lists it."""
    entry = load_manifest(data, dataset_id)["arrays"].get(name)
    if entry is None:
        raise NotFound(f"Dataset {dataset_id} has no array named {name!r}.")
    return data.dataset(dataset_id) / entry["file"]


def open_array(data: DataDir, dataset_id: str, name: str, *, verify: bool = False) -> np.ndarray:
    """A stored array, memory-mapped read-only; `verify` checks its sha256 against the manifest."""
    path = array_file(data, dataset_id, name)
    entry = load_manifest(data, dataset_id)["arrays"][name]
    if verify and sha256_file(path) != entry["sha256"]:
        raise InvalidData(
            f"Array {name!r} of dataset {dataset_id} does not match its manifest's sha256.",
            code="corrupt_dataset",
        )
    return np.load(path, mmap_mode="r", allow_pickle=False)


def list_manifests(
    data: DataDir, *, visible: Callable[[str | None], bool], limit: int, cursor: str | None
) -> tuple[list[dict], str | None]:
    """A page of manifests, newest first, of datasets whose owner is `visible`; and the next
    page's cursor (None on the last page)."""
    after = None if cursor is None else decode_cursor(cursor, str, str)
    manifests = []
    for folder in data.datasets.iterdir() if data.datasets.exists() else ():
        with contextlib.suppress(NotFound, FileNotFoundError, orjson.JSONDecodeError):
            manifest = read_json(data.dataset(folder.name) / MANIFEST)
            if visible(manifest.get("owner")) and (after is None or _key(manifest) < after):
                manifests.append(manifest)
    manifests.sort(key=_key, reverse=True)
    page = manifests[:limit]
    more = len(manifests) > limit
    return page, encode_cursor(*_key(page[-1])) if more else None


def delete_dataset(data: DataDir, dataset_id: str) -> None:
    """Remove a dataset: renamed out of `datasets/` at once (readers never see half), then
    deleted."""
    folder = data.dataset(dataset_id)
    trash = data.uploads / f"deleted-{dataset_id}-{new_id()}"
    data.uploads.mkdir(parents=True, exist_ok=True)
    try:
        folder.rename(trash)
    except FileNotFoundError:
        raise NotFound(f"No dataset with id {dataset_id!r}.") from None
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale(data: DataDir, older_than: float = STALE_SECONDS) -> None:
    """Delete leftovers of interrupted uploads: staging files and folders, and dataset folders
    without a manifest (never visible), once older than `older_than` seconds."""
    cutoff = time.time() - older_than
    candidates = list(data.uploads.iterdir()) if data.uploads.exists() else []
    if data.datasets.exists():
        candidates += [f for f in data.datasets.iterdir() if not (f / MANIFEST).exists()]
    for path in candidates:
        with contextlib.suppress(FileNotFoundError):
            if path.lstat().st_mtime < cutoff:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()


@contextlib.contextmanager
def staging(data: DataDir, dataset_id: str) -> Iterator[Path]:
    """A fresh staging folder for the dataset's arrays (what a killed attempt left is removed),
    deleted on the way out; `finish` moves what it holds into place. A `processing` dataset
    stages inside its own folder, which the sweep of stale uploads never touches however long
    its ingest takes."""
    processing = data.dataset(dataset_id)
    uploads = data.uploads / f"staging-{dataset_id}"
    folder = processing / STAGING if processing.is_dir() else uploads
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def finish(
    data: DataDir,
    folder: Path,
    dataset_id: str,
    arrays: readers.Arrays,
    origin: dict,
    owner: str | None,
    where: str,
    budget: readers.CpuBudget,
    extra: dict | None = None,
    describe: Callable[[Path, readers.CpuBudget], dict] | None = None,
) -> dict:
    """Describe every array (with `describe`, default `_describe`), check they share their rows,
    write the manifest (`status: ready`, plus `extra`), move into place."""
    describe = describe or _describe
    described = {name: describe(path, budget) for name, path in arrays.files.items()}
    rows = _common_rows(described, where)
    if origin["sha256"] is None:
        origin["sha256"] = next(iter(described.values()))["sha256"]
    manifest = {
        "id": dataset_id,
        "owner": owner,
        "created_at": utc_now(),
        "status": READY,
        "source": origin,
        "rows": rows,
        "bytes": sum(entry["bytes"] for entry in described.values()),
        "arrays": described,
        "classes": arrays.classes,
        "features": arrays.features,
        **(extra or {}),
    }
    write_json(folder / MANIFEST, manifest)
    _fsync_folder(folder)
    data.datasets.mkdir(parents=True, exist_ok=True)
    target = data.dataset(dataset_id)
    if target.exists():
        _publish_into(folder, target, arrays)
    else:
        folder.rename(target)
    _fsync_folder(data.datasets)
    return manifest


def _publish_into(folder: Path, target: Path, arrays: readers.Arrays) -> None:
    """Fill a `processing` dataset's folder: the arrays first, then the manifest replaces the
    processing one, so a reader sees the dataset processing until every array is in place."""
    if load_status(target) != PROCESSING:
        raise Conflict(f"Dataset {target.name} is no longer processing; nothing was published.")
    for path in arrays.files.values():
        path.replace(target / path.name)
    _fsync_folder(target)
    (folder / MANIFEST).replace(target / MANIFEST)
    _fsync_folder(target)


def status_of(manifest: dict) -> str:
    """`processing`, `ready` or `failed`; a manifest written before statuses existed is ready."""
    return manifest.get("status", READY)


def load_status(folder: Path) -> str | None:
    """The status of the dataset in `folder`, or None when it has no manifest (deleted)."""
    try:
        return status_of(read_json(folder / MANIFEST))
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def _describe(path: Path, budget: readers.CpuBudget) -> dict:
    """One array's manifest entry: a single chunked pass for its sha256 and statistics."""
    with open(path, "rb") as handle:
        header = readers.read_npy_header(handle, "/file")
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.shape != header.shape or array.dtype != header.dtype:
        raise InvalidData(f"{path.name} does not load as its header declares.")
    digest = hashlib.sha256()
    stats = _Stats(header.dtype)
    # hashlib and numpy release the GIL: hash each chunk on a second thread while its
    # statistics are computed, one chunk at a time so the hash sees them in order.
    with open(path, "rb") as handle, ThreadPoolExecutor(1) as hasher:
        hashing = hasher.submit(digest.update, handle.read(header.offset))
        while chunk := handle.read(readers.CHUNK_BYTES):
            budget.check()
            hashing.result()
            hashing = hasher.submit(digest.update, chunk)
            stats.update(np.frombuffer(chunk, dtype=header.dtype))
        hashing.result()
        os.fsync(handle.fileno())
    return {
        "file": path.name,
        "shape": list(header.shape),
        "dtype": header.dtype.name,
        "bytes": path.stat().st_size,
        "sha256": digest.hexdigest(),
        "stats": stats.summary(),
    }


def _common_rows(described: dict[str, dict], where: str) -> int:
    firsts = {entry["shape"][0] for entry in described.values()}
    if firsts == {0}:
        raise InvalidData(
            "The dataset has no rows.",
            errors=[FieldError(where, "Every array is empty.", "1 or more rows", 0)],
        )
    if len(firsts) == 1:
        return firsts.pop()
    raise InvalidData(
        "The arrays differ in their first dimension (rows); every array needs the same rows.",
        errors=[
            FieldError(
                pointer(*where.strip("/").split("/"), name),
                f"Array {name!r} has shape {entry['shape']}.",
                "the same first dimension in every array",
                entry["shape"],
            )
            for name, entry in described.items()
        ],
    )


class _Stats:
    """min/max over finite values, NaN and Inf counts, integer-valued, and up to 256 labels."""

    def __init__(self, dtype: np.dtype) -> None:
        self.floating = dtype.kind == "f"
        self.bytewise = dtype.itemsize == 1
        self.low: Any = None
        self.high: Any = None
        self.nan = 0
        self.inf = 0
        self.integer = True
        self.labels: set | None = set()

    def update(self, values: np.ndarray) -> None:
        if values.dtype.kind == "b":
            values = values.view(np.uint8)
        if self.floating:
            finite = np.isfinite(values)
            if not finite.all():
                nan = int(np.count_nonzero(np.isnan(values)))
                self.nan += nan
                self.inf += values.size - int(np.count_nonzero(finite)) - nan
                values = values[finite]
            if self.integer and values.size:
                self.integer = bool(np.array_equal(values, np.trunc(values)))
        if not values.size:
            return
        low, high = values.min().item(), values.max().item()
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)
        self._update_labels(values)

    def _update_labels(self, values: np.ndarray) -> None:
        if self.labels is None:
            return
        if self.bytewise:
            counts = np.bincount(values.view(np.uint8), minlength=256)
            distinct = np.flatnonzero(counts).astype(np.uint8).view(values.dtype)
        else:
            distinct = np.unique(values)
        if len(distinct) > MAX_LABELS:
            self.labels = None
            return
        self.labels.update(distinct.tolist())
        if len(self.labels) > MAX_LABELS:
            self.labels = None

    def summary(self) -> dict:
        return {
            "min": self.low,
            "max": self.high,
            "integer_valued": self.integer,
            "nan": self.nan,
            "inf": self.inf,
            "labels": None if self.labels is None else sorted(self.labels),
        }


def _key(manifest: dict) -> tuple[str, str]:
    return manifest["created_at"], manifest["id"]


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
