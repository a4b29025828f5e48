"""The per-app objects routes use: settings, the data folder, Redis, the Celery producer."""

from __future__ import annotations

from flask import current_app

from core.settings import Settings
from core.storage import DataDir


def settings() -> Settings:
    return current_app.config["FITSERVE"]


def data_dir() -> DataDir:
    return current_app.extensions["fitserve.data"]


def redis_client():
    return current_app.extensions["fitserve.redis"]
