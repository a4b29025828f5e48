"""Rows of a job's stored arrays, read a batch at a time from the datasets' `.npy` files.

The files are read through the page cache with positioned reads, never loaded whole nor mapped
into the worker (see `ArrayFile`): a worker holds the batches it prepares, whatever the dataset's
size. `core.feeds` hands these batches to Keras; `core.cost` counts what they hold.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import overload

import numpy as np

from core.datasets import array_file
from core.readers import read_npy_header
from core.storage import DataDir

# Batches prepared ahead of the training step, and the threads that prepare them: with the
# batch in the step, a worker holds PREFETCH + WORKERS + 1 batches of rows.
PREFETCH = 4
WORKERS = 2
BATCHES_HELD = PREFETCH + WORKERS + 1
# Rows at most this far apart are read in one call, the bytes between them skipped after.
GAP_BYTES = 16 << 10
# Rows per chunk when a pass over a whole array computes statistics.
CHUNK_BYTES = 16 << 20


class FeedError(ValueError):
    """The arrays cannot feed the model as the spec maps them (the job fails `invalid_data`)."""


class ArrayFile:
    """A stored `.npy` array whose rows are read on demand with positioned reads.

    Not a memory map: every page a mapping touches counts in the worker's memory until it is
    unmapped, and the kernel maps whole folios (hundreds of KB) around each row a shuffled batch
    reads, so a mapped epoch costs about the file's size. Reads go through the page cache and
    hold only the rows asked for. Rows closer together than GAP_BYTES are read in one call.
    """

    _fd = -1

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as handle:
            header = read_npy_header(handle, "/file")
        self.name = path.name
        # A bare descriptor, closed when the array is dropped (a feed reads it until then).
        self._fd = os.open(path, os.O_RDONLY)
        self.shape: tuple[int, ...] = header.shape
        self.dtype: np.dtype = header.dtype
        self.row_bytes = header.dtype.itemsize * math.prod(header.shape[1:])
        self._offset = header.offset
        # Rows of a Fortran-ordered file are not contiguous: those few are read through numpy.
        self._fortran = (
            np.load(path, mmap_mode="r", allow_pickle=False) if header.fortran_order else None
        )

    def __del__(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, index: np.ndarray | slice) -> np.ndarray:
        """A copy of the rows at `index`: sorted row numbers, or a slice of consecutive rows."""
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        if self._fortran is not None:
            return np.array(self._fortran[index])
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        if not len(index):
            return out
        target = out.data.cast("B")
        gaps = np.diff(index) * self.row_bytes - self.row_bytes
        bounds = [0, *(np.flatnonzero(gaps > GAP_BYTES) + 1).tolist(), len(index)]
        for low, high in itertools.pairwise(bounds):
            self._read_group(index[low:high], target[low * self.row_bytes : high * self.row_bytes])
        return out

    def _read_group(self, index: np.ndarray, target: memoryview) -> None:
        """Rows close together: one read of the span from the first to the last."""
        first, span = int(index[0]), int(index[-1] - index[0]) + 1
        position = self._offset + first * self.row_bytes
        if span == len(index):
            self._read_into(target, position)
            return
        block = np.empty(span * self.row_bytes, np.uint8)
        self._read_into(block.data, position)
        rows = block.reshape(span, self.row_bytes)[index - first]
        target[:] = rows.data.cast("B")

    def _read_into(self, target: memoryview, position: int) -> None:
        while target:
            count = os.preadv(self._fd, [target], position)
            if count == 0:
                raise FeedError(f"{self.name} is shorter than its header says.")
            target, position = target[count:], position + count


class Split:
    """The stored arrays of one part of the data (training, validation or test).

    `x` and `y` are keyed by the model's input and output names; `names` gives each of those
    names' array name, for messages; `one_hot` the class count of targets one-hot encoded.
    """

    def __init__(
        self,
        x: dict[str, ArrayFile],
        y: dict[str, ArrayFile],
        sample_weight: ArrayFile | None,
        names: dict[str, str],
        one_hot: dict[str, int],
    ) -> None:
        self.x = x
        self.y = y
        self.sample_weight = sample_weight
        self.names = names
        self.one_hot = one_hot
        arrays = {names[key]: array for key, array in {**x, **y}.items()}
        if sample_weight is not None:
            arrays["sample_weight"] = sample_weight
        rows = {name: len(array) for name, array in arrays.items()}
        if len(set(rows.values())) > 1:
            shown = ", ".join(f"'{name}' has {count}" for name, count in rows.items())
            raise FeedError(f"The arrays must have the same number of rows, but {shown}.")
        self.rows = next(iter(rows.values()), 0)

    def batch(self, index: np.ndarray | slice, output_names: list[str]) -> tuple:
        """`(x, y[, sample_weight])` of the rows at `index`, as `fit` takes them: one input or
        target as itself, several inputs by name, several targets as a tuple in the model's output
        order (Keras pairs a sample weight with each only then; tf.data takes no lists)."""
        x = {name: array.rows(index) for name, array in self.x.items()}
        y = {name: self._targets(name, index) for name in self.y}
        inputs = next(iter(x.values())) if len(x) == 1 else x
        targets = next(iter(y.values())) if len(y) == 1 else tuple(y[n] for n in output_names)
        if self.sample_weight is None:
            return inputs, targets
        return inputs, targets, self.sample_weight.rows(index)

    def _targets(self, name: str, index: np.ndarray | slice) -> np.ndarray:
        values = self.y[name].rows(index)
        classes = self.one_hot.get(name)
        return values if classes is None else one_hot(values, classes)


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """What `keras.utils.to_categorical` makes (a trailing axis of 1 squeezed), as float32."""
    if labels.ndim > 1 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    return np.eye(classes, dtype=np.float32)[labels.astype(np.int64)]


@overload
def open_split(data: DataDir, spec_data: dict, part: None) -> Split: ...
@overload
def open_split(data: DataDir, spec_data: dict, part: str) -> Split | None: ...
def open_split(data: DataDir, spec_data: dict, part: str | None) -> Split | None:
    """Open the arrays of `part` of a normalized spec's data (None: the training data)."""
    source = spec_data if part is None else spec_data.get(part)
    if source is None:
        return None
    dataset = source["dataset"]

    def stored(name: str) -> ArrayFile:
        return ArrayFile(array_file(data, dataset, name))

    weights = source.get("sample_weight")
    return Split(
        {name: stored(array) for name, array in source["x"].items()},
        {name: stored(array) for name, array in source["y"].items()},
        None if weights is None else stored(weights),
        {**source["x"], **source["y"]},
        spec_data.get("one_hot") or {},
    )


