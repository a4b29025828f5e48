"""Training one job: build, compile, fit with our callbacks, checkpoints, resume, final model.

The Celery task (worker/tasks.py) is a thin shell over `train_job`; it talks to Redis and the job
manifest through a `JobControl` it passes in, so this module knows nothing of queues.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from core.settings import Settings
from core.storage import DataDir

FAILURE_REASONS = (
    "invalid_data",
    "nan_loss",
    "resource_exhausted",
    "no_space",
    "timeout",
    "internal",
)


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
    """The job cannot finish: `reason` is one of FAILURE_REASONS, `message` says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


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

    Args:
        job_dir: the job's folder (`checkpoints/`, `model.keras`, `history.json`, `train.log`).
        spec: the normalized job spec (core.spec).
        data: the data folder the spec's datasets live in.
        settings: limits (`max_job_seconds`, `keep_checkpoints`).
        control: the owner's side of the job (progress, checkpoints, stop requests).
        resume: the manifest's latest checkpoint entry to continue from, or None.

    Returns:
        `{"status": "succeeded" | "cancelled" | "interrupted", "epoch", "final", "test_metrics",
        "metrics", "history", "device"}`.

    Raises:
        TrainingFailed: with a reason and a message a person can act on.
    """
    raise NotImplementedError("train_job lands in the next commit")
