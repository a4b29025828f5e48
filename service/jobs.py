"""Training jobs over HTTP: submit, list, inspect, follow, cancel, delete. Never trains."""

from __future__ import annotations

import logging
from collections import deque

import orjson
import redis
from flask import Blueprint, Flask, Response, g, request

from core import grammar
from core.errors import FieldError, InvalidRequest, NotFound
from core.idempotency import fingerprint
from core.jobs import STATUSES, TERMINAL, Job, JobView, QueueState, provenance, view_job
from core.queues import send_training, train_queue
from core.storage import check_id
from core.workers import queue_workers, waiting_message
from service.auth import can_see, owner
from service.datasets import visible_manifest
from service.http import idempotency_key, json_body, json_response, page_args, query_int
from service.limits import check_job_quota
from service.state import idempotency_keys, job_store, producer, redis_client, settings

bp = Blueprint("jobs", __name__)
log = logging.getLogger("fitserve.service")

MAX_LOG_LINES = 10_000
LOG_FILE = "train.log"


def register(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.post("/v1/jobs")
def submit_job() -> Response:
    """Validate against the dataset manifests, record, enqueue: 202 with the queued job."""
    body = json_body()
    request_sha256 = fingerprint(body)
    store = job_store()
    claim = idempotency_keys("jobs").claim(owner(), idempotency_key(), request_sha256, store.exists)
    with claim as held:
        if held.earlier is not None:
            return _replay(store.get(held.earlier))
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
            held.bind(job["id"])
            send_training(producer(), job)
        except BaseException:
            store.discard(job)
            raise
    log.info("job_submitted job=%s request_id=%s", job["id"], g.get("request_id"))
    return json_response(job_view(job), 202, {"Location": f"/v1/jobs/{job['id']}"})


def _replay(job: Job) -> Response:
    """200 with the job an earlier submit with the same key and body made (as datasets answer)."""
    return json_response(
        job_view(job),
        200,
        {"Location": f"/v1/jobs/{job['id']}", "Idempotent-Replayed": "true"},
    )


@bp.get("/v1/jobs")
def list_jobs() -> Response:
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
    return json_response({"items": [job_view(job) for job in items], "next_cursor": next_cursor})


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """The job; a queued one also says whether any live worker consumes its queue."""
    try:
        job = visible_job(job_id)
    except redis.RedisError:
        finished = _finished_on_volume(job_id)
        if finished is None:
            raise
        job = finished
    view: JobView = job_view(job)
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
def get_metrics(job_id: str) -> Response:
    """`{"epochs": [1, 2, ...], "history": {metric: [value per epoch]}}`."""
    visible_job(job_id)
    entries = job_store().history(job_id)
    names = sorted({name for entry in entries for name in entry["metrics"]})
    history = {name: [entry["metrics"].get(name) for entry in entries] for name in names}
    return json_response({"epochs": [entry["epoch"] for entry in entries], "history": history})


@bp.get("/v1/jobs/<job_id>/logs")
def get_logs(job_id: str) -> Response:
    """The last `?tail=` lines (default 1000) of the job's train.log as `{"lines": [...]}`."""
    visible_job(job_id)
    tail = query_int("tail", 1000, 1, MAX_LOG_LINES)
    path = job_store().data.job(job_id) / LOG_FILE
    lines: deque[str] = deque(maxlen=tail)
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines.extend(line.rstrip("\n") for line in handle)
    return json_response({"lines": list(lines)})


@bp.post("/v1/jobs/<job_id>:cancel")
def cancel_job(job_id: str) -> Response:
    """202 with the job `cancelling` (running) or `cancelled` (it had not started)."""
    visible_job(job_id)
    job = job_store().request_cancel(job_id)
    log.info("job_cancel job=%s status=%s request_id=%s", job_id, job["status"], g.request_id)
    return json_response(job_view(job), 202)


@bp.delete("/v1/jobs/<job_id>")
def delete_job(job_id: str) -> tuple[str, int]:
    """Remove a finished job, its records and files (409 while it is live)."""
    visible_job(job_id)
    job_store().delete(job_id)
    return "", 204


def job_view(job: Job) -> JobView:
    """The job as the API shows it, its removal dated by FITSERVE_JOB_TTL_SECONDS."""
    return view_job(job, ttl_seconds=settings().job_ttl_seconds)


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
