"""One delivery of a job to a worker: lease, attempt, train, outcome. The Celery task calls it.

A delivery that finds the job finished, or leased by a live worker, does nothing: duplicates
(a reconciler re-send beside a redelivered message) are harmless. The lease is held for the
whole run and renewed by the worker's heartbeat; the final status is written before it is let go.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import redis

from core.errors import Conflict, FitserveError
from core.integers import read_int
from core.jobs import TERMINAL, Job, JobStore
from core.leases import Leases
from core.rediskeys import shutdown_key, stop_key
from core.storage import utc_now

log = logging.getLogger("fitserve.worker")


@dataclasses.dataclass(frozen=True)
class WorkerIdentity:
    """Who is training: the Celery node name, this host and process (the lease holder)."""

    name: str
    host: str = dataclasses.field(default_factory=socket.gethostname)
    pid: int = dataclasses.field(default_factory=os.getpid)

    @property
    def holder(self) -> str:
        return f"{self.host}/{self.pid}/{self.name}"


# Linux allows at most 2**22 process ids.
MAX_PID = 2**22


def holder_is_dead(holder: str) -> bool:
    """A lease holder on this host whose process is gone (a pool child killed mid-job)."""
    host, _, rest = holder.partition("/")
    pid = read_int(rest.partition("/")[0], 1, MAX_PID)
    if host != socket.gethostname() or pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LeasedWork(Protocol):
    """What the heartbeat needs of the work running in its process: the unit's id (a job's or a
    batch prediction's), its lease to renew, and a flag to raise once the lease is lost."""

    job_id: str
    lease_lost: bool

    def renew_lease(self) -> bool: ...


class StoreControl:
    """`core.training.JobControl` over the job store, for one attempt of one job."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        attempt: int,
        worker: WorkerIdentity,
        *,
        trial: Mapping[str, Any] | None = None,
    ) -> None:
        self.job_id = job_id
        # `{"sweep", "trial"}` for a sweep's trial, whose epochs its sweep may prune.
        self.trial = trial
        self.store = store
        self.attempt = attempt
        self.worker = worker
        self.lease_lost = False
        self.stop_reason: str | None = None

    def renew_lease(self) -> bool:
        """Renew this attempt's lease (the heartbeat calls it); False once another holds it."""
        return self.store.renew_lease(self.job_id, self.worker.holder)

    def report_progress(self, progress: dict) -> None:
        # Progress is best effort: a Redis blip must not fail a job that is training well.
        with _tolerated("progress"):
            self.store.update(self.job_id, manifest=False, progress=progress)

    def report_epoch(self, epoch: int, metrics: dict) -> None:
        self.store.record_epoch(self.job_id, epoch, metrics)
        self.event("epoch", epoch=epoch, metrics=metrics)
        if self.trial is not None and self._pruned(self.trial, epoch, metrics):
            # Asked for at this epoch's end (core.training's epoch-end stop check).
            self.stop_reason = "prune"

    def _pruned(self, trial: Mapping[str, Any], epoch: int, metrics: dict) -> bool:
        """Whether the trial's sweep prunes it after `epoch`; a Redis blip prunes nothing."""
        from core.sweeps import report_trial_epoch

        with _tolerated("sweep report"):
            return report_trial_epoch(self.store.redis, self.store.settings, trial, epoch, metrics)
        return False

    def record_checkpoints(self, checkpoints: list[dict], best: dict | None) -> None:
        self.store.update(self.job_id, checkpoints=checkpoints, best=best)

    def event(self, kind: str, **fields: object) -> None:
        with _tolerated("event"):
            self.store.add_event(self.job_id, kind, attempt=self.attempt, **fields)

    def should_stop(self) -> str | None:
        """Ask Redis for a cancel or a shutdown; a reason, once found, stays.

        A Redis round trip: the training loop's StopCallback spaces the questions out.
        """
        if self.stop_reason is None:
            job_flag = worker_flag = None
            with _tolerated("stop check"):
                job_flag, worker_flag = self.store.redis.mget(
                    stop_key(self.job_id), shutdown_key(self.worker.name)
                )
            if job_flag == b"cancel":
                self.stop_reason = "cancel"
            elif worker_flag or self.lease_lost:
                self.stop_reason = "shutdown"
        return self.stop_reason


