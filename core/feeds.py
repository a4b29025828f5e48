"""Training data fed to Keras a batch at a time from the datasets' memory-mapped `.npy` files.

A job's arrays are never loaded whole: `fit` and `evaluate` read a `Feed` (a
`keras.utils.PyDataset`) that gathers each batch's rows, in sorted order, from the mapped files
and preprocesses that batch only (one-hot targets). Two threads prepare batches ahead, at most
`PREFETCH` of them, so a worker holds a few batches and not the dataset. Pages a mapping has read
are let go every `RELEASE_BYTES` (they stay in the page cache, out of the worker's memory).

Each epoch permutes the training rows with a generator seeded by the job's seed and the epoch's
number: a seed reproduces its weights, and a job resumed at epoch N sees epoch N's order.
`validation_split` keeps the last fraction of the rows, before any shuffle, as Keras does.
"""

from __future__ import annotations

import math
import mmap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, overload

import keras
import numpy as np

from core.datasets import array_file
from core.readers import read_npy_header
from core.storage import DataDir

# Batches prepared ahead of the training step, and the threads that prepare them.
PREFETCH = 4
WORKERS = 2
# Bytes of pages a mapping may have read before they are released from the worker's memory.
RELEASE_BYTES = 32 << 20
# Rows per chunk when a pass over a whole array computes statistics.
CHUNK_BYTES = 16 << 20


class FeedError(ValueError):
    """The arrays cannot feed the model as the spec maps them (the job fails `invalid_data`)."""


class MappedArray:
    """A stored `.npy` array mapped read-only; rows read from it are copies, and the pages read
    are released from the process every RELEASE_BYTES, so reading it all costs no memory."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as handle:
            header = read_npy_header(handle, "/file")
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        order = "F" if header.fortran_order else "C"
        self.array: np.ndarray = np.ndarray(
            header.shape, header.dtype, buffer=self._map, offset=header.offset, order=order
        )
        self.shape: tuple[int, ...] = header.shape
        self.row_bytes = header.dtype.itemsize * math.prod(header.shape[1:])
        self._read = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, index: np.ndarray | slice) -> np.ndarray:
        """A copy of the rows at `index` (sorted indices read the file in order)."""
        out = np.array(self.array[index])
        # Each row touches at most its bytes and one page more.
        self._count_read(len(out) * (self.row_bytes + mmap.PAGESIZE))
        return out

    def _count_read(self, size: int) -> None:
        with self._lock:
            self._read += size
            if self._read < RELEASE_BYTES:
                return
            self._read = 0
            # Clean file pages: dropped from this process only; a later read faults them back
            # in from the page cache.
            self._map.madvise(mmap.MADV_DONTNEED)


class Split:
    """The mapped arrays of one part of the data (training, validation or test).

    `x` and `y` are keyed by the model's input and output names; `names` gives each of those
    names' array name, for messages; `one_hot` the class count of targets one-hot encoded.
    """

    def __init__(
        self,
        x: dict[str, MappedArray],
        y: dict[str, MappedArray],
        sample_weight: MappedArray | None,
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
        target as itself, several inputs by name, several targets in the model's output order
        (Keras pairs a sample weight with each only then)."""
        x = {name: array.rows(index) for name, array in self.x.items()}
        y = {name: self._targets(name, index) for name, array in self.y.items()}
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
    """Map the arrays of `part` of a normalized spec's data (None: the training data)."""
    source = spec_data if part is None else spec_data.get(part)
    if source is None:
        return None
    dataset = source["dataset"]

    def mapped(name: str) -> MappedArray:
        return MappedArray(array_file(data, dataset, name))

    weights = source.get("sample_weight")
    return Split(
        {name: mapped(array) for name, array in source["x"].items()},
        {name: mapped(array) for name, array in source["y"].items()},
        None if weights is None else mapped(weights),
        {**source["x"], **source["y"]},
        spec_data.get("one_hot") or {},
    )


