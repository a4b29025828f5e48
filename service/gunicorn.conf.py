"""gunicorn settings for the API. The bind address and worker count come from the command line.

gthread workers: predictions are short and mostly in TensorFlow's C++ (which releases the GIL),
and one process per core keeps the model cache per process small. No preload: TensorFlow must
not start in the master and then be forked.

Prometheus: every worker writes its counters into one folder (prometheus-client's multiprocess
mode), emptied at each start, so /metrics sums the workers whichever one answers.

gunicorn answers a request it cannot parse (a request line or header past its limits, broken
HTTP) itself, as HTML; `write_problem` makes those answers problem+json like every other.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from gunicorn import util

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

worker_class = "gthread"
threads = 8
preload_app = False
timeout = 120
graceful_timeout = 30
keepalive = 5
accesslog = "-"
# The control socket's default path is one per user, shared by every gunicorn on the host.
control_socket_disable = True
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss request_id=%({x-request-id}o)s'


# The same codes the API and the proxy give these statuses.
_PROBLEM_CODES = {400: "malformed_request", 414: "uri_too_long", 431: "header_fields_too_large"}


def write_problem(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's `util.write_error`, answering application/problem+json instead of HTML."""
    code = _PROBLEM_CODES.get(status_int, "internal" if status_int >= 500 else "http_error")
    request_id = uuid.uuid4().hex
    detail = mesg or reason
    body = json.dumps(
        {
            "type": f"/problems/{code}",
            "title": reason,
            "status": status_int,
            "detail": detail,
            "code": code,
            "request_id": request_id,
            "error": detail,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


# The workers are forked from this process, so they inherit the replacement.
util.write_error = write_problem


def post_worker_init(worker: Worker) -> None:
    """Import TensorFlow in each worker before it takes requests, so the first predict is fast."""
    import tensorflow  # noqa: F401

    worker.log.info("tensorflow imported pid=%s", worker.pid)


def on_starting(server: Arbiter) -> None:
    """Point the workers (forked later, inheriting the environment) at an empty metrics folder."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_folder())


def metrics_folder() -> Path:
    """FITSERVE_METRICS_DIR (or PROMETHEUS_MULTIPROC_DIR) emptied of an earlier run's files, else
    a new temporary folder, removed at exit."""
    from core.settings import Settings

    configured = Settings.from_env().metrics_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not configured:
        return Path(tempfile.mkdtemp(prefix="fitserve-metrics-"))
    folder = Path(configured)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    return folder


def child_exit(server: Arbiter, worker: Worker) -> None:
    """A dead worker's live gauges (models loaded) stop counting; its counters stay summed."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Arbiter) -> None:
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if Path(folder).name.startswith("fitserve-metrics-"):
        shutil.rmtree(folder, ignore_errors=True)
