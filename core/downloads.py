"""A stored dataset as a download: its arrays as an `.npz`, one `.npy`, or a CSV with a header,
each produced in chunks from the memory-mapped files, so no download holds a whole array."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from core.datasets import open_array
from core.storage import DataDir

FORMATS = ("npz", "npy", "csv")
CHUNK_BYTES = 1 << 20
# Rows per CSV chunk: a few hundred kilobytes of text for a row of a thousand numbers.
CSV_ROWS = 256


class _Sink:
    """An unseekable file for zipfile to write into; `take` hands over what it wrote so far."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered: `take` hands over every write."""

    def close(self) -> None:
        """The stream ends with the response, not here."""

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def npz_chunks(files: dict[str, Path]) -> Iterator[bytes]:
    """An `.npz` (a zip of `<name>.npy` members, stored, zip64) of the `.npy` files, streamed:
    np.load reads it with allow_pickle=False."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, path in files.items():
            member = archive.open(f"{name}.npy", "w", force_zip64=True)
            with member, open(path, "rb") as source:
                while chunk := source.read(CHUNK_BYTES):
                    member.write(chunk)
                    yield sink.take()
    yield sink.take()


def csv_header(name: str, shape: tuple[int, ...]) -> list[str]:
    """The columns of one array: its name for a vector, `name_<i>` per flattened feature."""
    width = int(np.prod(shape[1:], dtype=np.int64))
    return [name] if len(shape) == 1 else [f"{name}_{index}" for index in range(width)]


def csv_chunks(data: DataDir, dataset_id: str, names: list[str], rows: int) -> Iterator[bytes]:
    """The arrays side by side as CSV with a header, CSV_ROWS rows at a time; numbers in their
    shortest exact text, strings quoted where CSV needs it."""
    arrays = [open_array(data, dataset_id, name) for name in names]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(
        [
            column
            for name, a in zip(names, arrays, strict=True)
            for column in csv_header(name, a.shape)
        ]
    )
    for low in range(0, rows, CSV_ROWS):
        columns = [
            np.asarray(array[low : low + CSV_ROWS])
            .reshape(min(CSV_ROWS, rows - low), -1)
            .astype(str)
            for array in arrays
        ]
        writer.writerows(np.concatenate(columns, axis=1).tolist())
        yield text.getvalue().encode()
        text.seek(0)
        text.truncate()
    yield text.getvalue().encode()
