"""What a key stores, and which finished jobs it keeps: usage, pin and unpin."""

from __future__ import annotations

from flask import Blueprint, Flask, Response

from core.usage import storage_usage, view_usage
from service.auth import owner
from service.http import json_response
from service.jobs import job_view, visible_job
from service.state import data_dir, job_store, settings

bp = Blueprint("storage", __name__)


def register(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.get("/v1/usage")
def get_usage() -> Response:
    """The caller's stored bytes and counts by kind, against its quota and the jobs' TTL."""
    return json_response(view_usage(storage_usage(data_dir(), owner()), owner(), settings()))


@bp.post("/v1/jobs/<job_id>:pin")
def pin_job(job_id: str) -> Response:
    """Keep the job past FITSERVE_JOB_TTL_SECONDS until unpinned (or deleted)."""
    return _set_pinned(job_id, pinned=True)


@bp.post("/v1/jobs/<job_id>:unpin")
def unpin_job(job_id: str) -> Response:
    """Let the job expire again, FITSERVE_JOB_TTL_SECONDS after it finished."""
    return _set_pinned(job_id, pinned=False)


def _set_pinned(job_id: str, *, pinned: bool) -> Response:
    visible_job(job_id)
    job_store().update(job_id, pinned=pinned)
    return json_response(job_view(job_store().get(job_id)))
