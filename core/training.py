"""Training one job: build, compile, fit with our callbacks, checkpoints, resume, final model.

The Celery task (worker/tasks.py) is a thin shell over `train_job`; it talks to Redis and the job
manifest through a `JobControl` it passes in, so this module knows nothing of queues.
"""

from __future__ import annotations

import errno
import logging
import math
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.checkpoints import CheckpointCorrupt, load_checkpoint, load_history, save_model_file
from core.errors import FitserveError, InvalidData, NotFound
from core.settings import Settings
from core.storage import DataDir, read_json, write_json

if TYPE_CHECKING:
    import keras

    from core.batches import Split

log = logging.getLogger("fitserve.training")

# Epoch summaries per job, read by the compose TensorBoard over the jobs' folders.
TENSORBOARD_DIR = "tensorboard"


class JobControl(Protocol):
    """What a running job tells its owner and asks it; the worker implements it over Redis."""

    job_id: str

    def report_progress(self, progress: dict) -> None:
        """`{"epoch", "epochs", "step", "steps", "fraction", "eta_seconds", "metrics"}`.

        Called at most a few times a second inside an epoch, and always at an epoch's end.
        """

    def report_epoch(self, epoch: int, metrics: dict) -> None:
        """One completed epoch (counted from 1) and its logs."""

    def record_checkpoints(self, checkpoints: list[dict], best: dict | None) -> None:
        """The full kept list after each save, and the best (`version`, `monitor`, `value`)."""

    def event(self, kind: str, **fields: object) -> None:
        """Something worth a line in the job's event stream (`checkpoint`, `stopped`, ...)."""

    def should_stop(self) -> str | None:
        """None to go on, else "cancel", "shutdown" (save and requeue) or "timeout"."""


