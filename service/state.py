"""The per-app objects routes use: settings, the data folder, Redis, the API keys."""

from __future__ import annotations

from flask import current_app

from core.jobs import JobStore
from core.keys import ApiKey
from core.settings import Settings
from core.storage import DataDir


def settings() -> Settings:
    return current_app.config["FITSERVE"]


def data_dir() -> DataDir:
    return current_app.extensions["fitserve.data"]


def redis_client():
    return current_app.extensions["fitserve.redis"]


def job_store() -> JobStore:
    store = current_app.extensions.get("fitserve.jobs")
    if store is None:
        store = JobStore(redis_client(), data_dir(), settings())
        current_app.extensions["fitserve.jobs"] = store
    return store


def api_keys() -> tuple[ApiKey, ...]:
    """The keys `FITSERVE_API_KEYS` lists; none means keys are off."""
    return current_app.extensions["fitserve.keys"]
