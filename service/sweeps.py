"""Hyperparameter sweeps over HTTP: submit, list, inspect, cancel, delete. The driver runs on the
CPU task worker (worker.sweeps); the API only records the sweep and starts its driver chain."""

from __future__ import annotations

import contextlib
import logging

from flask import Blueprint, Flask, Response, g

from core.errors import Conflict, NotFound
from core.jobs import Job
from core.queues import send_sweep_step
from core.sweeps import Sweep, live_trial_jobs, parse_sweep, start_driver, view_sweep
from service.auth import can_see, owner, viewer
from service.http import json_body, json_response, page_args
from service.jobs import parse_request
from service.limits import check_job_quota
from service.state import job_store, producer, redis_client, settings, sweep_store

bp = Blueprint("sweeps", __name__)
log = logging.getLogger("fitserve.service")


def register(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.post("/v1/sweeps")
def submit_sweep() -> Response:
    """Check the sweep (its base, and every dimension at its extremes), record it with trial 0
    (the base) waiting in its study, start its driver: 202 with the sweep."""
    body = json_body()
    check_job_quota(job_store(), owner())
    parsed = parse_sweep(body, parse=parse_request, max_trials=settings().max_sweep_trials)
    sweep = sweep_store().create(parsed, owner=owner(), request=body)
    task_id = start_driver(redis_client(), sweep["id"])
    if task_id is not None:
        send_sweep_step(producer(), sweep["id"], task_id)
    log.info("sweep_submitted sweep=%s request_id=%s", sweep["id"], g.get("request_id"))
    return json_response(_view(sweep), 202, {"Location": f"/v1/sweeps/{sweep['id']}"})


@bp.get("/v1/sweeps")
def list_sweeps() -> Response:
    """The caller's sweeps (everyone's for admins), newest first."""
    limit, cursor = page_args()
    items, next_cursor = sweep_store().list(owner=viewer(), limit=limit, cursor=cursor)
    return json_response({"items": [_view(sweep) for sweep in items], "next_cursor": next_cursor})


@bp.get("/v1/sweeps/<sweep_id>")
def get_sweep(sweep_id: str) -> Response:
    """The sweep: status, trials (params, job, state, objective, epochs) and `best_job`."""
    return json_response(_view(visible_sweep(sweep_id)))


@bp.post("/v1/sweeps/<sweep_id>:cancel")
def cancel_sweep(sweep_id: str) -> Response:
    """202: no new trial starts, the live ones are cancelled (their checkpoints are kept)."""
    sweep = visible_sweep(sweep_id)
    if sweep["status"] not in ("running", "cancelling"):
        raise Conflict(f"Sweep {sweep_id} already {sweep['status']}; only a live one cancels.")
    sweep_store().request_cancel(sweep_id)
    # At once, not at the driver's next step: a trial starting meanwhile is cancelled by it.
    for job_id in live_trial_jobs(sweep):
        with contextlib.suppress(Conflict, NotFound):
            job_store().request_cancel(job_id)
    log.info("sweep_cancel sweep=%s request_id=%s", sweep_id, g.get("request_id"))
    return json_response(_view(sweep_store().get(sweep_id)), 202)


@bp.delete("/v1/sweeps/<sweep_id>")
def delete_sweep(sweep_id: str) -> tuple[str, int]:
    """Remove a finished sweep and its study (409 while live); its trials' jobs stay."""
    sweep_store().delete(visible_sweep(sweep_id))
    return "", 204


def visible_sweep(sweep_id: str) -> Sweep:
    """The record of a sweep this request may see; someone else's is as unknown as none."""
    sweep = sweep_store().get(sweep_id)
    if not can_see(sweep["owner"]):
        raise NotFound(f"No sweep with id {sweep_id!r}.")
    return sweep


def _view(sweep: Sweep) -> dict:
    if sweep["status"] == "running" and sweep_store().cancel_requested(sweep["id"]):
        # Asked to stop; its driver says so at its next step.
        sweep["status"] = "cancelling"

    def read_job(job_id: str) -> Job | None:
        try:
            return job_store().get(job_id)
        except NotFound:
            return None

    return dict(view_sweep(sweep, read_job))
