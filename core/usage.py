"""What a key stores, counted from the data volume, which is the record of it."""

from __future__ import annotations

import contextlib
import dataclasses

from core.datasets import MANIFEST
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
