"""The HTTP API: Flask routes over `core`. It validates, records and enqueues; it never trains."""

from __future__ import annotations

import logging

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from core.settings import Settings


class OrderedJSON(DefaultJSONProvider):
    """Flask's own JSON (a template's `tojson`) keeps keys in the order they were written."""

    sort_keys = False


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app. Settings come from `FITSERVE_*` unless given (tests pass their own)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # Uploads stream to disk; the hard ceiling is the upload limit plus multipart overhead.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + (1 << 20)
    app.json = OrderedJSON(app)
    logging.getLogger("fitserve").setLevel(settings.log_level)

    from service import (
        auth,
        batches,
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
        state,
        storage,
        sweeps,
        tfserving,
        uploads,
        validate,
    )

    state.build(app, settings)
    # In this order: the client's address first (limits and logs read it), then request ids;
    # metrics before auth, so a refused request is timed and counted too; authentication
    # counts each request against its key's limits (service/limits.py).
    for module in (
        proxies,
        http,
        metrics,
        auth,
        problems,
        health,
        datasets,
        uploads,
        validate,
        jobs,
        sweeps,
        batches,
        storage,
        servables,
        tfserving,
        oip,
        dashboard,
        openapi,
        events,
    ):
        module.register(app)
    return app
