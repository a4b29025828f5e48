"""The per-app objects routes use, all built by `create_app`: settings, the data folder, Redis,
the API keys, the job store, the Celery producer and the idempotency keys."""

from __future__ import annotations

import redis
from celery import Celery
from flask import Flask, current_app

from core.idempotency import IdempotencyKeys
from core.jobs import JobStore
from core.keys import ApiKey, parse_api_keys
from core.queues import celery_config
from core.settings import Settings
from core.storage import DataDir
from core.sweeps import SweepStore


def build(app: Flask, settings: Settings) -> None:
    """Make the app's objects once; nothing is made lazily in a view."""
    data = DataDir(settings.data_dir)
    data.ensure()
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
    )
    # A producer-only Celery app: it sends by task name and imports no task code.
    producer = Celery("fitserve-api", set_as_current=False)
    producer.conf.update(celery_config(settings))
    app.config["FITSERVE"] = settings
    app.extensions.update(
        {
            "fitserve.data": data,
            "fitserve.keys": parse_api_keys(settings.api_keys),
            "fitserve.redis": client,
            "fitserve.jobs": JobStore(client, data, settings),
            "fitserve.sweeps": SweepStore(client, data, settings),
            "fitserve.celery": producer,
            "fitserve.idempotency.jobs": IdempotencyKeys(client, "jobs"),
            "fitserve.idempotency.datasets": IdempotencyKeys(client, "datasets"),
        }
    )


def settings() -> Settings:
    return current_app.config["FITSERVE"]


def data_dir() -> DataDir:
    return current_app.extensions["fitserve.data"]


def redis_client() -> redis.Redis:
    return current_app.extensions["fitserve.redis"]


def api_keys() -> tuple[ApiKey, ...]:
    """The keys `FITSERVE_API_KEYS` lists; none means keys are off."""
    return current_app.extensions["fitserve.keys"]


def sweep_store() -> SweepStore:
    return current_app.extensions["fitserve.sweeps"]


def job_store() -> JobStore:
    return current_app.extensions["fitserve.jobs"]


def producer() -> Celery:
    return current_app.extensions["fitserve.celery"]


def idempotency_keys(kind: str) -> IdempotencyKeys:
    """The `Idempotency-Key`s of `jobs` or `datasets`."""
    return current_app.extensions[f"fitserve.idempotency.{kind}"]
