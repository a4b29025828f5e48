"""The training task: a thin shell over `core.runs.run_job` (lease, attempt, train, outcome)."""

from __future__ import annotations

import logging

from celery import Task

from core.errors import NotFound
from core.queues import TRAIN_TASK, send_training
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
