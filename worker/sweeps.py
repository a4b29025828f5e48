"""The sweep driver's task: a thin shell over `core.sweeps.drive_sweep`, on queue `sweeps` of the
CPU task worker. Each step sends the next one (a second later) while the sweep is live; a lost
chain is started again by the reconciler (core.reconciler.restart_sweep_drivers)."""

from __future__ import annotations

import functools
import logging
import uuid

import redis
from celery import Task

from core.datasets import load_manifest
from core.errors import NotFound
from core.jobs import JobStore
from core.queues import SWEEP_TASK, send_sweep_step, send_training
from core.storage import DataDir
from core.sweeps import (
    DRIVER_PERIOD_SECONDS,
    DriverContext,
    DriverReplaced,
    SweepStore,
    claim_driver,
    drive_sweep,
)
from worker import cpu

log = logging.getLogger("fitserve.tasks")


@functools.cache
def _stores() -> tuple[SweepStore, JobStore]:
    """The stores of this process (one connection pool, made at the first step)."""
    settings = cpu.settings
    data = DataDir(settings.data_dir)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
    return SweepStore(client, data, settings), JobStore(client, data, settings)


@cpu.app.task(name=SWEEP_TASK, bind=True, acks_late=True)
def drive(self: Task, sweep_id: str) -> str:
    """One driver step of `sweep_id`, if it is the step the sweep's chain expects."""
    sweeps, jobs = _stores()
    next_id = uuid.uuid4().hex
    if not claim_driver(sweeps.redis, sweep_id, self.request.id, next_id):
        log.info("sweep_step sweep=%s outcome=duplicate", sweep_id)
        return "duplicate"
    context = DriverContext(
        sweeps=sweeps,
        jobs=jobs,
        manifest_of=functools.partial(load_manifest, jobs.data),
        send=lambda job: send_training(cpu.app, job),
        still_driving=lambda: claim_driver(sweeps.redis, sweep_id, next_id, next_id),
    )
    try:
        live = drive_sweep(context, sweep_id)
    except NotFound:
        log.info("sweep_step sweep=%s outcome=unknown", sweep_id)
        return "unknown"
    except DriverReplaced:
        log.warning("sweep_step sweep=%s outcome=replaced", sweep_id)
        return "replaced"
    if live:
        send_sweep_step(cpu.app, sweep_id, next_id, countdown=DRIVER_PERIOD_SECONDS)
    return "live" if live else "finished"
