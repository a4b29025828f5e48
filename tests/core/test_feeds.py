"""Feeds over stored arrays: the rows each epoch reads, the split, weights, memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import psutil
import pytest

from core.batches import ArrayFile, Split, feature_moments, one_hot
from core.feeds import Feed, fit_feeds

ROWS = 100


def stored(tmp_path: Path, name: str, array: np.ndarray) -> ArrayFile:
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    return ArrayFile(path)


@pytest.fixture
def split(tmp_path: Path) -> Split:
    """x holds each row's own number, so a batch shows which rows it read."""
    x = np.repeat(np.arange(ROWS, dtype=np.float32)[:, None], 3, axis=1)
    return Split(
        {"input": stored(tmp_path, "x", x)},
        {"output": stored(tmp_path, "y", np.arange(ROWS) % 4)},
        stored(tmp_path, "w", np.arange(ROWS, dtype=np.float32) * 2),
        {"input": "x", "output": "y"},
        {"output": 4},
    )


def epoch_rows(feed: Feed) -> list[int]:
    """The rows one pass over the feed reads, in order, as Keras begins and ends it."""
    feed.on_epoch_begin()
    rows = [int(value) for index in range(len(feed)) for value in feed[index][0][:, 0]]
    feed.on_epoch_end()
    return rows


def test_each_epoch_reads_every_row_once_in_a_new_order_the_seed_repeats(split: Split) -> None:
    feed = Feed(split, ["output"], range(ROWS), 16, seed=7)
    first, second = epoch_rows(feed), epoch_rows(feed)
    assert sorted(first) == sorted(second) == list(range(ROWS))
    assert first != second
    again = Feed(split, ["output"], range(ROWS), 16, seed=7)
    assert [epoch_rows(again), epoch_rows(again)] == [first, second]
    assert epoch_rows(Feed(split, ["output"], range(ROWS), 16, seed=8)) != first
    # A job resumed at epoch 1 reads epoch 1's order.
    assert epoch_rows(Feed(split, ["output"], range(ROWS), 16, seed=7, first_epoch=1)) == second


class Recorded(Feed):
    """A feed that records the rows of each batch `fit` reads, by pass and batch index (its
    threads prepare batches in any order)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[dict[int, set[int]]] = []

    def on_epoch_begin(self) -> None:
        super().on_epoch_begin()
        self.batches.append({})

    def __getitem__(self, index: int) -> tuple:
        batch = super().__getitem__(index)
        if self.batches:  # before the first pass Keras only reads shapes
            self.batches[-1][index] = {int(value) for value in batch[0][:, 0]}
        return batch


def test_fit_reads_each_epochs_own_order_and_a_resume_reads_the_same(split: Split) -> None:
    """The order of epoch e comes from (seed, e) whatever fit does around it: a job resumed at
    epoch 2 reads in its third epoch what the same job trained in one go reads in its third."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    whole = Recorded(split, ["output"], range(ROWS), 16, seed=11)
    model.fit(whole, epochs=3, shuffle=False, verbose=0)
    resumed = Recorded(split, ["output"], range(ROWS), 16, seed=11, first_epoch=2)
    model.fit(resumed, initial_epoch=2, epochs=3, shuffle=False, verbose=0)

    expected = []
    for epoch in range(3):
        rows = np.random.default_rng([11, epoch]).permutation(ROWS).tolist()
        expected.append({i: set(rows[i * 16 : (i + 1) * 16]) for i in range(len(whole))})
    assert whole.batches == expected
    assert resumed.batches == expected[2:]


def test_batches_are_read_in_sorted_order_and_the_last_holds_the_rest(split: Split) -> None:
    feed = Feed(split, ["output"], range(ROWS), 16, seed=1)
    sizes = [len(feed[index][0]) for index in range(len(feed))]
    assert sizes == [16] * 6 + [4]
    rows = feed[0][0][:, 0]
    assert list(rows) == sorted(rows)


def test_validation_split_keeps_the_last_rows_in_order(split: Split) -> None:
    fit = {"batch_size": 10, "validation_split": 0.25, "shuffle": True, "class_weight": None}
    train, validation, rest = fit_feeds(split, None, ["output"], fit, seed=3, initial_epoch=0)
    assert sorted(epoch_rows(train)) == list(range(75))
    assert validation is not None
    assert epoch_rows(validation) == list(range(75, ROWS))
    assert rest == {"class_weight": None, "shuffle": False}


def test_no_shuffle_reads_the_rows_in_order(split: Split) -> None:
    fit = {"batch_size": 32, "shuffle": False}
    train, validation, _ = fit_feeds(split, None, ["output"], fit, seed=3, initial_epoch=0)
    assert validation is None
    assert epoch_rows(train) == list(range(ROWS))


def test_weights_and_one_hot_targets_follow_their_rows(split: Split) -> None:
    x, y, weights = Feed(split, ["output"], range(ROWS), 16, seed=5)[2]
    rows = x[:, 0].astype(int)
    np.testing.assert_array_equal(weights, rows * 2)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.eye(4)[rows % 4])


def test_one_hot_squeezes_a_trailing_axis_of_one() -> None:
    np.testing.assert_array_equal(one_hot(np.array([[2], [0]]), 3), [[0, 0, 1], [1, 0, 0]])


def test_several_inputs_by_name_and_targets_in_output_order(tmp_path: Path) -> None:
    split = Split(
        {"a": stored(tmp_path, "a", np.zeros((8, 2))), "b": stored(tmp_path, "b", np.ones((8, 1)))},
        {
            "first": stored(tmp_path, "f", np.full(8, 1.0)),
            "second": stored(tmp_path, "s", np.full(8, 2.0)),
        },
        None,
        {"a": "a", "b": "b", "first": "f", "second": "s"},
        {},
    )
    x, y = Feed(split, ["second", "first"], range(8), 4)[0]
    assert set(x) == {"a", "b"}
    assert [float(target[0]) for target in y] == [2.0, 1.0]


def test_feature_moments_match_numpy_in_one_chunked_pass(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("core.batches.CHUNK_BYTES", 7 * 3 * 8)
    values = np.random.default_rng(0).normal(5.0, 3.0, size=(50, 3))
    mean, variance = feature_moments(stored(tmp_path, "v", values), range(40))
    np.testing.assert_allclose(mean, values[:40].mean(axis=0))
    np.testing.assert_allclose(variance, values[:40].var(axis=0))


def test_an_epoch_over_a_200_mb_array_holds_a_few_batches_not_the_array(tmp_path: Path) -> None:
    rows, features = 64_000, 784
    path = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, features))
    for start in range(0, rows, 8000):
        big[start : start + 8000] = start
    big.flush()
    del big
    size = path.stat().st_size
    assert size > 200e6
    split = Split(
        {"input": ArrayFile(path)},
        {"output": stored(tmp_path, "labels", np.zeros(rows, dtype=np.uint8))},
        None,
        {"input": "big", "output": "labels"},
        {"output": 2},
    )
    feed = Feed(split, ["output"], range(rows), 512, seed=0)
    process = psutil.Process()
    before, peak, seen = process.memory_info().rss, 0, 0
    for index in range(len(feed)):
        x, _ = feed[index]
        seen += len(x)
        peak = max(peak, process.memory_info().rss)
    assert seen == rows
    # The mapping's pages are let go as it reads: growth stays far below the array's size.
    assert peak - before < 0.25 * size, (peak - before) / size
