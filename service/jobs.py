"""Training jobs over HTTP: submit, clone, list, inspect, follow, cancel, delete. Never trains."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
import redis
from flask import Blueprint, Flask, Response, g, request

from core import grammar
from core.errors import FieldError, InvalidRequest, NotFound, escape_pointer
from core.grammar.allowlist import MAX_TAGS
from core.idempotency import fingerprint
from core.jobs import (
    STATUSES,
    TERMINAL,
    Job,
    JobView,
    QueueState,
    dataset_labels,
    provenance,
    view_job,
)
from core.patches import PatchError, get_pointer, merge_patch, set_pointer
from core.queue_position import queue_places
from core.queues import send_training, train_queue
from core.storage import check_id
from core.warmstart import source_finder
from core.workers import queue_workers, waiting_message
from service.auth import can_see, owner, viewer
from service.datasets import visible_manifest
from service.http import idempotency_key, json_body, json_response, page_args, query_int
from service.limits import check_job_quota
from service.servables import find_job
from service.state import data_dir, idempotency_keys, job_store, producer, redis_client, settings

bp = Blueprint("jobs", __name__)
log = logging.getLogger("fitserve.service")

MAX_LOG_LINES = 10_000
LOG_FILE = "train.log"


def register(app: Flask) -> None:
    app.register_blueprint(bp)


def parse_request(body: Any) -> grammar.ParsedJob:
    """A job request checked against this caller's datasets and warm-start sources: the one
    validation of submit, clone and `:validate`."""
    return grammar.parse_job(
        body,
        settings=settings(),
        manifest_of=visible_manifest,
        find_source=source_finder(find_job, data_dir()),
    )


@bp.post("/v1/jobs")
def submit_job() -> Response:
    """Validate against the dataset manifests, record, enqueue: 202 with the queued job."""
    body = json_body()
    return _submit(body, fingerprint(body))


def _submit(
    body: Any,
    request_fingerprint: str,
    *,
    cloned_from: str | None = None,
    locate: Callable[[str], str] | None = None,
) -> Response:
    """Submit the raw request `body`: 202 with the queued job, or the job an earlier request
    with the same Idempotency-Key and `request_fingerprint` made.

    `locate(path)` moves a validation error's pointer into what the client sent (a clone's
    patch); None keeps the request's own pointers.
    """
    store = job_store()
    claim = idempotency_keys("jobs").claim(
        owner(), idempotency_key(), request_fingerprint, store.exists
    )
    with claim as held:
        if held.earlier is not None:
            return _replay(store.get(held.earlier))
        check_job_quota(store, owner())
        try:
            parsed = parse_request(body)
        except InvalidRequest as error:
            if locate is not None:
                error.errors = [replace(field, path=locate(field.path)) for field in error.errors]
            raise
        job = store.create(
            parsed.spec,
            owner=owner(),
            request_id=g.get("request_id"),
            request_sha256=fingerprint(body),
            record=provenance(parsed.spec, parsed.manifests),
            labels=dataset_labels(parsed.spec, parsed.manifests),
            request=body,
            cloned_from=cloned_from,
        )
        try:
            held.bind(job["id"])
            send_training(producer(), job)
        except BaseException:
            store.discard(job)
            raise
    log.info(
        "job_submitted job=%s cloned_from=%s request_id=%s",
        job["id"],
        cloned_from,
        g.get("request_id"),
    )
    return json_response(job_view(job), 202, {"Location": f"/v1/jobs/{job['id']}"})


@bp.post("/v1/jobs/<job_id>:clone")
def clone_job(job_id: str) -> Response:
    """A new job from this job's raw request with changes: 202 with the new job.

    The body is a JSON Merge Patch (RFC 7396) over the request, sent as
    `application/merge-patch+json` or `application/json`. With `application/json`, a body
    with a top-level `patch` or `set` key (neither is a request key) is instead
    `{"patch": <merge patch>, "set": {"<JSON pointer>": value, ...}}`: the patch applies first,
    then each setter in order (setters reach into arrays, which a merge patch replaces whole).
    An empty body clones the request unchanged.
    """
    visible_job(job_id)
    changes = json_body() if request.get_data(cache=True) else {}
    patch, setters, envelope = _clone_changes(changes)
    cloned = merge_patch(job_store().raw_request(job_id), patch)
    for pointer, value in setters.items():
        try:
            cloned = set_pointer(cloned, pointer, value)
        except PatchError as error:
            raise InvalidRequest(
                f"Cannot apply the setter {pointer[:200]!r}: {error.message}",
                errors=[FieldError(_setter_path(pointer), error.message, error.expected, value)],
            ) from None

    def locate(path: str) -> str:
        return _patch_path(path, patch, setters, envelope)

    return _submit(
        cloned,
        fingerprint({"clone": job_id, "changes": changes}),
        cloned_from=job_id,
        locate=locate,
    )


def _clone_changes(body: Any) -> tuple[Any, dict[str, Any], bool]:
    """(merge patch, setters, whether the body was the `{"patch", "set"}` envelope)."""
    envelope = (
        request.mimetype == "application/json"
        and isinstance(body, dict)
        and bool({"patch", "set"} & set(body))
    )
    if not envelope:
        if not isinstance(body, dict):
            raise _bad_clone("", body, "a JSON object: a merge patch over the job's request")
        return body, {}, False
    unknown = sorted(set(body) - {"patch", "set"})
    if unknown:
        raise _bad_clone(
            f"/{escape_pointer(unknown[0])}",
            unknown[0],
            "only patch and set beside each other (or a plain merge patch with neither)",
        )
    patch, setters = body.get("patch", {}), body.get("set", {})
    if not isinstance(patch, dict):
        raise _bad_clone("/patch", patch, "a JSON object: a merge patch over the job's request")
    if not isinstance(setters, dict):
        raise _bad_clone("/set", setters, 'an object of pointers to values: {"/fit/epochs": 5}')
    return patch, setters, True


def _bad_clone(path: str, received: Any, expected: str) -> InvalidRequest:
    return InvalidRequest(
        f"The clone's changes are invalid at {path or 'the body'}: expected {expected}.",
        errors=[FieldError(path or "/", f"Expected {expected}.", expected, received)],
    )


def _setter_path(pointer: str) -> str:
    return f"/set/{escape_pointer(pointer)}"


def _patch_path(path: str, patch: Any, setters: dict[str, Any], envelope: bool) -> str:
    """An error's pointer into the cloned request, moved to the part of the body that set it:
    a setter (`/set/<its pointer>` and the rest), the patch, or left as it is (the value came
    from the original request)."""
    for pointer in reversed(list(setters)):
        if path == pointer or path.startswith(pointer.rstrip("/") + "/"):
            return _setter_path(pointer) + path[len(pointer) :]
    try:
        get_pointer(patch, path)
    except PatchError:
        return path
    return f"/patch{path}" if envelope else path


def _replay(job: Job) -> Response:
    """200 with the job an earlier submit with the same key and body made (as datasets answer)."""
    return json_response(
        job_view(job),
        200,
        {"Location": f"/v1/jobs/{job['id']}", "Idempotent-Replayed": "true"},
    )


@bp.get("/v1/jobs")
def list_jobs() -> Response:
    """The caller's jobs (everyone's for admins), newest first, `?status=` and `?tag=key:value`
    (repeatable: every tag must match) to filter; queued ones say where they stand."""
    limit, cursor = page_args()
    tags = _tag_filter(request.args.getlist("tag"))
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(
            "Bad query parameter status.",
            errors=[
                FieldError("/status", "unknown status", f"one of {', '.join(STATUSES)}", status)
            ],
        )
    items, next_cursor = job_store().list(
        owner=viewer(), status=status, limit=limit, cursor=cursor, tags=tags
    )
    views = [job_view(job) for job in items]
    states = _queue_states([job for job in items if job["status"] == "queued"])
    for view in views:
        if view["id"] in states:
            view["queue"] = states[view["id"]]
    return json_response({"items": views, "next_cursor": next_cursor})


def _tag_filter(values: list[str]) -> dict[str, str]:
    """`?tag=key:value` parameters as one mapping; 422 at `/tag` for a malformed one."""
    if len(values) > MAX_TAGS:
        raise _bad_tag(values[MAX_TAGS], f"at most {MAX_TAGS} tag filters")
    tags: dict[str, str] = {}
    for value in values:
        key, colon, wanted = value.partition(":")
        if not colon or not key:
            raise _bad_tag(value, "key:value, such as project:mnist")
        if tags.get(key, wanted) != wanted:
            raise _bad_tag(value, "one value per tag key")
        tags[key] = wanted
    return tags


def _bad_tag(value: str, expected: str) -> InvalidRequest:
    error = FieldError("/tag", f"Expected {expected}.", expected, value)
    return InvalidRequest("Bad query parameter tag.", errors=[error])


# What a queue place is worked out from: one small read per live job, no manifest.
QUEUE_FIELDS = ("id", "priority", "gpus", "created_at", "started_at", "progress")


def _queue_states(jobs: list[Job]) -> dict[str, QueueState]:
    """How the queue stands for each of these queued jobs: its queue, the live workers that
    consume it (or why none does), and the job's place in it."""
    if not jobs:
        return {}
    store = job_store()
    queued = store.records(store.job_ids("queued"), QUEUE_FIELDS)
    holding = [job_id for status in ("running", "cancelling") for job_id in store.job_ids(status)]
    running = store.records(holding, QUEUE_FIELDS)
    sizes = {job.get("gpus") or 1 for job in [*jobs, *queued]}
    queues = {train_queue(gpus) for gpus in sizes}
    counts = {queue: len(queue_workers(redis_client(), queue)) for queue in queues}
    places = queue_places(queued, running, counts, store.recent_durations(), time.time())
    states = {}
    for job in jobs:
        gpus = job.get("gpus") or 1
        queue = train_queue(gpus)
        state = QueueState(name=queue, workers=counts[queue])
        message = None if counts[queue] else waiting_message(redis_client(), gpus)
        if message:
            state["message"] = message
        # A job that left the queue between the two reads has no place: it is starting.
        state.update(places.get(job["id"], {}))
        states[job["id"]] = state
    return states


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
        view["queue"] = _queue_states([job])[job_id]
    return json_response(view)


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
