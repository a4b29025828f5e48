"""Checkpoint files of a job: atomic `.keras` saves, sha256 entries, pruning, verified loading.

A checkpoint is a full `.keras` file (weights and optimizer state) at
`checkpoints/epoch-000N.keras`, version N being the model after epoch N. Beside it,
`epoch-000N.history.json` holds the history up to that epoch, so a resumed job returns a
continuous history. Only files an entry lists are ever loaded, and only after their sha256 check:
they are our own files, never a user's, and `safe_mode` stays on regardless.

Saving costs the training loop only a copy of the weights and optimizer state (`Snapshot`): a
`CheckpointWriter` thread loads the copy into a second model of the same architecture
(`ModelCopy`) and writes, hashes and lists it, one checkpoint at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import queue
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import Unavailable
from core.serving.export import onnx_path, write_onnx
from core.storage import (
    read_json,
    sha256_file,
    temp_path_beside,
    utc_now,
    write_json,
)

if TYPE_CHECKING:
    import keras
    import numpy as np

log = logging.getLogger("fitserve.training")

CHECKPOINTS = "checkpoints"
_FILE = re.compile(r"checkpoints/epoch-(\d{4,})\.keras")


class CheckpointCorrupt(Unavailable):
    """A checkpoint a manifest lists is missing, outside its folder, or fails its sha256 check."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code="corrupt_checkpoint")


def checkpoint_file(version: int) -> str:
    """The checkpoint's path relative to the job folder, as manifests list it."""
    return f"{CHECKPOINTS}/epoch-{version:04d}.keras"


def history_file(entry: dict) -> str:
    """The history sidecar of a checkpoint entry, relative to the job folder."""
    return entry["file"].removesuffix(".keras") + ".history.json"


def save_model_file(model: keras.Model, path: Path, *, onnx: bool = True) -> dict[str, Any]:
    """Save `model` to `path` atomically; return its `sha256` and `bytes`, and with `onnx` the
    sha256 and bytes of its ONNX file beside it (for serving) where the model converts.

    Keras writes a temp file beside `path` (its name ends in `.keras`, as Keras insists), which is
    fsynced and `os.replace`d into place: a full disk leaves the previous file intact.
    """
    tmp = temp_path_beside(path)
    try:
        model.save(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    converted = write_onnx(model, path) if onnx else None
    return {"sha256": digest, "bytes": size, **({"onnx": converted} if converted else {})}


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a checkpoint holds, copied at an epoch end so that training can go on meanwhile.

    `version` is the epochs ended so far (counted from 1); `metrics` that epoch's logs; `history`
    every epoch's logs up to it; `partial` says a stop (cancel, shutdown, time limit) cut it short.
    """

    version: int
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    metrics: dict[str, float]
    history: dict[str, list]
    partial: bool = False


def take_snapshot(
    model: keras.Model,
    version: int,
    metrics: dict[str, float],
    history: dict[str, list],
    *,
    partial: bool = False,
) -> Snapshot:
    """Copy the model's weights and optimizer state (a few milliseconds, the only part of a
    checkpoint the training loop waits for)."""
    return Snapshot(
        version=version,
        weights=model.get_weights(),
        optimizer=[variable.numpy() for variable in model.optimizer.variables],
        metrics=dict(metrics),
        history={name: list(values) for name, values in history.items()},
        partial=partial,
    )


class ModelCopy:
    """A second model with the training model's architecture and compile config.

    The writer thread loads a snapshot into it and saves it, so the file is exactly what
    `model.save` would have written at that epoch end while the training model moves on. Build it
    on the training thread: Keras keeps its dtype policy and strategy per thread.

    Example:
        ```
        copy = ModelCopy(model)
        snapshot = take_snapshot(model, 1, {"loss": 0.3}, {"loss": [0.3]})
        save_checkpoint(copy.load(snapshot), job_dir, snapshot)
        ```
    """

    def __init__(self, model: keras.Model) -> None:
        import keras

        self.model = keras.models.clone_model(model)
        self.model.compile_from_config(model.get_compile_config())
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        mine, theirs = len(self.model.optimizer.variables), len(model.optimizer.variables)
        if mine != theirs:
            raise ValueError(
                f"The model's copy has {mine} optimizer variables where the model has {theirs}."
            )

    def load(self, snapshot: Snapshot) -> keras.Model:
        """The copy, holding the snapshot's weights and optimizer state."""
        self.model.set_weights(snapshot.weights)
        for variable, value in zip(self.model.optimizer.variables, snapshot.optimizer, strict=True):
            variable.assign(value)
        return self.model