@contextlib.contextmanager
def _tolerated(what: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as error:
        log.warning("redis_unavailable during=%s error=%r", what, error)


Train = Callable[..., dict]
Send = Callable[[Job], None]


def run_job(
    store: JobStore,
    job: Job,
    worker: WorkerIdentity,
    *,
    train: Train,
    send: Send,
    devices: Callable[[], dict],
    on_control: Callable[[LeasedWork | None], None] = lambda control: None,
) -> str:
    """Run one delivery of `job` (its record as the delivery found it); returns what happened
    (for the task's log line).

    `train` is `core.training.train_job`; `send` re-enqueues a job (after a shutdown);
    `on_control` lets the heartbeat renew the lease of the run in progress.
    """
    job_id = job["id"]
    if job["status"] in TERMINAL:
        return "finished"
    if not take_lease(store.leases, job_id, worker):
        return "leased"
    try:
        job, resume = _start_attempt(store, job, worker, devices)
        if job["status"] != "running":
            return job["status"]
        trial = {"sweep": job["sweep"], "trial": job.get("trial")} if job.get("sweep") else None
        control = StoreControl(store, job_id, job["attempt"], worker, trial=trial)
        on_control(control)
        return _train_and_record(store, job, resume, control, train, send)
    finally:
        on_control(None)
        store.release_lease(job_id, worker.holder)


def take_lease(leases: Leases, unit_id: str, worker: WorkerIdentity) -> bool:
    """Take the lease of a job or batch prediction, or take it over from a holder on this host
    whose process is gone; False while another live process holds it."""
    if leases.acquire(unit_id, worker.holder):
        return True
    holder = leases.holder(unit_id)
    if holder is not None and holder_is_dead(holder):
        log.info("lease_taken_over job=%s dead_holder=%s", unit_id, holder)
        return leases.steal(unit_id, holder, worker.holder)
    return False


def _start_attempt(
    store: JobStore, job: Job, worker: WorkerIdentity, devices: Callable[[], dict]
) -> tuple[Job, dict | None]:
    """Count the attempt and mark the job running; past the limit it fails `worker_lost`.

    Returns the job and the checkpoint it resumes from (None: from the start).
    """
    job_id = job["id"]
    if job["status"] == "cancelling":
        cancelled = store.transition(job_id, "cancelled", reason="cancelled", message=CANCELLED)
        return cancelled, None
    attempt = job["attempt"] + 1
    limit = store.settings.max_attempts
    if attempt > limit:
        message = worker_lost_message(job, limit)
        return store.transition(job_id, "failed", reason="worker_lost", message=message), None
    resume = _latest_checkpoint(store, job)
    store.truncate_history(job_id, resume["version"] if resume else 0)
    job = store.transition(
        job_id,
        "running",
        attempt=attempt,
        worker=worker.name,
        device=devices(),
        started_at=job.get("started_at") or utc_now(),
        resume_from=resume["version"] if resume else None,
        reason=None,
        message=None,
    )
    store.add_event(
        job_id,
        "attempt_started",
        attempt=attempt,
        worker=worker.name,
        pid=worker.pid,
        resume_from=resume["version"] if resume else 0,
    )
    return job, resume


def _latest_checkpoint(store: JobStore, job: Job) -> dict | None:
    """The newest checkpoint whose file passes its sha256 check, else None (start over)."""
    from core.checkpoints import CheckpointCorrupt, verify_checkpoint

    job_dir = store.data.job(job["id"])
    for entry in sorted(job.get("checkpoints") or [], key=lambda e: e["version"], reverse=True):
        try:
            verify_checkpoint(job_dir, entry)
        except CheckpointCorrupt as error:
            log.warning("checkpoint_skipped job=%s detail=%s", job["id"], error.detail)
            continue
        return entry
    return None


def _train_and_record(
    store: JobStore,
    job: Job,
    resume: dict | None,
    control: StoreControl,
    train: Train,
    send: Send,
) -> str:
    from core.training import TrainingFailed

    job_id = job["id"]
    try:
        outcome = train(
            store.data.job(job_id),
            store.normalized_request(job_id),
            store.data,
            store.settings,
            control,
            resume=resume,
        )
    except TrainingFailed as failure:
        if isinstance(failure.__cause__, redis.RedisError):
            # Redis was away for longer than the worker's retries: not the job's fault. It stays
            # running without a lease; the reconciler requeues it to resume from its checkpoint.
            log.warning("redis_unavailable job=%s: attempt left to the reconciler", job_id)
            return "redis_unavailable"
        stop = {"stop": failure.stop} if failure.stop else {}
        _finish(store, job_id, "failed", reason=failure.reason, message=failure.message, **stop)
        return "failed"
    except FitserveError as error:
        _finish(store, job_id, "failed", reason=error.code, message=error.detail)
        return "failed"
    except Exception as error:
        _finish(
            store,
            job_id,
            "failed",
            reason="internal",
            message=f"Unexpected error: {type(error).__name__}: {error}",
        )
        raise
    recorded = ("epoch", "metrics", "final", "test_metrics", "stop")
    fields = {name: outcome.get(name) for name in recorded} | {
        name: outcome[name] for name in ("device", "warm_start") if outcome.get(name)
    }
    if outcome["status"] == "succeeded":
        _finish(store, job_id, "succeeded", **fields)
    elif outcome["status"] == "cancelled" and control.stop_reason == "prune":
        _finish(store, job_id, "cancelled", reason="pruned", message=PRUNED, **fields)
    elif outcome["status"] == "cancelled":
        _finish(store, job_id, "cancelled", reason="cancelled", message=CANCELLED, **fields)
    elif control.lease_lost:
        log.warning("lease_lost job=%s: another worker owns the job now", job_id)
        return "lease_lost"
    else:
        _requeue(store, job_id, control.worker.holder, send, fields)
    return outcome["status"]


def _finish(store: JobStore, job_id: str, status: str, **fields: Any) -> None:
    try:
        store.transition(job_id, status, **fields)
    except Conflict:
        current = store.get(job_id)["status"]
        if current not in TERMINAL:
            raise
        log.warning("already_finished job=%s status=%s wanted=%s", job_id, current, status)


def _requeue(store: JobStore, job_id: str, holder: str, send: Send, fields: dict) -> None:
    """A shutdown stopped the job after a checkpoint: back to the queue, at once."""
    try:
        job = store.transition(job_id, "queued", **fields)
    except Conflict:
        # Cancelled while it was stopping: the cancel wins.
        _finish(store, job_id, "cancelled", reason="cancelled", message=CANCELLED, **fields)
        return
    store.add_event(job_id, "requeued", reason="shutdown")
    # Let go first: a worker that takes the new message at once must find the job free.
    store.release_lease(job_id, holder)
    send(job)


def worker_lost_message(job: Job, limit: int) -> str:
    """What a person reads when a job ran out of attempts because its workers kept dying."""
    return (
        f"The worker training this job was lost {job['attempt']} times "
        f"(FITSERVE_MAX_ATTEMPTS={limit}): it was killed or crashed mid-training, often by the "
        "out-of-memory killer. Lower fit.batch_size or the model size, check the worker's log, "
        "and resubmit; the checkpoints already listed on the job are kept."
    )


CANCELLED = "Cancelled by request; the checkpoints listed on the job are kept."
PRUNED = (
    "Pruned by its sweep: its objective at this epoch was worse than the sweep's other trials "
    "at the same epoch. The checkpoints listed on the job are kept."
)
