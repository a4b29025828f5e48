"""The Keras callbacks every job trains with: progress, stop requests, checkpoints, NaN, time.

One behaviour per callback. They import Keras, so only a process that trains imports this module
(core.training imports it inside `train_job`). Each is `async_safe`: when every callback of a fit
is, Keras runs the batch-end hooks on a helper thread instead of waiting for every batch's logs on
the training loop. They only read logs, set `model.stop_training` and keep their own state.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import keras

from core.checkpoints import (
    CheckpointWriter,
    ModelCopy,
    Snapshot,
    delete_checkpoint_files,
    is_better,
    save_checkpoint,
    select_kept,
    take_snapshot,
)

log = logging.getLogger("fitserve.training")

Clock = Callable[[], float]


def _floats(logs: dict | None) -> dict[str, float]:
    return {name: float(value) for name, value in (logs or {}).items()}


def format_metrics(metrics: dict[str, float]) -> str:
    """`name=value ...` for a log line."""
    return " ".join(f"{name}={value:.6g}" for name, value in metrics.items())


class ProgressCallback(keras.callbacks.Callback):
    """Report progress inside an epoch at most every `interval` seconds, and at every epoch end.

    Every figure is measured: `fraction` is the work done (epochs ended plus the steps of the
    epoch in progress, over all epochs); `eta_seconds` comes from the time the epochs of this run
    took (the first, which traces the graph, left out once others ended) and is None until one
    ended; `metrics` are the logs of the last ended epoch, so two reports in one epoch never show
    different metrics for it.

    Args:
        report_progress: receives `{"epoch", "epochs", "completed", "step", "steps", "fraction",
            "eta_seconds", "metrics"}`; `epoch` counts from 1 and is the epoch in progress (or
            just ended), `completed` the epochs ended.
        report_epoch: receives `(epoch, metrics)` once per ended epoch, counted from 1.
        interval: the least number of seconds between two in-epoch reports.

    Example:
        ```
        progress = ProgressCallback(print, lambda epoch, metrics: None, interval=0.25)
        model.fit(x, y, epochs=3, callbacks=[progress])   # a few lines a second, 3 epoch ends
        ```
    """

    async_safe = True

    def __init__(
        self,
        report_progress: Callable[[dict], None],
        report_epoch: Callable[[int, dict], None],
        *,
        interval: float = 0.25,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__()
        self.report_progress = report_progress
        self.report_epoch = report_epoch
        self.interval = interval
        self.clock = clock
        self.durations: list[float] = []
        self.completed = 0
        self.metrics: dict[str, float] | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.last_report = -math.inf

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch
        self.completed = epoch
        self.step = 0
        self.epoch_started = self.clock()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.step = batch + 1
        if self.clock() - self.last_report >= self.interval:
            self._report()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.durations.append(self.clock() - self.epoch_started)
        self.completed = epoch + 1
        self.metrics = _floats(logs)
        self._report()
        log.info("epoch=%d/%d %s", epoch + 1, self.params["epochs"], format_metrics(self.metrics))
        self.report_epoch(epoch + 1, self.metrics)

    def seconds_per_epoch(self) -> float | None:
        """The measured time of one epoch, None before one ended."""
        measured = self.durations[1:] or self.durations
        return sum(measured) / len(measured) if measured else None

    def _report(self) -> None:
        self.last_report = self.clock()
        epochs, steps = self.params["epochs"], self.params.get("steps") or self.step or 1
        ended = self.completed == self.epoch + 1
        done = self.completed if ended else self.epoch + min(self.step / steps, 1.0)
        per_epoch = self.seconds_per_epoch()
        eta = None if per_epoch is None else per_epoch * (epochs - done)
        self.report_progress(
            {
                "epoch": self.epoch + 1,
                "epochs": epochs,
                "completed": self.completed,
                "step": steps if ended else self.step,
                "steps": steps,
                "fraction": round(done / epochs, 4),
                "eta_seconds": None if eta is None else round(eta, 1),
                "metrics": self.metrics,
            }
        )


class StopCallback(keras.callbacks.Callback):
    """Stop training when the job's owner asks (cancel, shutdown, timeout), at a batch end.

    The owner is asked at most every `interval` seconds (it is a Redis round trip). The answer is
    kept in `reason`; the current epoch then ends early (Keras still runs its validation and
    `on_epoch_end`, so the checkpoint callback saves the weights as they are).

    Args:
        should_stop: returns None to go on, else the reason to stop.
        interval: the least number of seconds between two questions.

    Example:
        ```
        stop = StopCallback(lambda: "cancel")
        model.fit(x, y, epochs=100, callbacks=[stop])   # returns after the first batch
        assert stop.reason == "cancel"
        ```
    """

    async_safe = True

    def __init__(
        self,
        should_stop: Callable[[], str | None],
        *,
        interval: float = 0.2,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__()
        self.should_stop = should_stop
        self.interval = interval
        self.clock = clock
        self.reason: str | None = None
        self.last_check = -math.inf

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.reason is not None or self.clock() - self.last_check < self.interval:
            return
        self.last_check = self.clock()
        reason = self.should_stop()
        if reason is not None:
            log.info("stop requested reason=%s batch=%d", reason, batch + 1)
            self.reason = reason
            self.model.stop_training = True

    def at_epoch_end(self) -> keras.callbacks.Callback:
        """A callback that asks once more at each epoch's end, placed after the one that
        reports the epoch: what that report decided (a pruned sweep trial) stops training at
        the epoch boundary, with the epoch whole."""

        def ask(epoch: int, logs: dict | None = None) -> None:
            reason = self.reason or self.should_stop()
            if reason is not None and self.reason is None:
                log.info("stop requested reason=%s at end of epoch=%d", reason, epoch + 1)
                self.reason = reason
            if reason is not None:
                self.model.stop_training = True

        return keras.callbacks.LambdaCallback(on_epoch_end=ask)


class NaNGuard(keras.callbacks.Callback):
    """Stop at the first batch whose loss is NaN or infinite, remembering where (always on).

    Unlike `keras.callbacks.TerminateOnNaN`, the job must then fail with `nan_loss`, so the guard
    keeps `failure` = `{"epoch", "batch", "value"}` (counted from 1) for the trainer to raise.

    Example:
        ```
        guard = NaNGuard()
        model.compile(optimizer=keras.optimizers.SGD(1e30), loss="mse")
        model.fit(x, y, epochs=5, callbacks=[guard])
        assert guard.failure["epoch"] == 1
        ```
    """

    async_safe = True

    def __init__(self) -> None:
        super().__init__()
        self.failure: dict | None = None
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if self.failure is None and loss is not None and not math.isfinite(float(loss)):
            self.failure = {"epoch": self.epoch + 1, "batch": batch + 1, "value": float(loss)}
            log.error("non-finite loss=%s epoch=%d batch=%d", loss, self.epoch + 1, batch + 1)
            self.model.stop_training = True

    def message(self) -> str:
        """What happened and what to change, for the failed job."""
        failure = self.failure or {}
        return (
            f"The loss became {failure.get('value')} at epoch {failure.get('epoch')}, batch "
            f"{failure.get('batch')}: training diverged. Lower the optimizer's learning_rate, "
            "scale the inputs (data.preprocess.x.scale), or clip gradients (optimizer clipnorm)."
        )


class TimeLimit(keras.callbacks.Callback):
    """Stop at the first batch end after `seconds` of training; `exceeded` says it happened.

    Args:
        seconds: the job's time allowance (`FITSERVE_MAX_JOB_SECONDS`).

    Example:
        ```
        limit = TimeLimit(3600)
        model.fit(x, y, epochs=10**6, callbacks=[limit])   # ends after about an hour
        assert limit.exceeded
        ```
    """

    async_safe = True

    def __init__(self, seconds: float, *, clock: Clock = time.monotonic) -> None:
        super().__init__()
        self.seconds = seconds
        self.clock = clock
        self.exceeded = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.started = self.clock()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if not self.exceeded and self.clock() - self.started > self.seconds:
            log.warning("time limit of %ss reached batch=%d", self.seconds, batch + 1)
            self.exceeded = True
            self.model.stop_training = True


class CheckpointCallback(keras.callbacks.Callback):
    """Save a checkpoint at every epoch end, off the training thread; keep the last `keep` and
    the best by `monitor`.

    Version N holds the weights after epoch N (counted from 1), whatever a later callback does to
    the model when training ends (EarlyStopping's `restore_best_weights`). The epoch end only
    copies the weights and optimizer state; a `CheckpointWriter` thread writes, hashes and lists
    them, one at a time, and `on_train_end` waits for it (call `close` after a fit() that
    raised). The manifest lists a file only once it is complete and hashed, and a pruned file is
    deleted only once the manifest no longer lists it, so a crash mid-write leaves the previous
    checkpoint listed and valid.

    An epoch cut short by a stop (cancel, shutdown, time limit) is saved all the same, marked
    `partial`, so a stop always leaves a loadable checkpoint; a resume starts after it, as Keras
    counts a stopped epoch as ended. An epoch whose loss is not finite is never saved. `history`
    holds every epoch's logs, including those before a resume; `epoch_metrics` each epoch's logs
    by epoch, for this run.

    Args:
        job_dir: the job's folder; files go to `checkpoints/`.
        keep: how many of the latest versions to keep (the best is kept as well).
        monitor: the log to rank versions by (`val_loss`, `accuracy`, ...).
        mode: `min` or `max`.
        on_saved: receives `(entry, kept, best)` after each save, on the writer's thread.
        entries: the kept entries of an earlier run of the job (resume), oldest first.
        best: the best entry of that run.
        history: its history up to the checkpoint resumed from.

    Example:
        ```
        checkpoints = CheckpointCallback(job_dir, keep=2, monitor="loss", mode="min",
                                         on_saved=lambda entry, kept, best: None)
        model.fit(x, y, epochs=5, callbacks=[checkpoints])
        # job_dir/checkpoints holds epoch-0004.keras, epoch-0005.keras and the best one
        ```
    """

    async_safe = True

    def __init__(
        self,
        job_dir: Path,
        *,
        keep: int,
        monitor: str,
        mode: str,
        on_saved: Callable[[dict, list[dict], dict | None], None],
        entries: list[dict] | None = None,
        best: dict | None = None,
        history: dict[str, list] | None = None,
    ) -> None:
        super().__init__()
        self.job_dir = job_dir
        self.keep = keep
        self.monitor = monitor
        self.mode = mode
        self.on_saved = on_saved
        self.entries = list(entries or [])
        self.best = best
        self.history = {name: list(values) for name, values in (history or {}).items()}
        self.epoch_metrics: dict[int, dict[str, float]] = {}
        self._writer: CheckpointWriter | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.steps_done = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps_done = batch + 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = _floats(logs)
        for name, value in metrics.items():
            self.history.setdefault(name, []).append(value)
        self.epoch_metrics[epoch + 1] = metrics
        if not math.isfinite(metrics.get("loss", 0.0)):
            return
        steps = self.params.get("steps")
        partial = steps is not None and self.steps_done < steps
        snapshot = take_snapshot(self.model, epoch + 1, metrics, self.history, partial=partial)
        if self._writer is None:
            self._writer = CheckpointWriter(functools.partial(self._write, ModelCopy(self.model)))
        self._writer.submit(snapshot)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the checkpoints handed to the writer; raise a write's error."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _write(self, copy: ModelCopy, snapshot: Snapshot) -> None:
        """On the writer's thread: file, hash, best, manifest, then the pruned files."""
        entry = save_checkpoint(copy.load(snapshot), self.job_dir, snapshot)
        monitored = snapshot.metrics.get(self.monitor)
        if monitored is not None and is_better(monitored, self._best_value(), self.mode):
            self.best = {"version": snapshot.version, "monitor": self.monitor, "value": monitored}
        self.entries, dropped = select_kept([*self.entries, entry], self.keep, self.best)
        log.info(
            "checkpoint version=%d sha256=%s bytes=%d partial=%s kept=%s best=%s",
            snapshot.version,
            entry["sha256"],
            entry["bytes"],
            snapshot.partial,
            [kept["version"] for kept in self.entries],
            self.best and self.best["version"],
        )
        self.on_saved(entry, self.entries, self.best)
        delete_checkpoint_files(self.job_dir, dropped)

    def _best_value(self) -> float | None:
        if self.best is None or self.best.get("monitor") != self.monitor:
            return None
        return self.best["value"]


class EpochSummaries(keras.callbacks.Callback):
    """Write each epoch's logs as TensorBoard scalars, as `keras.callbacks.TensorBoard` names them.

    `log_dir/train` gets `epoch_loss`, `epoch_accuracy`, ...; `log_dir/validation` gets the
    `val_` logs without the prefix, at step = epoch (from 0). Only at epoch ends: Keras's own
    callback also writes a (disabled) summary at every batch end, which costs time on every step
    and makes Keras wait for every batch's logs.

    Args:
        log_dir: the folder TensorBoard reads.

    Example:
        ```
        model.fit(x, y, epochs=3, callbacks=[EpochSummaries(Path("runs/1"))])
        # tensorboard --logdir runs   shows epoch_loss for epochs 0, 1 and 2
        ```
    """

    async_safe = True

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.writers: dict = {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        import tensorflow as tf

        self.writers = {
            part: tf.summary.create_file_writer(str(self.log_dir / part))
            for part in ("train", "validation")
        }

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import tensorflow as tf

        for name, value in _floats(logs).items():
            part = "validation" if name.startswith("val_") else "train"
            with self.writers[part].as_default():
                tf.summary.scalar(f"epoch_{name.removeprefix('val_')}", value, step=epoch)
        for writer in self.writers.values():
            writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.close()

    def close(self) -> None:
        """Close the event files; also for a fit() that raised, which skips `on_train_end`."""
        for writer in self.writers.values():
            writer.close()
        self.writers = {}
