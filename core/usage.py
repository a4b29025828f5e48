"""What a key stores, counted from the data volume, which is the record of it."""

from __future__ import annotations

import contextlib
import dataclasses

from core.datasets import MANIFEST
from core.errors import InsufficientStorage
from core.settings import Settings
from core.storage import DataDir, read_json


@dataclasses.dataclass(frozen=True)
class Usage:
    datasets: int = 0
    bytes: int = 0


def dataset_usage(data: DataDir, owner: str | None) -> Usage:
    """The datasets `owner` holds and their stored bytes (everyone's when `owner` is None:
    with keys off there is one tenant). A folder without a manifest is not a dataset."""
    count = total = 0
    folders = data.datasets.iterdir() if data.datasets.is_dir() else ()
    for folder in folders:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            manifest = read_json(folder / MANIFEST)
            if owner is None or manifest.get("owner") == owner:
                count += 1
                total += int(manifest.get("bytes", 0))
    return Usage(count, total)


def refuse_over_quota(
    data: DataDir, settings: Settings, owner: str | None, *, datasets: int, stored_bytes: int
) -> None:
    """InsufficientStorage when `owner`'s datasets, with `datasets` more and `stored_bytes`
    more bytes, are over a quota (FITSERVE_MAX_DATASETS_PER_KEY, FITSERVE_STORAGE_QUOTA_BYTES)."""
    count_quota, bytes_quota = settings.max_datasets_per_key, settings.storage_quota_bytes
    if count_quota <= 0 and bytes_quota <= 0:
        return
    usage = dataset_usage(data, owner)
    if 0 < count_quota < usage.datasets + datasets:
        raise InsufficientStorage(
            f"The quota of {count_quota} datasets per API key (FITSERVE_MAX_DATASETS_PER_KEY) "
            f"is reached: {usage.datasets} are stored. Delete datasets to make room."
        )
    if 0 < bytes_quota < usage.bytes + stored_bytes:
        # One byte stands for "a dataset of any size" when nothing is known yet.
        adding = f" and this dataset needs {stored_bytes} more" if stored_bytes > 1 else ""
        raise InsufficientStorage(
            f"The storage quota of {bytes_quota} bytes per API key "
            f"(FITSERVE_STORAGE_QUOTA_BYTES) is used up: datasets hold {usage.bytes} bytes"
            f"{adding}. Delete datasets to make room."
        )
