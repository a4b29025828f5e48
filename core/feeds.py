"""Training data fed to Keras a batch at a time from the datasets' `.npy` files on disk.

`fit` and `evaluate` read a `Feed` (a `keras.utils.PyDataset`) that gathers each batch's rows,
in sorted order, from the stored arrays (core.batches) and preprocesses that batch only (one-hot
targets). WORKERS threads prepare batches ahead, at most PREFETCH of them, so a worker holds a
few batches and not the dataset.

Each epoch permutes the training rows with a generator seeded by the job's seed and the epoch's
number: a seed reproduces its weights, and a job resumed at epoch N sees epoch N's order.
`validation_split` keeps the last fraction of the rows, before any shuffle, as Keras does.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from core.batches import PREFETCH, WORKERS, Split, training_rows


class Feed(keras.utils.PyDataset):
    """Batches of `rows` of a split; shuffled per epoch when `seed` is given.

    Args:
        split: the stored arrays.
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
        # The epoch the next pass is; the order before the first pass only shows Keras the
        # batches' shapes.
        self.epoch = first_epoch
        self.order = self._order(first_epoch)

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

    def on_epoch_begin(self) -> None:
        """Keras calls it once before each pass (and its `on_epoch_end` once more besides, as
        fit starts): the pass's order comes from the epochs begun."""
        self.order = self._order(self.epoch)
        self.epoch += 1

    def _order(self, epoch: int) -> np.ndarray | None:
        if self.seed is None:
            return None
        generator = np.random.default_rng([self.seed, epoch])
        return self.rows.start + generator.permutation(len(self.rows))


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
    validation split are the feeds' now and are left out of the rest (shuffle: False).
    """
    rest = dict(fit_kwargs)
    batch_size = rest.pop("batch_size", None) or 32
    validation_batch = rest.pop("validation_batch_size", None) or batch_size
    shuffle = rest.pop("shuffle", True)
    # The feed orders the rows; Keras would shuffle the batches' order again with Python's own
    # generator, whose state a resumed job does not share.
    rest["shuffle"] = False
    rows, held_out = training_rows(train, validation, rest.pop("validation_split", None))
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


def output_names(model: Any) -> list[str]:
    """The model's output names in order; a Sequential's is its last layer's (Keras gives a
    Sequential no `output_names`)."""
    names = getattr(model, "output_names", None)
    return list(names) if names else [model.layers[-1].name]


def evaluate_split(model: Any, split: Split, batch_size: int | None) -> dict[str, float]:
    """The model's loss and metrics on `split`, read a batch at a time."""
    feed = Feed(split, output_names(model), range(split.rows), batch_size or 32)
    results = model.evaluate(feed, verbose=0, return_dict=True)
    return {name: float(value) for name, value in results.items()}
