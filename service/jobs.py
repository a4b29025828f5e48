"""Training jobs over HTTP: submit, list, inspect, follow, cancel, delete. Never trains."""

from __future__ import annotations

import hashlib
import logging
from collections import deque

import kombu.exceptions
import orjson
import redis
from celery import Celery
from flask import Blueprint, current_app, g, request

from core import grammar
from core.errors import Conflict, FieldError, InvalidRequest, NotFound, Unavailable
from core.jobs import STATUSES, TERMINAL, Job, JobView, QueueState, provenance, view_job
from core.queues import celery_config, send_training, train_queue
from core.storage import check_id
from core.workers import queue_workers, waiting_message
from service.auth import can_see, owner
from service.datasets import visible_manifest
from service.http import idempotency_key, json_body, json_response, page_args
from service.limits import check_job_quota
from service.state import job_store, redis_client, settings

bp = Blueprint("jobs", __name__)
log = logging.getLogger("fitserve.service")

MAX_LOG_LINES = 10_000
LOG_FILE = "train.log"


def producer() -> Celery:
    """A producer-only Celery app: it sends by task name and imports no task code."""
    app = current_app.extensions.get("fitserve.celery")
    if app is None:
        app = Celery("fitserve-api", set_as_current=False)
        app.conf.update(celery_config(settings()))
        current_app.extensions["fitserve.celery"] = app
    return app


@bp.errorhandler(redis.RedisError)
@bp.errorhandler(kombu.exceptions.OperationalError)
def redis_unavailable(error: Exception):
    from service.problems import handle_fitserve_error

    log.warning("redis_unavailable request_id=%s error=%r", g.get("request_id"), error)
    return handle_fitserve_error(
        Unavailable("The job store (Redis) is unavailable; retry shortly.", retry_after=2)
    )


@bp.post("/v1/jobs")
def submit_job():
    """Validate against the dataset manifests, record, enqueue: 202 with the queued job."""
    body = json_body()
    key = idempotency_key()
    store = job_store()
    request_sha256 = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    if key is not None:
        earlier = store.idempotent_job(owner(), key)
        if earlier is not None:
            return _replay(earlier, request_sha256)
    check_job_quota(store, owner())
    parsed = grammar.parse_job(body, settings=settings(), manifest_of=visible_manifest)
    job = store.create(
        parsed.spec,
        owner=owner(),
        request_id=g.get("request_id"),
        request_sha256=request_sha256,
        record=provenance(parsed.spec, parsed.manifests),
    )
    try:
        if key is not None:
            winner = store.claim_idempotency_key(owner(), key, job["id"])
            if winner is not None:
                store.discard(job)
                return _replay(store.get(winner), request_sha256)
        send_training(producer(), job)
    except BaseException:
        store.discard(job)
        raise
    log.info("job_submitted job=%s request_id=%s", job["id"], g.get("request_id"))
    return json_response(view_job(job), 202, {"Location": f"/v1/jobs/{job['id']}"})


def _replay(job: Job, request_sha256: str):
    """200 with the job an earlier submit with the same key made (as datasets answer)."""
    if job.get("request_sha256") != request_sha256:
        raise Conflict(
            f"This Idempotency-Key was used for job {job['id']} with a different request; "
            "use a new key for a new job."
        )
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
        finished = _finished_on_volume(job_id)
        if finished is None:
            raise
        job = finished
    view: JobView = view_job(job)
    if job["status"] == "queued":
        view["queue"] = _queue_state(job.get("gpus") or 1)
    return json_response(view)


def _queue_state(gpus: int) -> QueueState:
    queue = train_queue(gpus)
    workers = queue_workers(redis_client(), queue)
    state = QueueState(name=queue, workers=len(workers))
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
    raw = request.args.get("tail", "1000")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LOG_LINES:
        raise InvalidRequest(
            "Bad query parameter tail.",
            errors=[FieldError("/tail", "tail is out of range", f"1..{MAX_LOG_LINES}", raw)],
        )
    path = job_store().data.job(job_id) / LOG_FILE
    lines: deque[str] = deque(maxlen=int(raw))
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


def visible_job(job_id: str) -> Job:
    """The record of a job this request may see; someone else's is as unknown as none."""
    check_id(job_id, "job")
    job = job_store().get(job_id)
    if not can_see(job.get("owner")):
        raise NotFound(f"No job with id {job_id!r}.")
    return job


def _finished_on_volume(job_id: str) -> Job | None:
    """While Redis is away, a finished job as its manifest has it (a finished job no longer
    changes); None for a live job, whose manifest may lag its record (that read stays a 503)."""
    try:
        job, _ = job_store().stored_job(job_id)
    except (OSError, orjson.JSONDecodeError):
        return None
    if job["status"] not in TERMINAL:
        return None
    if not can_see(job["owner"]):
        raise NotFound(f"No job with id {job_id!r}.")
    return job
