"""`POST /v1/jobs:validate`: parse a job request against the datasets; enqueue nothing."""

from __future__ import annotations

from flask import Blueprint

from core import grammar
from core.cost import estimate_cost
from core.grammar.shapes import summarize
from service.datasets import visible_manifest
from service.http import json_body, json_response
from service.state import settings

bp = Blueprint("validate", __name__)


@bp.post("/v1/jobs:validate")
def validate_job():
    """200 with the model summary and the cost estimate, or 422 with every error at once."""
    normalized = grammar.parse_job_request(
        json_body(), settings=settings(), manifest_of=visible_manifest
    )
    cost = estimate_cost(normalized, settings(), visible_manifest)
    return json_response({**summarize(normalized), "cost": cost})
