"""Liveness and readiness."""

from __future__ import annotations

import os
import tempfile

import redis
from flask import Blueprint, Flask, Response

from core.workers import live_workers
from service.http import json_response
from service.problems import problem
from service.state import data_dir, redis_client

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Redis answers and the data folder is writable; lists the workers seen by heartbeat."""
    checks: dict[str, str] = {}
    workers: list[dict] = []
    try:
        client = redis_client()
        client.ping()
        checks["redis"] = "ok"
        workers = live_workers(client)
    except redis.RedisError as error:
        checks["redis"] = f"unavailable: {error}"
    try:
        fd, path = tempfile.mkstemp(dir=data_dir().root, prefix=".ready.")
        os.close(fd)
        os.unlink(path)
        checks["data_dir"] = "ok"
    except OSError as error:
        checks["data_dir"] = f"not writable: {error.strerror}"
    if any(value != "ok" for value in checks.values()):
        failing = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
        return problem(503, "not_ready", "Not ready", f"Not ready: {failing}.")
    return json_response({"status": "ready", "checks": checks, "workers": workers})


def register(app: Flask) -> None:
    app.register_blueprint(bp)