class Feed(keras.utils.PyDataset):
    """Batches of `rows` of a split; shuffled per epoch when `seed` is given.

    Args:
        split: the mapped arrays.
        output_names: the model's outputs in order (several targets are given in it).
        rows: the rows of the split this feed reads (the training part of a validation split).
        batch_size: rows per batch; the last batch holds the rest.
        seed: None reads the rows in order; else epoch e reads them in the permutation drawn
            from `numpy.random.default_rng([seed, e])`.
        first_epoch: the number of the epoch the first pass is (a resumed job's initial epoch).
    """

    def __init__(
        self,
        split: Split,
        output_names: list[str],
        rows: range,
        batch_size: int,
        *,
        seed: int | None = None,
        first_epoch: int = 0,
    ) -> None:
        super().__init__(workers=WORKERS, use_multiprocessing=False, max_queue_size=PREFETCH)
        self.split = split
        self.output_names = output_names
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = first_epoch
        self.order = self._order()

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, index: int) -> tuple:
        start = index * self.batch_size
        if self.order is None:
            begin = self.rows.start + start
            end = min(begin + self.batch_size, self.rows.stop)
            return self.split.batch(slice(begin, end), self.output_names)
        # Sorted: the rows are read from the file front to back.
        chosen = np.sort(self.order[start : start + self.batch_size])
        return self.split.batch(chosen, self.output_names)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()

    def _order(self) -> np.ndarray | None:
        if self.seed is None:
            return None
        generator = np.random.default_rng([self.seed, self.epoch])
        return self.rows.start + generator.permutation(len(self.rows))


def training_rows(split: Split, validation_split: float | None) -> tuple[range, range | None]:
    """The rows `fit` trains on and those it validates with: Keras's own split, the first
    floor(rows * (1 - validation_split)) rows to train, the rest to validate, before shuffling."""
    if not validation_split:
        return range(split.rows), None
    split_at = math.floor(split.rows * (1.0 - validation_split))
    return range(split_at), range(split_at, split.rows)


def fit_feeds(
    train: Split,
    validation: Split | None,
    output_names: list[str],
    fit_kwargs: dict[str, Any],
    *,
    seed: int,
    initial_epoch: int,
) -> tuple[Feed, Feed | None, dict[str, Any]]:
    """The training and validation feeds for `fit`, and the rest of its keyword arguments.

    `fit_kwargs` are `Model.fit`'s arguments as the spec gives them; the batch size, shuffle and
    validation split are the feeds' now and are left out of the rest.
    """
    rest = dict(fit_kwargs)
    batch_size = rest.pop("batch_size", None) or 32
    validation_batch = rest.pop("validation_batch_size", None) or batch_size
    shuffle = rest.pop("shuffle", True)
    rows, held_out = training_rows(train, rest.pop("validation_split", None))
    feed = Feed(
        train,
        output_names,
        rows,
        batch_size,
        seed=seed if shuffle else None,
        first_epoch=initial_epoch,
    )
    if validation is not None:
        checked = Feed(validation, output_names, range(validation.rows), validation_batch)
    elif held_out is not None:
        checked = Feed(train, output_names, held_out, validation_batch)
    else:
        checked = None
    return feed, checked, rest


def evaluate_split(model: Any, split: Split, batch_size: int | None) -> dict[str, float]:
    """The model's loss and metrics on `split`, read a batch at a time."""
    feed = Feed(split, list(model.output_names), range(split.rows), batch_size or 32)
    results = model.evaluate(feed, verbose=0, return_dict=True)
    return {name: float(value) for name, value in results.items()}


def chunks(array: MappedArray, rows: range) -> Iterator[np.ndarray]:
    """`rows` of the array in order, in chunks of about CHUNK_BYTES."""
    step = max(1, CHUNK_BYTES // max(1, array.row_bytes))
    for start in range(rows.start, rows.stop, step):
        yield array.rows(slice(start, min(start + step, rows.stop)))


def feature_moments(array: MappedArray, rows: range) -> tuple[np.ndarray, np.ndarray]:
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
