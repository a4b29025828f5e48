"""The training task: a thin shell over `core.runs.run_job` (lease, attempt, train, outcome)."""

from __future__ import annotations

import logging

from core.errors import NotFound
from core.jobs import send_training
from core.queues import TRAIN_TASK
from core.runs import run_job
from worker import app as worker_app

log = logging.getLogger("fitserve.worker")


@worker_app.app.task(name=TRAIN_TASK, bind=True, acks_late=True)
def train(self, job_id: str) -> str:
    """Train `job_id`, or ack without work if it is finished or another worker holds it."""
    from core.devices import describe_devices
    from core.training import train_job

    child = worker_app.child()
    try:
        request_id = child.store.get(job_id).get("request_id")
    except NotFound:
        request_id = None
    with worker_app.job_context(job_id, request_id):
        log.info("job_received delivery=%s", self.request.delivery_info.get("redelivered"))
        outcome = run_job(
            child.store,
            job_id,
            child.worker,
            train=train_job,
            send=lambda queued: send_training(worker_app.app, queued),
            devices=describe_devices,
            on_control=child.heartbeat.set_control,
        )
        log.info("job_done outcome=%s", outcome)
    return outcome