class TrainingFailed(Exception):
    """The job cannot finish: `reason` a code for the job's error (`nan_loss`, `no_space`...),
    `message` says what to do, `stop` why training stopped where it ran to an end (time limit)."""

    def __init__(self, reason: str, message: str, *, stop: dict | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.stop = stop


def train_job(
    job_dir: Path,
    spec: dict,
    data: DataDir,
    settings: Settings,
    control: JobControl,
    *,
    resume: dict | None,
) -> dict:
    """Train the job described by the normalized `spec`, writing its files into `job_dir`.

    A stop mid-epoch (cancel, shutdown, time limit) ends that epoch early and saves it as its
    version, marked `partial`; a resume from it starts at the next epoch (Keras counts a stopped
    epoch as ended), so every history entry has its version.

    Args:
        job_dir: the job's folder (`checkpoints/`, `model.keras`, `history.json`, `train.log`,
            `tensorboard/` with the epoch summaries).
        spec: the normalized job spec (core.grammar).
        data: the data folder the spec's datasets live in.
        settings: limits (`max_job_seconds`).
        control: the owner's side of the job (progress, checkpoints, stop requests).
        resume: the manifest's latest checkpoint entry to continue from, or None.

    Returns:
        `{"status": "succeeded" | "cancelled" | "interrupted", "epoch", "final", "test_metrics",
        "metrics", "history", "device"}`.

    Raises:
        TrainingFailed: with a reason and a message a person can act on; the traceback is in
            `train.log` and the worker's log.
    """
    with _job_log(job_dir, control.job_id):
        try:
            return _train(job_dir, spec, data, settings, control, resume)
        except Exception as error:
            failed = describe_failure(error)
            log.exception("failed reason=%s message=%s", failed.reason, failed.message)
            raise failed from error


def describe_failure(error: BaseException) -> TrainingFailed:
    """The failure reason and an actionable message for an exception raised while training."""
    import tensorflow as tf

    from core.batches import FeedError

    if isinstance(error, TrainingFailed):
        return error
    detail = f"{type(error).__name__}: {error}"
    if isinstance(error, MemoryError | tf.errors.ResourceExhaustedError):
        return TrainingFailed(
            "resource_exhausted",
            f"The device ran out of memory ({_first_line(detail)}). Lower fit.batch_size or "
            "make the model smaller, or run the job on a device with more memory.",
        )
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return TrainingFailed(
            "no_space",
            "The data volume is full: a checkpoint or model file could not be written. Free "
            "space on the data volume (delete finished jobs or datasets) and resubmit; the "
            "checkpoints already listed on the job are intact.",
        )
    if isinstance(error, FeedError):
        return TrainingFailed("invalid_data", str(error))
    if isinstance(error, ValueError | tf.errors.InvalidArgumentError):
        return TrainingFailed(
            "invalid_data",
            f"The data does not fit the model: {_first_line(detail)}. Check the arrays named in "
            "data.x and data.y against the model's inputs, outputs and loss.",
        )
    if isinstance(error, NotFound | InvalidData):
        return TrainingFailed(
            "invalid_data",
            f"{error.detail} The dataset was deleted or changed after the job was submitted: "
            "upload it again and resubmit the job.",
        )
    if isinstance(error, CheckpointCorrupt):
        return TrainingFailed(
            "internal", f"Cannot resume: {error.detail} Resubmit the job to train from scratch."
        )
    if isinstance(error, FitserveError):
        return TrainingFailed("internal", error.detail)
    return TrainingFailed("internal", f"Training stopped on an unexpected error: {detail}")


def _first_line(text: str, limit: int = 500) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line[:limit]


@contextmanager
def _job_log(job_dir: Path, job_id: str) -> Iterator[None]:
    """Copy the training log lines into the job's `train.log` while it trains."""
    job_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(job_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s job={job_id} %(message)s"))
    handler.setLevel(logging.INFO)
    previous_level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)
        handler.close()


def _train(
    job_dir: Path,
    spec: dict,
    data: DataDir,
    settings: Settings,
    control: JobControl,
    resume: dict | None,
) -> dict:
    import keras

    from core.batches import open_split, training_rows, with_statistics
    from core.callbacks import format_metrics
    from core.devices import describe_devices, job_devices
    from core.feeds import evaluate_split, fit_feeds, output_names
    from core.modeling import build_callbacks, fit_arguments

    if spec.get("seed") is not None:
        keras.utils.set_random_seed(spec["seed"])
    train = open_split(data, spec["data"], None)
    validation, test = (open_split(data, spec["data"], part) for part in ("validation", "test"))
    if resume is None:
        # A resumed model holds its Normalization statistics already.
        rows, _ = training_rows(train, validation, spec["fit"].get("validation_split"))
        spec = with_statistics(spec, train, rows)
    fit_kwargs = fit_arguments(spec)
    epochs = fit_kwargs.pop("epochs")
    with job_devices(spec["resources"]) as strategy:
        device = describe_devices(strategy)
        model, initial_epoch, earlier = _model_to_train(job_dir, spec, resume)
        # A resumed job continues from its own checkpoint, never from the warm start again.
        warm_start = None if resume else _warm_start(model, spec, data, control)
        for split in (train, validation, test):
            if split is not None:
                check_inputs(model, split)
        log.info(
            "start epochs=%d initial_epoch=%d rows=%d device=%s",
            epochs,
            initial_epoch,
            train.rows,
            device.get("replica_devices", device["devices"]),
        )
        control.event("training_started", initial_epoch=initial_epoch, epochs=epochs, device=device)
        ours = OurCallbacks(job_dir, spec, settings, control, earlier)
        theirs = build_callbacks(spec)
        feed, validation_feed, other_kwargs = fit_feeds(
            train,
            validation,
            output_names(model),
            fit_kwargs,
            seed=_shuffle_seed(spec),
            initial_epoch=initial_epoch,
        )
        if initial_epoch < epochs:
            try:
                model.fit(
                    feed,
                    validation_data=validation_feed,
                    initial_epoch=initial_epoch,
                    epochs=epochs,
                    callbacks=[*ours.in_order(), *theirs],
                    verbose=0,
                    **other_kwargs,
                )
            finally:
                ours.close()
        result = ours.outcome(initial_epoch, theirs) | {"device": device}
        if warm_start is not None:
            result["warm_start"] = warm_start
        if result["status"] != "succeeded":
            return result
        if test is not None:
            result["test_metrics"] = evaluate_split(model, test, fit_kwargs.get("batch_size"))
            log.info("test %s", format_metrics(result["test_metrics"]))
        final = save_model_file(model, job_dir / "model.keras")
        held = ours.final_epoch(result["epoch"], theirs)
        result["final"] = {
            "file": "model.keras",
            **final,
            "version": held,
            "epoch": held,
            "metrics": ours.checkpoints.epoch_metrics.get(held, result["metrics"]),
        }
        write_json(job_dir / "history.json", result["history"])
    log.info(
        "succeeded epoch=%d final_epoch=%d model sha256=%s", result["epoch"], held, final["sha256"]
    )
    return result


def _shuffle_seed(spec: dict) -> int:
    """The seed of the per-epoch row order: the job's, else one drawn for this run."""
    return spec["seed"] if spec.get("seed") is not None else secrets.randbits(32)


def _model_to_train(job_dir: Path, spec: dict, resume: dict | None) -> tuple[Any, int, dict]:
    """A new compiled model, or the resumed checkpoint; the first epoch; the earlier run's files."""
    from core.modeling import build_model, compile_model

    if resume is None:
        model = build_model(spec)
        compile_model(model, spec)
        return model, 0, {"checkpoints": [], "best": None, "history": {}}
    # Our own verified file: weights, optimizer state (iterations, moments) and compile config.
    model = load_checkpoint(job_dir, resume)
    earlier = _kept_checkpoints(job_dir, resume) | {"history": load_history(job_dir, resume)}
    return model, resume["version"], earlier


def _warm_start(model: Any, spec: dict, data: DataDir, control: JobControl) -> dict | None:
    """Load the request's warm-start weights into the new model; tell the job which loaded."""
    from core.warmstart import warm_start_model

    loaded = warm_start_model(model, spec, data)
    if loaded is not None:
        log.info(
            "warm_start job=%s version=%s loaded=%s",
            loaded["job"],
            loaded["version"],
            ",".join(loaded["loaded"]) or "-",
        )
        control.event("warm_start", **loaded)
    return loaded


class OurCallbacks:
    """The callbacks every job trains with, and what they decided once fit() returned."""

    def __init__(
        self, job_dir: Path, spec: dict, settings: Settings, control: JobControl, earlier: dict
    ) -> None:
        from core import callbacks

        def on_saved(entry: dict, kept: list[dict], best: dict | None) -> None:
            control.record_checkpoints(kept, best)
            control.event("checkpoint", version=entry["version"], partial=entry["partial"])

        self.control = control
        self.settings = settings
        self.guard = callbacks.NaNGuard()
        self.stop = callbacks.StopCallback(control.should_stop)
        self.limit = callbacks.TimeLimit(settings.max_job_seconds)
        self.checkpoints = callbacks.CheckpointCallback(
            job_dir,
            keep=spec["checkpoint"]["keep"],
            monitor=spec["checkpoint"]["monitor"],
            mode=spec["checkpoint"]["mode"],
            on_saved=on_saved,
            entries=earlier["checkpoints"],
            best=earlier["best"],
            history=earlier["history"],
        )
        self.progress = callbacks.ProgressCallback(control.report_progress, control.report_epoch)
        self.summaries = callbacks.EpochSummaries(job_dir / TENSORBOARD_DIR)

    def in_order(self) -> list:
        """The guard and the stop checks first, so the checkpoint sees their decision; the
        epoch is reported after its checkpoint is handed to the writer. All come before the
        user's callbacks, so each epoch's snapshot is taken before anything (EarlyStopping's
        restore_best_weights) changes the weights."""
        return [
            self.guard,
            self.stop,
            self.limit,
            self.checkpoints,
            self.progress,
            self.summaries,
            # Once the epoch is reported (a sweep may prune its trial then): stop at the boundary.
            self.stop.at_epoch_end(),
        ]

    def close(self) -> None:
        """After fit(), even one that raised: the event files closed, the checkpoints written."""
        self.summaries.close()
        self.checkpoints.close()

    def outcome(self, initial_epoch: int, theirs: list) -> dict:
        """The result so far: `succeeded` unless a stop came; TrainingFailed for nan or time.

        A job that ends records why it stopped (`stop`, a `stopped` event and a log line).
        """
        history = self.checkpoints.history
        # "loss" is in every epoch's logs (validation metrics may skip epochs).
        epoch = max(initial_epoch, len(history.get("loss", ())))
        if self.guard.failure is not None:
            raise TrainingFailed("nan_loss", self.guard.message())
        reason = self.stop.reason or ("timeout" if self.limit.exceeded else None)
        # A pruned sweep trial ends cancelled too (core.runs says why).
        endings = {
            None: "succeeded",
            "cancel": "cancelled",
            "prune": "cancelled",
            "timeout": "failed",
        }
        status = endings.get(reason, "interrupted")
        stop = None if status == "interrupted" else self.stop_record(reason, epoch, theirs)
        if stop is not None:
            self.control.event("stopped", **stop)
            log.info(
                "stopped reason=%s epoch=%d best_epoch=%s monitor=%s",
                stop["reason"],
                epoch,
                stop["best_epoch"],
                stop["monitor"],
            )
        else:
            self.control.event("interrupted", reason=reason, epoch=epoch)
            log.info("interrupted reason=%s epoch=%d", reason, epoch)
        if reason == "timeout":
            raise TrainingFailed(
                "timeout",
                f"The job reached its time limit of {self.settings.max_job_seconds} s "
                f"(FITSERVE_MAX_JOB_SECONDS) in epoch {epoch}; its checkpoints are kept. "
                "Train fewer epochs, on less data, or ask the operator for a longer limit.",
                stop=stop,
            )
        return {
            "status": status,
            "epoch": epoch,
            "stop": stop,
            "metrics": {name: values[-1] for name, values in history.items() if values},
            "history": history,
            "final": None,
            "test_metrics": None,
        }

    def stop_record(self, reason: str | None, epoch: int, theirs: list) -> dict:
        """`{"reason", "epoch", "best_epoch", "monitor"}`: why training ended, and the best epoch
        by the user's EarlyStopping where it has one, else by the checkpoints' monitor."""
        early = _early_stopping(theirs)
        if reason is None:
            stopped = early is not None and early.stopped_epoch > 0
            reason = "early_stopping" if stopped else "completed"
        named = {"cancel": "cancelled", "prune": "pruned", "timeout": "time_limit"}.get(
            reason, reason
        )
        # `best` is set once EarlyStopping saw its monitor (never, when fit() had no epoch left).
        best_value = getattr(early, "best", None)
        if early is not None and best_value is not None and math.isfinite(best_value):
            return {
                "reason": named,
                "epoch": epoch,
                "best_epoch": early.best_epoch + 1,
                "monitor": early.monitor,
            }
        best = self.checkpoints.best
        return {
            "reason": named,
            "epoch": epoch,
            "best_epoch": best and best["version"],
            "monitor": best and best["monitor"],
        }

    def final_epoch(self, epoch: int, theirs: list) -> int:
        """The epoch whose weights the model holds after fit(): the best one where EarlyStopping
        restored it (which Keras does at the end of training, stopped early or not)."""
        early = _early_stopping(theirs)
        if early is not None and early.restore_best_weights and early.best_weights is not None:
            return early.best_epoch + 1
        return epoch


def _early_stopping(callbacks: list) -> Any:
    """The user's EarlyStopping callback, if the job has one."""
    import keras

    return next((c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)), None)


