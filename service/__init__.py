"""The HTTP API: Flask routes over `core`. It validates, records and enqueues; it never trains."""

from __future__ import annotations

import logging

import redis
from flask import Flask

from core.keys import parse_api_keys
from core.settings import Settings
from core.storage import DataDir


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app. Settings come from `FITSERVE_*` unless given (tests pass their own)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["FITSERVE"] = settings
    # Uploads stream to disk; the hard ceiling is the upload limit plus multipart overhead.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + (1 << 20)
    app.json.sort_keys = False

    data = DataDir(settings.data_dir)
    data.ensure()
    app.extensions["fitserve.data"] = data
    app.extensions["fitserve.keys"] = parse_api_keys(settings.api_keys)
    app.extensions["fitserve.redis"] = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
    )
    logging.getLogger("fitserve").setLevel(settings.log_level)

    from service import (
        auth,
        dashboard,
        datasets,
        events,
        health,
        http,
        jobs,
        metrics,
        oip,
        openapi,
        problems,
        proxies,
        servables,
        tfserving,
        validate,
    )

    proxies.install(app)
    http.install(app)
    # Before auth: a refused request is timed and counted too.
    metrics.install(app)
    # Authentication counts each request against its key's limits (service/limits.py).
    auth.install(app)
    problems.register(app)
    app.register_blueprint(health.bp)
    datasets.install(app)
    app.register_blueprint(validate.bp)
    app.register_blueprint(jobs.bp)
    servables.install(app)
    tfserving.register(app)
    oip.register(app)
    app.register_blueprint(dashboard.bp)
    openapi.install(app)
    events.install(app)
    return app
