"""Request plumbing shared by every route: request ids, the JSON body, JSON answers, paging."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
from flask import Flask, Response, current_app, g, request

from core.errors import (
    FieldError,
    InvalidRequest,
    MalformedRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def assign_request_id() -> None:
    """Take a well-formed `X-Request-ID` from the client, else make one."""
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def echo_request_id(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    return response


def json_body(*, any_type: bool = False) -> Any:
    """The request body parsed as strict JSON; the one place the API parses JSON.

    orjson refuses NaN/Infinity and nesting deeper than 1024, so such bodies are a 400 here.
    `any_type`: parse it whatever the Content-Type says (the prediction routes, as TF Serving
    and Triton do).
    """
    mimetype = request.mimetype
    if not any_type and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Expected Content-Type: application/json, got {mimetype or 'none'!r}."
        )
    limit = current_app.config["FITSERVE"].max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"A JSON body may be at most {limit} bytes.")
    data = request.get_data(cache=True)
    if len(data) > limit:
        raise PayloadTooLarge(f"A JSON body may be at most {limit} bytes.")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise MalformedRequest(f"The body is not valid JSON: {error}.") from None


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None):
    response = Response(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), status=status)
    response.mimetype = "application/json"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def page_args(default_limit: int = 50, max_limit: int = 500) -> tuple[int, str | None]:
    """`?limit=&cursor=` checked: a bad limit is a 422 naming the parameter."""
    raw = request.args.get("limit", str(default_limit))
    if not raw.isdigit() or not 1 <= int(raw) <= max_limit:
        raise InvalidRequest(
            "Bad query parameter limit.",
            errors=[
                FieldError("/limit", "limit is out of range", f"an integer 1..{max_limit}", raw)
            ],
        )
    return int(raw), request.args.get("cursor") or None


def idempotency_key() -> str | None:
    """The `Idempotency-Key` header checked (jobs and datasets take one), or None when absent."""
    key = request.headers.get("Idempotency-Key")
    if key is None or _IDEMPOTENCY_KEY.fullmatch(key):
        return key
    raise InvalidRequest(
        "Bad Idempotency-Key header.",
        errors=[
            FieldError(
                "/headers/Idempotency-Key",
                "the key is empty, too long or not printable ASCII",
                "1 to 255 printable ASCII characters without spaces",
                key[:300],
            )
        ],
    )


def install(app: Flask) -> None:
    app.before_request(assign_request_id)
    app.after_request(echo_request_id)
