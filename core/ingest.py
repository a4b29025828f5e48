"""Datasets that take longer than a request: image archives, imports, finished uploads.

The API records the dataset `processing` (`begin_ingest`, `begin_import`): its folder holds the
source file and a manifest with the options; it then sends the ingest task (core.queues). The CPU
task worker runs `run_ingest`, which turns the source into arrays with `ingest_file` and publishes
the dataset `ready` (the manifest replaced last, once every array is in place and hashed), or
records it `failed` with the error. A killed ingest leaves it `processing`: its task is
redelivered and starts over, or, with no message left and no sign of life (the manifest's mtime,
touched as it reads) for `ingest_stall_seconds`, `settle_stale` fails it when it is next read.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core import datasets, readers
from core.archives import ArchiveLimits, ImageOptions, detect_archive, read_images
from core.datasets import FAILED, MANIFEST, PROCESSING
from core.errors import (
    FieldError,
    FitserveError,
    Forbidden,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
)
from core.settings import Settings
from core.storage import DataDir, read_json, utc_now, write_json
from core.usage import refuse_over_bytes

log = logging.getLogger("fitserve.ingest")

SOURCE = "source"
ARCHIVE_FORMATS = ("zip", "tar", "tar.gz")
# How often a running ingest touches its manifest, proving it lives.
TOUCH_SECONDS = 5.0


class IngestProgress(readers.CpuBudget):
    """The readers' per-chunk check, used as a sign of life: no CPU cap (the task worker has
    time; the sizes are capped), the manifest touched every TOUCH_SECONDS."""

    def __init__(self, manifest: Path | None) -> None:
        super().__init__(float("inf"))
        self.manifest = manifest
        self.touched = time.monotonic()

    def check(self) -> None:
        now = time.monotonic()
        if self.manifest is not None and now - self.touched > TOUCH_SECONDS:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.manifest)
            self.touched = now


def begin_ingest(
    data: DataDir,
    dataset_id: str,
    source: Path,
    *,
    owner: str | None,
    origin: Mapping[str, Any],
    options: Mapping[str, Any],
) -> dict:
    """Record the dataset `processing` with `source` moved into its folder; the manifest."""
    folder = data.dataset(dataset_id)
    folder.mkdir(parents=True)
    source.replace(folder / SOURCE)
    return _write_processing(folder, dataset_id, owner, origin, options)


def begin_import(
    data: DataDir,
    dataset_id: str,
    relative: str,
    *,
    settings: Settings,
    owner: str | None,
    options: Mapping[str, Any],
) -> dict:
    """Record an import `processing` once its path is found confined to the import folder."""
    found = resolve_import(settings, relative)
    origin = {"import": relative, "format": "folder" if found.is_dir() else None}
    folder = data.dataset(dataset_id)
    folder.mkdir(parents=True)
    return _write_processing(folder, dataset_id, owner, origin, options)


def _write_processing(
    folder: Path,
    dataset_id: str,
    owner: str | None,
    origin: Mapping[str, Any],
    options: Mapping[str, Any],
) -> dict:
    manifest = {
        "id": dataset_id,
        "owner": owner,
        "created_at": utc_now(),
        "status": PROCESSING,
        "source": dict(origin),
        "options": dict(options),
        "rows": 0,
        "bytes": 0,
        "arrays": {},
        "classes": {},
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def resolve_import(settings: Settings, relative: str) -> Path:
    """The path `relative` names inside FITSERVE_IMPORT_DIR, refused (403 when imports are off,
    422 for `..`, absolute paths or a link that leaves the folder, 404 when it is not there)."""
    if not settings.import_dir:
        raise Forbidden(
            "Imports are off: set FITSERVE_IMPORT_DIR to the folder whose files may be imported.",
            code="imports_off",
        )
    root = Path(settings.import_dir).resolve()
    parts = relative.replace("\\", "/").split("/") if isinstance(relative, str) else []
    if not relative or relative.startswith(("/", "\\")) or ".." in parts or "\x00" in relative:
        raise _bad_import(relative, "a path relative to FITSERVE_IMPORT_DIR, without '..'")
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise _bad_import(relative, "a path whose links stay inside FITSERVE_IMPORT_DIR")
    if not target.exists():
        raise NotFound(f"Nothing named {relative[:200]!r} in FITSERVE_IMPORT_DIR.")
    return target


def _bad_import(relative: Any, expected: str) -> FitserveError:
    message = "The import path leaves FITSERVE_IMPORT_DIR."
    return InvalidRequest(
        message, errors=[FieldError("/import", message, expected, str(relative)[:200])]
    )


def run_ingest(data: DataDir, dataset_id: str, settings: Settings) -> str:
    """The ingest task's work: the dataset's outcome (`ready`, `failed`, or its status when it
    was not processing, `deleted` when it is gone)."""
    folder = data.dataset(dataset_id)
    try:
        manifest = datasets.load_manifest(data, dataset_id)
    except NotFound:
        return "deleted"
    status = datasets.status_of(manifest)
    if status != PROCESSING:
        return status
    # A task redelivered after its worker died (killed for memory on one image, say) must not
    # start over forever: past FITSERVE_MAX_ATTEMPTS it fails.
    manifest["attempt"] = int(manifest.get("attempt", 0)) + 1
    if manifest["attempt"] > settings.max_attempts:
        lost = _lost(settings.max_attempts, "each attempt's worker was lost")
        mark_failed(folder, manifest, lost)
        return FAILED
    write_json(folder / MANIFEST, manifest)
    try:
        source = _local_source(folder, manifest, settings)
        ingest_file(
            data,
            dataset_id,
            source,
            manifest["options"],
            manifest["owner"],
            settings=settings,
            origin=manifest["source"],
            progress=IngestProgress(folder / MANIFEST),
        )
    except FitserveError as error:
        mark_failed(folder, manifest, error)
        return FAILED
    except BaseException as error:
        mark_failed(folder, manifest, error)
        raise
    finally:
        _remove_source(folder)
    return datasets.READY


def _local_source(folder: Path, manifest: Mapping[str, Any], settings: Settings) -> Path:
    """The file to read: the uploaded one in the folder; an imported file hard-linked (else
    copied) into the folder before it is read, so what is hashed is what is kept; an imported
    folder of images as it is (each image is decoded and the result hashed)."""
    relative = manifest["source"].get("import")
    if relative is None:
        return folder / SOURCE
    found = resolve_import(settings, relative)
    if found.is_dir():
        return found
    target = folder / SOURCE
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        os.link(found, target, follow_symlinks=False)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(found, target, follow_symlinks=False)
    return target


def ingest_file(
    data: DataDir,
    dataset_id: str,
    path: Path,
    options: Mapping[str, Any],
    owner: str | None,
    *,
    settings: Settings,
    origin: Mapping[str, Any] | None = None,
    progress: readers.CpuBudget | None = None,
) -> dict:
    """Turn the file at `path` (.npy, .npz, CSV, .zip/.tar/.tar.gz of class folders, or a folder
    of class folders) into dataset `dataset_id`, published `ready`; its manifest.

    `options`: `label` and `name` as for uploads, and the image options (core.archives). The
    key's storage quota and the free disk are checked against what the data expands to before
    it is written.
    """
    budget = progress or IngestProgress(None)
    file_format = _detect(path)
    origin = {"filename": None, **(origin or {}), "format": file_format}
    origin["bytes"] = _size(path)
    origin.setdefault("sha256", None)

    def check_room(expanded: int) -> None:
        _check_room(data, settings, owner, expanded)

    with datasets.staging(data, dataset_id) as folder:
        extra: dict[str, Any] = {"options": dict(options)}
        if file_format in (*ARCHIVE_FORMATS, "folder"):
            image_options = ImageOptions.from_json(options)
            limits = ArchiveLimits(
                max_members=settings.max_archive_members,
                max_classes=settings.max_archive_classes,
                max_bytes=settings.max_dataset_bytes,
                max_image_pixels=settings.max_image_pixels,
                check_room=check_room,
            )
            images = read_images(path, file_format, folder, image_options, limits, budget)
            arrays = images.arrays
            extra["skipped"] = images.skipped
        else:
            check_room(origin["bytes"])
            arrays = datasets.read_arrays(
                path,
                folder,
                file_format,
                settings=settings,
                budget=budget,
                label=str(options.get("label", "label")),
                name=str(options.get("name", "x")),
            )
        return datasets.finish(
            data, folder, dataset_id, arrays, origin, owner, "/file/arrays", budget, extra
        )


def _detect(path: Path) -> str:
    if path.is_dir():
        return "folder"
    return detect_archive(path) or readers.detect_format(path)


def _size(path: Path) -> int:
    if path.is_dir():
        return 0
    return path.stat().st_size


def _check_room(data: DataDir, settings: Settings, owner: str | None, expanded: int) -> None:
    """507 when the key's quota or the data volume's free space cannot take `expanded` bytes."""
    refuse_over_bytes(data, settings, owner, expanded)
    free = shutil.disk_usage(data.root).free
    if expanded > free:
        raise InsufficientStorage(
            f"The dataset needs {expanded} bytes but the data volume has {free} free."
        )


def mark_failed(folder: Path, manifest: Mapping[str, Any], error: BaseException) -> None:
    """Record the dataset `failed` with its error: the message, the member it names, the
    field errors. Leftover arrays are removed; a deleted dataset stays deleted."""
    if isinstance(error, FitserveError):
        message, code = error.detail, error.code
        errors = [entry.to_dict() for entry in error.errors]
    else:
        message, code, errors = "The dataset could not be read (an internal error).", "internal", []
    member = next(
        (entry["received"] for entry in errors if entry["path"].startswith("/file/members/")),
        None,
    )
    failed = {
        **manifest,
        "status": FAILED,
        "failed_at": utc_now(),
        "error": {"message": message, "code": code, "member": member, "errors": errors},
    }
    if not folder.exists():
        return
    write_json(folder / MANIFEST, failed)
    # What a killed attempt left: its half-written arrays and the source, never to be read.
    shutil.rmtree(folder / datasets.STAGING, ignore_errors=True)
    _remove_source(folder)
    log.info("dataset_failed dataset=%s code=%s member=%s", manifest["id"], code, member)


def _remove_source(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (folder / SOURCE).unlink()


def _lost(attempts: int | None, why: str) -> FitserveError:
    tried = "" if attempts is None else f" after {attempts} attempts"
    return FitserveError(
        f"The ingest stopped{tried} ({why}): delete the dataset and send it again, or, if it "
        "holds huge images, with a smaller FITSERVE_MAX_IMAGE_PIXELS.",
        code="worker_lost",
    )


def settle_stale(
    data: DataDir, manifest: dict, settings: Settings, waiting: Callable[[], set[str]]
) -> dict:
    """The manifest as it should read: a `processing` one whose ingest shows no sign of life
    for `ingest_stall_seconds` and whose task no longer waits in its queue is failed now."""
    if datasets.status_of(manifest) != PROCESSING:
        return manifest
    path = data.dataset(manifest["id"]) / MANIFEST
    try:
        quiet = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return manifest
    if quiet < settings.ingest_stall_seconds or manifest["id"] in waiting():
        return manifest
    mark_failed(path.parent, manifest, _lost(None, f"no sign of life for {int(quiet)} s"))
    with contextlib.suppress(FileNotFoundError):
        return read_json(path)
    return manifest