def _kept_checkpoints(job_dir: Path, resume: dict) -> dict[str, Any]:
    """The kept checkpoints and best of the job's earlier attempts, from its manifest."""
    path = job_dir / "manifest.json"
    manifest = read_json(path) if path.is_file() else {}
    kept = [
        entry
        for entry in manifest.get("checkpoints") or [resume]
        if entry["version"] <= resume["version"]
    ]
    best = manifest.get("best")
    if best is not None and best["version"] > resume["version"]:
        best = None
    return {"checkpoints": kept, "best": best}


def check_inputs(model: keras.Model, split: Split) -> None:
    """Each input array must have the shape the model's input expects, else invalid_data."""
    for tensor in model.inputs:
        name = tensor.name
        array = split.x.get(name)
        if array is None and len(split.x) == 1 and len(model.inputs) == 1:
            array = next(iter(split.x.values()))
            name = next(iter(split.x))
        if array is None:
            raise TrainingFailed(
                "invalid_data",
                f"The model has an input '{tensor.name}' but data.x maps no array to it; "
                f"data.x maps {sorted(split.x)}.",
            )
        expected = tuple(tensor.shape)
        received = tuple(array.shape)
        fits = len(expected) == len(received) and all(
            want is None or want == got for want, got in zip(expected, received, strict=True)
        )
        if not fits:
            raise TrainingFailed(
                "invalid_data",
                f"Input '{tensor.name}' expects shape {_shape(expected)} but array "
                f"'{split.names[name]}' has shape {_shape(received)}. Fix the model's input "
                "shape or the array named in data.x.",
            )


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("None" if dim is None else str(dim) for dim in shape) + ")"
