"""Each training callback on a tiny seeded model: the observable result of its one behaviour."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.callbacks import (
    CheckpointCallback,
    EpochSummaries,
    NaNGuard,
    ProgressCallback,
    StopCallback,
    TimeLimit,
)
from core.checkpoints import load_checkpoint, verify_checkpoint

ROWS, BATCH = 64, 8  # 8 steps per epoch


def fit(
    callbacks: list, *, epochs: int = 3, learning_rate: float = 0.01, validation: float = 0.0
) -> keras.Model:
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(ROWS, 4)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="binary_crossentropy")
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs,
        callbacks=callbacks,
        validation_split=validation,
        verbose=0,
    )
    return model


class Recorder:
    def __init__(self) -> None:
        self.progress: list[dict] = []
        self.epochs: list[tuple[int, dict]] = []

    def callback(self, interval: float) -> ProgressCallback:
        return ProgressCallback(
            self.progress.append,
            lambda epoch, metrics: self.epochs.append((epoch, metrics)),
            interval=interval,
        )


def test_progress_throttled_reports_only_epoch_ends() -> None:
    recorder = Recorder()
    fit([recorder.callback(interval=3600)])

    # The first batch end reports (nothing reported yet), then only the three epoch ends.
    first, *ends = recorder.progress
    assert len(recorder.progress) == 4
    assert (first["completed"], first["eta_seconds"], first["metrics"]) == (0, None, None)
    assert [p["epoch"] for p in ends] == [p["completed"] for p in ends] == [1, 2, 3]
    assert ends[-1]["fraction"] == 1.0
    assert ends[-1]["eta_seconds"] == 0.0
    assert set(ends[-1]["metrics"]) == {"loss"}
    assert [epoch for epoch, _ in recorder.epochs] == [1, 2, 3]


class Ticks:
    """A clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_progress_is_measured_from_the_epochs_run() -> None:
    recorder = Recorder()
    progress = ProgressCallback(
        recorder.progress.append,
        lambda epoch, metrics: recorder.epochs.append((epoch, metrics)),
        interval=0,
        clock=Ticks(),
    )
    fit([progress], epochs=2)

    first_epoch = recorder.progress[:9]
    assert [p["step"] for p in first_epoch] == [*range(1, 9), 8]
    assert [p["fraction"] for p in first_epoch[:2]] == [0.0625, 0.125]
    # No ETA before an epoch ended; then the measured epoch time times the work left.
    assert all(p["eta_seconds"] is None for p in first_epoch[:8])
    assert first_epoch[8]["eta_seconds"] == pytest.approx(progress.durations[0])
    # The metrics of a report are those of the last ended epoch, the same all through the next.
    second_epoch = recorder.progress[9:-1]
    assert all(p["metrics"] == recorder.epochs[0][1] for p in second_epoch)
    assert all(p["completed"] == 1 and p["epoch"] == 2 for p in second_epoch)


def test_stop_asks_and_stops_within_the_epoch() -> None:
    answers = iter([None, None, "cancel"])
    stop = StopCallback(lambda: next(answers), interval=0)
    history = fit([stop], epochs=5).history.history

    assert stop.reason == "cancel"
    assert len(history["loss"]) == 1  # the first epoch ended early, no second one


def test_stop_throttles_its_questions() -> None:
    asked = []
    stop = StopCallback(lambda: asked.append(1), interval=3600)
    fit([stop], epochs=2)

    assert len(asked) == 1
    assert stop.reason is None


def test_nan_guard_names_epoch_and_batch() -> None:
    guard = NaNGuard()
    history = fit([guard], epochs=5, learning_rate=1e38).history.history

    assert guard.failure is not None
    assert guard.failure["epoch"] == 1
    assert not np.isfinite(guard.failure["value"])
    assert len(history["loss"]) == 1
    assert f"batch {guard.failure['batch']}" in guard.message()
    assert "learning_rate" in guard.message()


def test_nan_guard_quiet_on_finite_loss() -> None:
    guard = NaNGuard()
    fit([guard], epochs=1)
    assert guard.failure is None


def test_time_limit_stops_training() -> None:
    limit = TimeLimit(0)
    history = fit([limit], epochs=5).history.history

    assert limit.exceeded
    assert len(history["loss"]) == 1


def checkpoints(tmp_path: Path, saved: list, **options: object) -> CheckpointCallback:
    defaults = {"keep": 2, "monitor": "loss", "mode": "min"}
    return CheckpointCallback(
        tmp_path,
        on_saved=lambda entry, kept, best: saved.append((entry, kept, best)),
        **{**defaults, **options},
    )


def test_checkpoint_keeps_last_and_best(tmp_path: Path) -> None:
    saved: list = []
    # Loss falls every epoch, so with mode "max" the best is version 1.
    callback = checkpoints(tmp_path, saved, mode="max")
    fit([callback], epochs=5)

    entry, kept, best = saved[-1]
    assert [e["version"] for e, _, _ in saved] == [1, 2, 3, 4, 5]
    assert [e["version"] for e in kept] == [1, 4, 5]
    assert best["version"] == 1
    assert best["monitor"] == "loss"
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.keras"))
    assert files == ["epoch-0001.keras", "epoch-0004.keras", "epoch-0005.keras"]
    for kept_entry in kept:
        verify_checkpoint(tmp_path, kept_entry)
    assert len(callback.history["loss"]) == 5
    restored = load_checkpoint(tmp_path, entry)
    assert int(restored.optimizer.iterations.numpy()) == 5 * 8


