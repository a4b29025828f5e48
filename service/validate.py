"""`POST /v1/jobs:validate`: parse a job request against the datasets; enqueue nothing."""

from __future__ import annotations

from flask import Blueprint, Flask, Response

from service.http import json_body, json_response
from service.jobs import parse_request

bp = Blueprint("validate", __name__)


@bp.post("/v1/jobs:validate")
def validate_job() -> Response:
    """200 with the model summary and the cost estimate, or 422 with every error at once."""
    parsed = parse_request(json_body())
    return json_response({**parsed.summary, "cost": parsed.cost})


def register(app: Flask) -> None:
    app.register_blueprint(bp)
