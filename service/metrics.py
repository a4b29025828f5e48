"""`/metrics` for Prometheus, and the request hooks that count every answer by route and status.

Under gunicorn, `PROMETHEUS_MULTIPROC_DIR` is set (service/gunicorn.conf.py), every worker writes
its counters there, and a scrape merges them all: whichever worker answers, the figures are the
service's. Without it (the Flask test client, `make run`), this process's own figures are shown.
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from core.metrics import RedisCollector, observe_request
from service.auth import METRICS_PATH, require_admin
from service.state import redis_client, settings

bp = Blueprint("metrics", __name__)

# Label values come from these known sets only, so no request can mint a new series: any other
# method is `other`; a path that matches no route is `unmatched`.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@bp.get(METRICS_PATH)
def scrape() -> Response:
    """The API processes' counters and histograms, then jobs, queues and workers from Redis
    (with keys on, for admin keys only: it shows every key's job counts)."""
    require_admin()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        processes = CollectorRegistry()
        multiprocess.MultiProcessCollector(processes)
    else:
        processes = REGISTRY
    shared = CollectorRegistry(auto_describe=False)
    shared.register(RedisCollector(redis_client(), settings().max_gpus_per_job))
    body = generate_latest(processes) + generate_latest(shared)
    return Response(body, content_type=CONTENT_TYPE_LATEST)


def start_timer() -> None:
    g.metrics_started = time.perf_counter()


def count_response(response: Response) -> Response:
    """Count the answer under its URL rule (never the raw path: ids would explode the labels)."""
    started = g.pop("metrics_started", None)
    if started is not None:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in METHODS else "other"
        observe_request(method, rule, response.status_code, time.perf_counter() - started)
    return response


def register(app: Flask) -> None:
    app.before_request(start_timer)
    app.after_request(count_response)
    app.register_blueprint(bp)