def training_rows(
    split: Split, validation: Split | None, validation_split: float | None
) -> tuple[range, range | None]:
    """The rows `fit` trains on and those it validates with: Keras's own split, the first
    floor(rows * (1 - validation_split)) rows to train, the rest to validate, before shuffling;
    all of them to train when there is validation data (Keras then ignores the split)."""
    if not validation_split or validation is not None:
        return range(split.rows), None
    split_at = math.floor(split.rows * (1.0 - validation_split))
    return range(split_at), range(split_at, split.rows)


def chunks(array: ArrayFile, rows: range) -> Iterator[np.ndarray]:
    """`rows` of the array in order, in chunks of about CHUNK_BYTES."""
    step = max(1, CHUNK_BYTES // max(1, array.row_bytes))
    for start in range(rows.start, rows.stop, step):
        yield array.rows(slice(start, min(start + step, rows.stop)))


def feature_moments(array: ArrayFile, rows: range) -> tuple[np.ndarray, np.ndarray]:
    """The mean and variance per feature (the last axis) over `rows`, in one chunked pass.

    Chunks are merged with Chan et al.'s pairwise update in float64, so a large dataset loses
    no precision and memory holds one chunk.
    """
    count = 0
    mean = np.zeros(array.shape[-1])
    squares = np.zeros(array.shape[-1])
    for chunk in chunks(array, rows):
        values = chunk.reshape(-1, array.shape[-1]).astype(np.float64)
        size = len(values)
        chunk_mean = values.mean(axis=0)
        chunk_squares = ((values - chunk_mean) ** 2).sum(axis=0)
        delta = chunk_mean - mean
        total = count + size
        mean = mean + delta * (size / total)
        squares = squares + chunk_squares + delta**2 * (count * size / total)
        count = total
    return mean, squares / max(count, 1)


def with_statistics(spec: dict, split: Split, rows: range) -> dict:
    """The spec with the mean and variance of each input that `preprocess.x.normalize` names,
    over `rows` of the training split, for the Normalization layer in front of the model."""
    steps = spec["data"]["preprocess"]["x"]
    wanted = [name for name, given in steps.items() if given.get("normalize")]
    if not wanted:
        return spec
    filled = {name: dict(given) for name, given in steps.items()}
    for name in wanted:
        mean, variance = feature_moments(split.x[name], rows)
        filled[name].update(mean=mean.tolist(), variance=variance.tolist())
    preprocess = {**spec["data"]["preprocess"], "x": filled}
    return {**spec, "data": {**spec["data"], "preprocess": preprocess}}