def save_checkpoint(model: keras.Model, job_dir: Path, snapshot: Snapshot) -> dict[str, Any]:
    """Write `model` (holding `snapshot`) as version `snapshot.version`, and its history; return
    the manifest entry. Checkpoints get no ONNX file: converting costs more than writing, so only
    the final model is converted (`save_model_file`), and TensorFlow serves the others.

    Example:
        `save_checkpoint(model, job_dir, snapshot)` for version 3 writes
        `checkpoints/epoch-0003.keras` and returns `{"version": 3, "file": ..., "sha256": ...}`.
    """
    relative = checkpoint_file(snapshot.version)
    written = save_model_file(model, job_dir / relative, onnx=False)
    entry = {
        "version": snapshot.version,
        "file": relative,
        **written,
        "created_at": utc_now(),
        "metrics": snapshot.metrics,
        "partial": snapshot.partial,
    }
    write_json(job_dir / history_file(entry), snapshot.history)
    return entry


class CheckpointWriter:
    """One background thread that writes snapshots, one at a time, in the order handed over.

    At most one snapshot waits while another is written: `submit` blocks until the waiting one is
    taken, so memory holds two copies at most and a slow disk slows training instead of piling
    up versions. A write that raises stops the writer; the error comes out of the next `submit`
    or of `close`, once.

    Args:
        write: writes one snapshot (on the writer's thread).

    Example:
        ```
        writer = CheckpointWriter(lambda snapshot: save_checkpoint(copy.load(snapshot), ...))
        writer.submit(snapshot)   # returns at once
        writer.close()            # returns once the checkpoint is written and listed
        ```
    """

    def __init__(self, write: Callable[[Snapshot], None]) -> None:
        self._write = write
        self._waiting: queue.Queue[Snapshot | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def submit(self, snapshot: Snapshot) -> None:
        """Hand a snapshot over; waits while another one is already waiting."""
        self._raise_error()
        self._waiting.put(snapshot)

    def close(self) -> None:
        """Wait for every snapshot handed over to be written; raise a write's error."""
        if self._thread.is_alive():
            self._waiting.put(None)
            self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        failed = False
        while (snapshot := self._waiting.get()) is not None:
            if failed:
                continue  # drained so that `submit` never blocks on a stopped writer
            try:
                self._write(snapshot)
            except BaseException as error:
                log.error("checkpoint_failed version=%d error=%r", snapshot.version, error)
                self._error, failed = error, True


def verify_checkpoint(job_dir: Path, entry: dict) -> Path:
    """The checkpoint's path once its name and sha256 match `entry`, else CheckpointCorrupt."""
    relative = entry.get("file")
    if not isinstance(relative, str) or not _FILE.fullmatch(relative):
        raise CheckpointCorrupt(f"Checkpoint entry names no checkpoint file: {relative!r}.")
    path = job_dir / relative
    if not path.is_file():
        raise CheckpointCorrupt(f"Checkpoint {relative} is missing from the job's folder.")
    if sha256_file(path) != entry.get("sha256"):
        raise CheckpointCorrupt(
            f"Checkpoint {relative} fails its sha256 check: the file changed after it was saved."
        )
    return path


def load_checkpoint(job_dir: Path, entry: dict, *, compile: bool = True) -> keras.Model:
    """Load a verified checkpoint (weights, and with `compile` the optimizer state)."""
    import keras

    path = verify_checkpoint(job_dir, entry)
    return keras.saving.load_model(path, compile=compile, safe_mode=True)


def load_history(job_dir: Path, entry: dict) -> dict[str, list]:
    """The history saved beside a checkpoint: every epoch's logs up to its version."""
    return read_json(job_dir / history_file(entry))


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether `value` beats `best` for a monitor that is minimized (`min`) or maximized."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def select_kept(entries: list[dict], keep: int, best: dict | None) -> tuple[list[dict], list[dict]]:
    """The last `keep` entries and the best one (oldest first), and the others."""
    ordered = sorted(entries, key=lambda entry: entry["version"])
    kept_versions = {entry["version"] for entry in ordered[-keep:]} if keep > 0 else set()
    if best is not None:
        kept_versions.add(best["version"])
    kept = [entry for entry in ordered if entry["version"] in kept_versions]
    dropped = [entry for entry in ordered if entry["version"] not in kept_versions]
    return kept, dropped


def delete_checkpoint_files(job_dir: Path, entries: list[dict]) -> None:
    """Delete the files of entries no manifest lists any more (checkpoint, history, ONNX)."""
    for entry in entries:
        onnx = onnx_path(Path(entry["file"]))
        for relative in (entry["file"], history_file(entry), onnx):
            with contextlib.suppress(FileNotFoundError):
                (job_dir / relative).unlink()
