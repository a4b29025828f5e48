"""`POST /v1/jobs:validate`: parse a job request against the datasets; enqueue nothing."""

from __future__ import annotations

from flask import Blueprint

from core import spec
from core.datasets import load_manifest
from core.errors import NotFound
from core.spec.shapes import summarize
from service.auth import can_see
from service.http import json_body, json_response
from service.state import data_dir, settings

bp = Blueprint("validate", __name__)


def visible_manifest(dataset_id: str) -> dict:
    """The manifest of a dataset this request may use; someone else's is as unknown as none."""
    manifest = load_manifest(data_dir(), dataset_id)
    if not can_see(manifest.get("owner")):
        raise NotFound(f"No dataset with id {dataset_id!r}.")
    return manifest


@bp.post("/v1/jobs:validate")
def validate_job():
    """200 with the model summary, or 422 with every error in the request at once."""
    normalized = spec.parse_job_request(
        json_body(), settings=settings(), manifest_of=visible_manifest
    )
    return json_response(summarize(normalized))
