"""Training jobs over HTTP: submit, list, inspect, follow, cancel, delete. Never trains."""

from __future__ import annotations

import logging
import time
from collections import deque

import orjson
import redis
from flask import Blueprint, Flask, g, request

from core import grammar
from core.devices import queue_workers, waiting_message
from core.errors import FieldError, InvalidRequest, NotFound
from core.idempotency import fingerprint
from core.jobs import (
    STATUSES,
    TERMINAL,
    describe_record,
    parse_time,
    send_training,
)
from core.queues import train_queue
from core.storage import check_id
from service.auth import can_see, owner
from service.datasets import visible_manifest
from service.http import idempotency_key, json_body, json_response, page_args, query_int
from service.limits import check_job_quota
from service.state import data_dir, idempotency_keys, job_store, producer, redis_client, settings

bp = Blueprint("jobs", __name__)
log = logging.getLogger("fitserve.service")

MAX_LOG_LINES = 10_000
LOG_FILE = "train.log"


def register(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.post("/v1/jobs")
def submit_job():
    """Validate against the dataset manifests, record, enqueue: 202 with the queued job."""
    body = json_body()
    request_sha256 = fingerprint(body)
    store = job_store()
    claim = idempotency_keys("jobs").claim(owner(), idempotency_key(), request_sha256, store.exists)
    with claim as held:
        if held.earlier is not None:
            return _replay(store.get(held.earlier))
        check_job_quota(owner())
        normalized = grammar.parse_job_request(
            body, settings=settings(), manifest_of=visible_manifest
        )
        job = store.create(
            normalized, owner=owner(), request_id=g.get("request_id"), request_sha256=request_sha256
        )
        try:
            held.bind(job["id"])
            send_training(producer(), job)
        except BaseException:
            store.discard(job)
            raise
    log.info("job_submitted job=%s request_id=%s", job["id"], g.get("request_id"))
    return json_response(view_job(job), 202, {"Location": f"/v1/jobs/{job['id']}"})


def _replay(job: dict):
    """200 with the job an earlier submit with the same key and body made (as datasets answer)."""
    return json_response(
        view_job(job),
        200,
        {"Location": f"/v1/jobs/{job['id']}", "Idempotent-Replayed": "true"},
    )


@bp.get("/v1/jobs")
def list_jobs():
    """The caller's jobs (everyone's for admins), newest first, `?status=` to filter."""
    limit, cursor = page_args()
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(
            "Bad query parameter status.",
            errors=[
                FieldError("/status", "unknown status", f"one of {', '.join(STATUSES)}", status)
            ],
        )
    principal = g.get("principal")
    scope = None if principal is None or principal.admin else principal.name
    items, next_cursor = job_store().list(owner=scope, status=status, limit=limit, cursor=cursor)
    return json_response({"items": [view_job(job) for job in items], "next_cursor": next_cursor})


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str):
    """The job; a queued one also says whether any live worker consumes its queue."""
    try:
        job = visible_job(job_id)
    except redis.RedisError:
        job = _finished_on_volume(job_id)
        if job is None:
            raise
    view = view_job(job)
    if job["status"] == "queued":
        view["queue"] = _queue_state(job.get("gpus") or 1)
    return json_response(view)


def _queue_state(gpus: int) -> dict:
    queue = train_queue(gpus)
    workers = queue_workers(redis_client(), queue)
    state = {"name": queue, "workers": len(workers)}
    message = None if workers else waiting_message(redis_client(), gpus)
    if message:
        state["message"] = message
    return state


@bp.get("/v1/jobs/<job_id>/metrics")
def get_metrics(job_id: str):
    """`{"epochs": [1, 2, ...], "history": {metric: [value per epoch]}}`."""
    visible_job(job_id)
    entries = job_store().history(job_id)
    names = sorted({name for entry in entries for name in entry["metrics"]})
    history = {name: [entry["metrics"].get(name) for entry in entries] for name in names}
    return json_response({"epochs": [entry["epoch"] for entry in entries], "history": history})


