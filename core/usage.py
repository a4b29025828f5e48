"""What a key stores, counted from the data volume, which is the record of it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import TypedDict

from core.checkpoints import CHECKPOINTS
from core.datasets import MANIFEST
from core.errors import InsufficientStorage
from core.serving.export import EXPORTS
from core.settings import Settings
from core.storage import DataDir, read_json


@dataclasses.dataclass(frozen=True)
class Holding:
    """How many of a kind of thing, and their bytes on disk."""

    count: int = 0
    bytes: int = 0

    def __add__(self, other: Holding) -> Holding:
        return Holding(self.count + other.count, self.bytes + other.bytes)


@dataclasses.dataclass(frozen=True)
class Usage:
    """A key's storage: `jobs` are the job folders less their checkpoints and export caches
    (records, logs, final models), which are counted apart."""

    datasets: Holding = Holding()
    jobs: Holding = Holding()
    checkpoints: Holding = Holding()
    exports: Holding = Holding()

    @property
    def bytes(self) -> int:
        """Every stored byte, what FITSERVE_STORAGE_QUOTA_BYTES is counted against."""
        return sum(getattr(self, field.name).bytes for field in dataclasses.fields(self))


class HoldingView(TypedDict):
    count: int
    bytes: int


class UsageView(TypedDict):
    """`GET /v1/usage`: what a key stores by kind, in all, and the limits that apply to it."""

    owner: str | None
    datasets: HoldingView
    jobs: HoldingView
    checkpoints: HoldingView
    exports: HoldingView
    bytes: int
    quota_bytes: int | None
    job_ttl_seconds: int | None


def view_usage(usage: Usage, owner: str | None, settings: Settings) -> UsageView:
    """The usage as the API shows it; a limit that is off (0) shows as null."""

    def held(holding: Holding) -> HoldingView:
        return HoldingView(count=holding.count, bytes=holding.bytes)

    return UsageView(
        owner=owner,
        datasets=held(usage.datasets),
        jobs=held(usage.jobs),
        checkpoints=held(usage.checkpoints),
        exports=held(usage.exports),
        bytes=usage.bytes,
        quota_bytes=settings.storage_quota_bytes or None,
        job_ttl_seconds=settings.job_ttl_seconds or None,
    )


def storage_usage(data: DataDir, owner: str | None) -> Usage:
    """What `owner` stores (everyone's when `owner` is None: with keys off there is one tenant).
    A folder without a manifest is not counted: it is being written or removed. Datasets and
    jobs both keep theirs in `manifest.json`."""
    datasets = jobs = checkpoints = exports = Holding()
    for folder in _owned(data.datasets, owner):
        datasets += Holding(1, _bytes(folder))
    for folder in _owned(data.jobs, owner):
        kept = Holding(_count(folder / CHECKPOINTS, ".keras"), _bytes(folder / CHECKPOINTS))
        cached = Holding(_count(folder / EXPORTS), _bytes(folder / EXPORTS))
        checkpoints += kept
        exports += cached
        jobs += Holding(1, _bytes(folder) - kept.bytes - cached.bytes)
    return Usage(datasets, jobs, checkpoints, exports)


def _owned(root: Path, owner: str | None) -> list[Path]:
    found = []
    for folder in root.iterdir() if root.is_dir() else ():
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, ValueError):
            manifest = read_json(folder / MANIFEST)
            if owner is None or manifest.get("owner") == owner:
                found.append(folder)
    return found


def _bytes(folder: Path) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(parent, name)).st_size
    return total


def _count(folder: Path, suffix: str = "") -> int:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return sum(1 for entry in folder.iterdir() if entry.name.endswith(suffix))
    return 0


def refuse_over_bytes(data: DataDir, settings: Settings, owner: str | None, adding: int) -> None:
    """InsufficientStorage when `owner`'s stored bytes (datasets, jobs, checkpoints, export
    caches), `adding` more, pass FITSERVE_STORAGE_QUOTA_BYTES."""
    quota = settings.storage_quota_bytes
    if quota <= 0:
        return
    usage = storage_usage(data, owner)
    if quota < usage.bytes + adding:
        held = (
            f"datasets {usage.datasets.bytes}, jobs {usage.jobs.bytes}, checkpoints "
            f"{usage.checkpoints.bytes}, exports {usage.exports.bytes}"
        )
        # One byte stands for "one more of any size" when the size is not known yet.
        asked = f"; {adding} more are needed" if adding > 1 else ""
        raise InsufficientStorage(
            f"The storage quota of {quota} bytes per API key (FITSERVE_STORAGE_QUOTA_BYTES) is "
            f"used up: {usage.bytes} bytes are stored ({held}){asked}. Delete datasets or "
            "finished jobs, or unpin jobs so they expire, to make room (GET /v1/usage shows "
            "what is held)."
        )
