"""The training task: a thin shell over `core.runs.run_job` (lease, attempt, train, outcome)."""

from __future__ import annotations

import logging

from celery import Task

from core.errors import NotFound
from core.queues import BATCH_TASK, TRAIN_TASK, send_batch, send_training
from core.runs import run_job
from worker import app as worker_app

log = logging.getLogger("fitserve.worker")


@worker_app.app.task(name=TRAIN_TASK, bind=True, acks_late=True)
def train(self: Task, job_id: str) -> str:
    """Train `job_id`, or ack without work if it is unknown, finished or another worker's."""
    from core.devices import describe_devices
    from core.training import train_job

    child = worker_app.child()
    try:
        job = child.store.get(job_id)
    except NotFound:
        log.info("job_done job=%s outcome=unknown", job_id)
        return "unknown"
    with worker_app.job_context(job_id, job.get("request_id")):
        log.info("job_received delivery=%s", self.request.delivery_info.get("redelivered"))
        outcome = run_job(
            child.store,
            job,
            child.worker,
            train=train_job,
            send=lambda queued: send_training(worker_app.app, queued),
            devices=describe_devices,
            on_control=child.heartbeat.set_control,
        )
        log.info("job_done outcome=%s", outcome)
    return outcome


@worker_app.app.task(name=BATCH_TASK, bind=True, acks_late=True)
def batch_predict(self: Task, batch_id: str) -> str:
    """Score `batch_id` from its committed offset, or ack without work if it is unknown,
    finished or another worker's."""
    from core.scoring import run_batch

    child = worker_app.child()
    store = child.batches
    try:
        batch = store.get(batch_id)
    except NotFound:
        log.info("batch_done batch=%s outcome=unknown", batch_id)
        return "unknown"
    with worker_app.job_context(batch_id, batch.get("request_id")):
        log.info("batch_received delivery=%s", self.request.delivery_info.get("redelivered"))
        outcome = run_batch(
            store,
            batch,
            child.worker,
            load=child.batch_model,
            send=lambda queued: send_batch(worker_app.app, queued),
            on_control=child.heartbeat.set_control,
        )
        log.info("batch_done outcome=%s", outcome)
    return outcome