@bp.get("/v1/jobs/<job_id>/logs")
def get_logs(job_id: str):
    """The last `?tail=` lines (default 1000) of the job's train.log as `{"lines": [...]}`."""
    visible_job(job_id)
    tail = query_int("tail", 1000, 1, MAX_LOG_LINES)
    path = data_dir().job(job_id) / LOG_FILE
    lines: deque[str] = deque(maxlen=tail)
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines.extend(line.rstrip("\n") for line in handle)
    return json_response({"lines": list(lines)})


@bp.post("/v1/jobs/<job_id>:cancel")
def cancel_job(job_id: str):
    """202 with the job `cancelling` (running) or `cancelled` (it had not started)."""
    visible_job(job_id)
    job = job_store().request_cancel(job_id)
    log.info("job_cancel job=%s status=%s request_id=%s", job_id, job["status"], g.request_id)
    return json_response(view_job(job), 202)


@bp.delete("/v1/jobs/<job_id>")
def delete_job(job_id: str):
    """Remove a finished job, its records and files (409 while it is live)."""
    visible_job(job_id)
    job_store().delete(job_id)
    return "", 204


def visible_job(job_id: str) -> dict:
    """The record of a job this request may see; someone else's is as unknown as none."""
    check_id(job_id, "job")
    job = job_store().get(job_id)
    if not can_see(job.get("owner")):
        raise NotFound(f"No job with id {job_id!r}.")
    return job


def _finished_on_volume(job_id: str) -> dict | None:
    """While Redis is away, a finished job as its manifest has it (a finished job no longer
    changes); None for a live job, whose manifest may lag its record (that read stays a 503)."""
    try:
        job = job_store().manifest(job_id)
    except (OSError, orjson.JSONDecodeError):
        return None
    if job.get("status") not in TERMINAL:
        return None
    if not can_see(job.get("owner")):
        raise NotFound(f"No job with id {job_id!r}.")
    return job | {"metrics": (job.get("history") or [{}])[-1].get("metrics")}


def view_job(job: dict) -> dict:
    """The job as the API shows it."""
    job_id = job["id"]
    progress = job.get("progress") or {}
    return {
        "id": job_id,
        "name": job.get("name"),
        "owner": job.get("owner"),
        "status": job["status"],
        "attempt": job.get("attempt", 0),
        "priority": job.get("priority"),
        "created_at": job["created_at"],
        "updated_at": job.get("updated_at"),
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
        "timings": _timings(job),
        "device": job.get("device"),
        "worker": job.get("worker"),
        "progress": {
            "epoch": progress.get("epoch", job.get("epoch") or 0),
            "epochs": progress.get("epochs"),
            "step": progress.get("step"),
            "steps": progress.get("steps"),
            "fraction": progress.get("fraction", 1.0 if job["status"] == "succeeded" else 0.0),
            "eta_seconds": progress.get("eta_seconds"),
            "metrics": progress.get("metrics"),
        },
        "metrics": {"last": job.get("metrics"), "best": job.get("best")},
        "test_metrics": job.get("test_metrics"),
        "record": describe_record(job),
        "checkpoints": job.get("checkpoints") or [],
        "final": job.get("final"),
        "error": (
            {"reason": job.get("reason"), "message": job.get("message")}
            if job["status"] == "failed"
            else None
        ),
        "links": {
            "self": f"/v1/jobs/{job_id}",
            "metrics": f"/v1/jobs/{job_id}/metrics",
            "logs": f"/v1/jobs/{job_id}/logs",
            "cancel": f"/v1/jobs/{job_id}:cancel",
            "events": f"/v1/jobs/{job_id}/events",
            "model": f"/v1/models/{job_id}",
        },
    }


def _timings(job: dict) -> dict:
    """Seconds spent waiting for a worker and training (so far, while it runs)."""
    created, started, finished = (
        _seconds(job.get(name)) for name in ("created_at", "started_at", "finished_at")
    )
    now = time.time()
    return {
        "queued_seconds": None if started is None else round(started - created, 3),
        "running_seconds": None if started is None else round((finished or now) - started, 3),
    }


def _seconds(value: str | None) -> float | None:
    return None if value is None else parse_time(value)
