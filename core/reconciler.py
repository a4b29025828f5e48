"""Jobs whose worker vanished go back to the queue within seconds, not after a broker timeout.

Every worker's heartbeat calls `reconcile`; a Redis lock lets one of them act per period.
- A running job whose lease expired (its worker died) is requeued and re-sent with the same task
  id, or fails `worker_lost` once it has used its attempts; a cancelling one becomes cancelled.
- After Redis lost its data (the records marker is gone), the records are rebuilt from the
  volume and the queued jobs re-sent, since their broker messages went with the data.
- Every ORPHAN_PERIOD, a queued job that has waited two leases with no message in its queue
  (an API process died between recording and enqueueing it; a whole worker died between
  receiving it and leasing it) is sent again. A duplicate message is harmless: the delivery
  that finds the job leased or finished acks without work.
- With FITSERVE_JOB_TTL_SECONDS set, finished jobs past their time are removed with their files,
  unless pinned; a live job is never touched (removal refuses any status but a finished one).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable

import orjson
import redis

from core.batch import CANCELLED as BATCH_CANCELLED
from core.batch import BatchPrediction, BatchStore, batch_lost_message
from core.errors import Conflict, NotFound
from core.jobs import TERMINAL, Job, JobStore, expires_after, parse_time
from core.queues import broker_lists, train_queue
from core.rediskeys import EXPIRY_LOCK, ORPHAN_LOCK, RECONCILER_LOCK
from core.runs import CANCELLED, worker_lost_message

log = logging.getLogger("fitserve.reconciler")

ORPHAN_PERIOD = 30
# Expiry looks at every finished job: at most once a minute, sooner for short TTLs.
EXPIRY_PERIOD = 60
Send = Callable[[Job], None]
BatchSend = Callable[[BatchPrediction], None]
# Enqueue a sweep driver step: (sweep id, task id).
SendSweep = Callable[[str, str], None]


def reconcile(
    store: JobStore,
    send: Send,
    holder: str,
    *,
    batches: BatchStore | None = None,
    send_batch: BatchSend | None = None,
    send_sweep: SendSweep | None = None,
) -> list[str]:
    """One pass; returns the ids of the jobs (and batch predictions) it changed. Does nothing if
    another holds the lock."""
    period = max(1, store.settings.heartbeat_seconds)
    if not store.redis.set(RECONCILER_LOCK, holder, nx=True, ex=period):
        return []
    changed = []
    if send_sweep is not None:
        restart_sweep_drivers(store, send_sweep, rebuild=store.records_lost())
    if store.records_lost():
        # Batch predictions first: the jobs' rebuild sets the marker both share.
        if batches is not None and send_batch is not None:
            for batch in batches.rebuild_records():
                log.info("batch_resent batch=%s after=rebuild", batch["id"])
                send_batch(batch)
                changed.append(batch["id"])
        for job in store.rebuild_records():
            log.info("job_resent job=%s after=rebuild", job["id"])
            send(job)
            changed.append(job["id"])
    if store.rebuilt_recently():
        return changed
    for status in ("running", "cancelling"):
        for job_id in store.job_ids(status):
            if store.lease_holder(job_id) is None and _recover(store, job_id, send):
                changed.append(job_id)
    if batches is not None and send_batch is not None:
        changed += _recover_batches(batches, send_batch)
    if store.redis.set(ORPHAN_LOCK, holder, nx=True, ex=ORPHAN_PERIOD):
        changed += _resend_orphans(store, send)
        if batches is not None and send_batch is not None:
            changed += _resend_orphan_batches(batches, send_batch)
    ttl = store.settings.job_ttl_seconds
    if ttl > 0 and store.redis.set(EXPIRY_LOCK, holder, nx=True, ex=_expiry_period(ttl)):
        changed += expire_jobs(store, time.time())
    return changed


def _expiry_period(ttl: int) -> int:
    return max(1, min(EXPIRY_PERIOD, ttl // 10))


def expire_jobs(store: JobStore, now: float) -> list[str]:
    """Remove the finished, unpinned jobs whose time is up at `now`; their ids."""
    removed = []
    for status in TERMINAL:
        for job_id in store.job_ids(status):
            with contextlib.suppress(NotFound, Conflict):
                due = expires_after(store.get(job_id), store.settings.job_ttl_seconds)
                if due is not None and due <= now:
                    store.delete(job_id)
                    log.info("job_expired job=%s status=%s", job_id, status)
                    removed.append(job_id)
    return removed


def _resend_orphans(store: JobStore, send: Send) -> list[str]:
    """Send again the queued jobs, waiting for two leases already, whose message is gone."""
    stale = time.time() - 2 * store.settings.lease_seconds
    jobs = []
    for job_id in store.job_ids("queued"):
        with contextlib.suppress(NotFound):
            job = store.get(job_id)
            if parse_time(job["updated_at"]) < stale and not store.lease_holder(job["id"]):
                jobs.append(job)
    if not jobs:
        return []
    waiting = waiting_task_ids(store.redis, {train_queue(job.get("gpus") or 1) for job in jobs})
    resent = []
    for job in jobs:
        if job["id"] not in waiting:
            log.info("job_resent job=%s after=message_lost", job["id"])
            send(job)
            resent.append(job["id"])
    return resent


def _resend_orphan_batches(batches: BatchStore, send: BatchSend) -> list[str]:
    """Send again the queued batch predictions, waiting for two leases already, whose message
    is gone (as `_resend_orphans` does for jobs)."""
    stale = time.time() - 2 * batches.settings.lease_seconds
    found = []
    for batch_id in batches.ids("queued"):
        with contextlib.suppress(NotFound):
            batch = batches.get(batch_id)
            if parse_time(batch["updated_at"]) < stale and not batches.leases.holder(batch_id):
                found.append(batch)
    if not found:
        return []
    waiting = waiting_task_ids(batches.redis, {train_queue(1)})
    resent = []
    for batch in found:
        if batch["id"] not in waiting:
            log.info("batch_resent batch=%s after=message_lost", batch["id"])
            send(batch)
            resent.append(batch["id"])
    return resent


def waiting_task_ids(client: redis.Redis, queues: Iterable[str]) -> set[str]:
    """The task ids of the messages waiting in Celery queues on Redis (every priority's list)."""
    found = set()
    for queue in queues:
        for name in broker_lists(queue):
            for raw in client.lrange(name, 0, -1):
                with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                    found.add(orjson.loads(raw)["headers"]["id"])
    return found


def _recover(store: JobStore, job_id: str, send: Send) -> bool:
    """Requeue (or end) one job found without a lease; False if it changed meanwhile."""
    job = store.get(job_id)
    was = job["status"]
    unleased = _unleased(store)
    try:
        if job["status"] == "cancelling":
            store.transition(
                job_id, "cancelled", allowed=unleased, reason="cancelled", message=CANCELLED
            )
        elif job["attempt"] >= store.settings.max_attempts:
            message = worker_lost_message(job, store.settings.max_attempts)
            store.transition(
                job_id, "failed", allowed=unleased, reason="worker_lost", message=message
            )
        else:
            job = store.transition(job_id, "queued", allowed=unleased)
            store.add_event(job_id, "requeued", reason="worker_lost", attempt=job["attempt"])
            send(job)
    except Conflict:
        return False
    log.info("job_recovered job=%s was=%s attempt=%s", job_id, was, job["attempt"])
    return True


def _recover_batches(batches: BatchStore, send: BatchSend) -> list[str]:
    """Batch predictions whose worker vanished: requeued to resume from their committed offset
    (same rules as jobs: the attempt limit, a cancelling one ends cancelled)."""
    changed = []
    for status in ("running", "cancelling"):
        for batch_id in batches.ids(status):
            if batches.leases.holder(batch_id) is not None:
                continue
            with contextlib.suppress(Conflict, NotFound):
                batch = batches.get(batch_id)
                if batch["status"] == "cancelling":
                    batches.transition(
                        batch_id,
                        "cancelled",
                        unleased=True,
                        reason="cancelled",
                        message=BATCH_CANCELLED,
                    )
                elif batch["attempt"] >= batches.settings.max_attempts:
                    message = batch_lost_message(batch["attempt"], batches.settings.max_attempts)
                    batches.transition(
                        batch_id, "failed", unleased=True, reason="worker_lost", message=message
                    )
                else:
                    send(batches.transition(batch_id, "queued", unleased=True))
                log.info("batch_recovered batch=%s was=%s", batch_id, batch["status"])
                changed.append(batch_id)
    return changed


def _unleased(store: JobStore) -> Callable[[Job], str | None]:
    def check(job: Job) -> str | None:
        if store.lease_holder(job["id"]) is not None:
            return f"Job {job['id']} was leased again."
        if job["status"] not in ("running", "cancelling"):
            return f"Job {job['id']} is {job['status']} now."
        return None

    return check


def restart_sweep_drivers(store: JobStore, send_sweep: SendSweep, *, rebuild: bool) -> list[str]:
    """Start a driver chain for each live sweep without one; `rebuild` first restores the sweep
    records from the volume (Redis lost its data). Returns the sweeps restarted."""
    from core.sweeps import SweepStore, start_driver

    sweeps = SweepStore(store.redis, store.data, store.settings)
    if rebuild:
        sweeps.rebuild_records()
    restarted = []
    for sweep_id in sweeps.live_ids():
        task_id = start_driver(store.redis, sweep_id)
        if task_id is not None:
            log.info("sweep_driver_started sweep=%s task=%s", sweep_id, task_id)
            send_sweep(sweep_id, task_id)
            restarted.append(sweep_id)
    return restarted
