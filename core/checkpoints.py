"""Checkpoint files of a job: atomic `.keras` saves, sha256 entries, pruning, verified loading.

A checkpoint is a full `.keras` file (weights and optimizer state) at
`checkpoints/epoch-000N.keras`, version N being the model after epoch N. Beside it,
`epoch-000N.history.json` holds the history up to that epoch, so a resumed job returns a
continuous history. Only files an entry lists are ever loaded, and only after their sha256 check:
they are our own files, never a user's, and `safe_mode` stays on regardless.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import Unavailable
from core.serving.export import onnx_path, write_onnx
from core.storage import read_json, sha256_file, temp_path_beside, utc_now, write_json

if TYPE_CHECKING:
    import keras

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


def save_model_file(model: keras.Model, path: Path) -> dict[str, Any]:
    """Save `model` to `path` atomically; return its `sha256` and `bytes`, and `onnx` (the
    sha256 and bytes of its ONNX file beside it, for serving) where the model converts.

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
    onnx = write_onnx(model, path)
    return {"sha256": digest, "bytes": size, **({"onnx": onnx} if onnx else {})}


def save_checkpoint(
    model: keras.Model,
    job_dir: Path,
    version: int,
    metrics: dict[str, float],
    history: dict[str, list],
    *,
    partial: bool = False,
) -> dict[str, Any]:
    """Write version `version` of the job's model and its history; return the manifest entry.

    Args:
        model: the compiled model (its optimizer state is saved too).
        job_dir: the job's folder.
        version: epochs ended so far, counted from 1.
        metrics: that epoch's logs.
        history: every epoch's logs up to and including this one.
        partial: the epoch was cut short by a stop (cancel, shutdown, time limit).

    Example:
        `save_checkpoint(model, job_dir, 3, {"loss": 0.2}, {"loss": [0.9, 0.4, 0.2]})` writes
        `checkpoints/epoch-0003.keras` and returns `{"version": 3, "file": ..., "sha256": ...}`.
    """
    relative = checkpoint_file(version)
    written = save_model_file(model, job_dir / relative)
    entry = {
        "version": version,
        "file": relative,
        **written,
        "created_at": utc_now(),
        "metrics": metrics,
        "partial": partial,
    }
    write_json(job_dir / history_file(entry), history)
    return entry


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


def prune_checkpoints(
    job_dir: Path, entries: list[dict], keep: int, best: dict | None
) -> list[dict]:
    """Keep the last `keep` entries and the best one; delete the others' files.

    Returns the kept entries, oldest first.
    """
    ordered = sorted(entries, key=lambda entry: entry["version"])
    kept_versions = {entry["version"] for entry in ordered[-keep:]} if keep > 0 else set()
    if best is not None:
        kept_versions.add(best["version"])
    kept = []
    for entry in ordered:
        if entry["version"] in kept_versions:
            kept.append(entry)
            continue
        onnx = onnx_path(Path(entry["file"]))
        for relative in (entry["file"], history_file(entry), onnx):
            with contextlib.suppress(FileNotFoundError):
                (job_dir / relative).unlink()
    return kept