def test_checkpoint_of_an_epoch_cut_short_is_partial_and_loadable(tmp_path: Path) -> None:
    saved: list = []
    answers = iter([None, None, "cancel"])
    stop = StopCallback(lambda: next(answers), interval=0)
    fit([stop, checkpoints(tmp_path, saved)], epochs=5)

    [(entry, kept, _)] = saved
    assert entry["version"] == 1
    assert entry["partial"] is True
    assert kept == [entry]
    restored = load_checkpoint(tmp_path, entry)
    assert 3 <= int(restored.optimizer.iterations.numpy()) < 8


def test_checkpoint_never_saves_a_non_finite_loss(tmp_path: Path) -> None:
    saved: list = []
    callback = checkpoints(tmp_path, saved)
    fit([NaNGuard(), callback], epochs=3, learning_rate=1e38)

    assert saved == []
    assert not list((tmp_path / "checkpoints").glob("*.keras"))
    assert len(callback.history["loss"]) == 1


@pytest.mark.parametrize("keep", [1, 3])
def test_checkpoint_resumed_run_continues_versions_and_history(tmp_path: Path, keep: int) -> None:
    first: list = []
    fit([checkpoints(tmp_path, first, keep=keep)], epochs=2)
    _, kept, best = first[-1]

    second: list = []
    resumed = checkpoints(
        tmp_path, second, keep=keep, entries=kept, best=best, history={"loss": [1.0, 0.9]}
    )
    keras.utils.set_random_seed(7)
    x = np.zeros((ROWS, 4), "float32")
    model = load_checkpoint(tmp_path, kept[-1])
    model.fit(x, np.zeros((ROWS, 1)), batch_size=BATCH, epochs=4, initial_epoch=2,
              callbacks=[resumed], verbose=0)  # fmt: skip

    assert [e["version"] for e, _, _ in second] == [3, 4]
    assert len(resumed.history["loss"]) == 4
    assert resumed.history["loss"][:2] == [1.0, 0.9]
    _, kept, best = second[-1]
    expected = sorted({*range(5 - keep, 5), best["version"]})
    assert [e["version"] for e in kept] == expected
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.keras")) == [
        f"epoch-{v:04d}.keras" for v in expected
    ]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalar summaries of the event files in `folder`: name -> [(step, value)]."""
    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                found.setdefault(value.tag, []).append((event.step, number))
    return found


def test_epoch_summaries_are_written_for_tensorboard(tmp_path: Path) -> None:
    history = fit([EpochSummaries(tmp_path)], epochs=2, validation=0.25).history.history

    train, validation = scalars(tmp_path / "train"), scalars(tmp_path / "validation")
    assert set(train) == {"epoch_loss"}
    assert set(validation) == {"epoch_loss"}
    assert [step for step, _ in train["epoch_loss"]] == [0, 1]
    assert [value for _, value in validation["epoch_loss"]] == pytest.approx(history["val_loss"])


def test_a_write_that_fails_leaves_the_previous_checkpoint_listed_and_valid(
    tmp_path: Path,
) -> None:
    saved: list = []
    # A folder where version 3 goes: its temp file is written, then os.replace fails.
    (tmp_path / "checkpoints" / "epoch-0003.keras").mkdir(parents=True)
    callback = checkpoints(tmp_path, saved, keep=1)
    with pytest.raises(IsADirectoryError):
        fit([callback], epochs=5)

    _, kept, _ = saved[-1]
    assert [entry["version"] for entry in kept] == [2]
    verify_checkpoint(tmp_path, kept[0])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch-0002.history.json",
        "epoch-0002.keras",
        "epoch-0003.keras",  # the folder in the way; no temp file left behind
    ]


def test_each_version_holds_its_epoch_though_early_stopping_restores_the_best(
    tmp_path: Path,
) -> None:
    saved: list = []
    # Loss falls every epoch; in mode "max" the first epoch is the best, so training stops at 3.
    early = keras.callbacks.EarlyStopping(
        monitor="loss", mode="max", patience=2, restore_best_weights=True
    )
    model = fit([checkpoints(tmp_path, saved, keep=5), early], epochs=10)

    versions = [entry for entry, _, _ in saved]
    assert [entry["version"] for entry in versions] == [1, 2, 3]
    first = load_checkpoint(tmp_path, versions[0]).get_weights()
    last = load_checkpoint(tmp_path, versions[-1]).get_weights()
    for restored, version_1, version_3 in zip(model.get_weights(), first, last, strict=True):
        np.testing.assert_array_equal(restored, version_1)  # the model holds epoch 1 again
        assert not np.array_equal(version_3, version_1)  # version 3 still holds epoch 3
