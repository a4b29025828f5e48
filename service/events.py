"""A job's events as Server-Sent Events, read from its Redis stream.

Each SSE `id` is the stream entry's id, so a client that reconnects with `Last-Event-ID` resumes
exactly after the last event it saw. A stream sends a keep-alive comment when nothing happened
for `events_keepalive_seconds`, ends after the job's terminal status, and ends anyway after
`events_max_seconds` (the client reconnects). Each open stream holds one gunicorn thread, so a
process serves at most `events_max_streams` at once (keep it below the thread count, so
predictions always find a thread), and at most `events_max_streams_per_key` for one key (one
client address without keys), so one key never holds them all; past either it answers 429
with Retry-After. A client that
has seen a finished job's last event gets a 204, which tells an EventSource to stop.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator

import orjson
import redis
from flask import Blueprint, Flask, Response, current_app, request

from core.errors import FieldError, InvalidRequest, RateLimited
from core.integers import read_int
from core.jobs import TERMINAL, JobStore
from core.settings import Settings
from service.jobs import visible_job
from service.limits import client_identity
from service.state import job_store, settings

bp = Blueprint("events", __name__)
log = logging.getLogger("fitserve.service")

UINT64_MAX = 2**64 - 1
RECONNECT_MS = 2000
BATCH = 100


class StreamSlots:
    """This process's open streams, counted in all and per client, both bounded."""

    def __init__(self, limit: int, per_client: int) -> None:
        self.limit = limit
        self.per_client = per_client
        self.open: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def take(self, client: str) -> None:
        """Hold a slot for `client`; RateLimited when the process or the client has none left."""
        with self._lock:
            if self.open[client] >= self.per_client:
                raise RateLimited(
                    f"{client} already has {self.per_client} event streams open on this server "
                    "process (FITSERVE_EVENTS_MAX_STREAMS_PER_KEY); close one, retry shortly or "
                    "poll GET /v1/jobs/<id>.",
                    retry_after=5,
                )
            if self.open.total() >= self.limit:
                raise RateLimited(
                    f"This server process already streams {self.limit} event streams "
                    "(FITSERVE_EVENTS_MAX_STREAMS); retry shortly or poll GET /v1/jobs/<id>.",
                    retry_after=5,
                )
            self.open[client] += 1

    def give_back(self, client: str) -> None:
        with self._lock:
            self.open[client] -= 1
            if not self.open[client]:
                del self.open[client]


@bp.get("/v1/jobs/<job_id>/events")
def job_events(job_id: str) -> Response | tuple[str, int]:
    """`text/event-stream` of the job's events from `Last-Event-ID` (default: the first).

    204 when the job is over and the client has seen everything: an EventSource stops
    reconnecting on a 204.
    """
    job = visible_job(job_id)
    after = _last_event_id()
    if job["status"] in TERMINAL and not job_store().events_after(job_id, after, count=1):
        return "", 204
    slots: StreamSlots = current_app.extensions["fitserve.event_slots"]
    client = client_identity()
    slots.take(client)
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            slots.give_back(client)

    stream = _stream(current_app.extensions["fitserve.events_store"], job_id, after, settings())
    response = Response(stream, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    # Runs when the server closes the body: at its end or when the client went away.
    response.call_on_close(release)
    return response


def _last_event_id() -> str:
    """`Last-Event-ID` (or `?last_event_id=`): a Redis stream id, both parts 64-bit."""
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    if raw is None:
        return "0-0"
    millis, _, sequence = raw.partition("-")
    if read_int(millis, 0, UINT64_MAX) is None or read_int(sequence, 0, UINT64_MAX) is None:
        raise InvalidRequest(
            "Bad Last-Event-ID header.",
            errors=[
                FieldError(
                    "/headers/Last-Event-ID",
                    "not an event id",
                    "the id of an event this stream sent, like 1700000000000-0",
                    raw,
                )
            ],
        )
    return raw


def _stream(store: JobStore, job_id: str, after: str, config: Settings) -> Iterator[bytes]:
    """The SSE body: events after `after`, keep-alives, until terminal or the time is up."""
    deadline = time.monotonic() + config.events_max_seconds
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    while (left := deadline - time.monotonic()) > 0:
        try:
            # Read before the stream: what a finished job wrote is then surely in it.
            done = store.is_finished(job_id)
            wait = None if done else int(min(config.events_keepalive_seconds, left) * 1000) or 1
            found = store.events_after(job_id, after, count=BATCH, block_ms=wait)
        except redis.RedisError as error:
            log.warning("events_redis_error job=%s error=%r", job_id, error)
            yield _comment("redis unavailable; reconnect with Last-Event-ID")
            return
        if not found:
            if done:
                return
            yield _comment("keep-alive")
            continue
        for after, event in found:
            yield _message(after, event)
            if event["kind"] == "status" and event.get("status") in TERMINAL:
                return


def _message(event_id: str, event: dict) -> bytes:
    return f"id: {event_id}\nevent: {event['kind']}\n".encode() + (
        b"data: " + orjson.dumps(event) + b"\n\n"
    )


def _comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def register(app: Flask) -> None:
    """The routes, this process's stream slots, and a store whose client's read timeout
    outlasts a blocking read of one keep-alive interval."""
    config: Settings = app.config["FITSERVE"]
    slots = StreamSlots(config.events_max_streams, config.events_max_streams_per_key)
    app.extensions["fitserve.event_slots"] = slots
    client = redis.Redis.from_url(
        config.redis_url,
        socket_connect_timeout=2,
        socket_timeout=config.events_keepalive_seconds + 10,
    )
    app.extensions["fitserve.events_store"] = JobStore(
        client, app.extensions["fitserve.data"], config
    )
    app.register_blueprint(bp)
