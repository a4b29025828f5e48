"""Request plumbing shared by every route: request ids, the JSON body, JSON answers, and the
query parameters and headers several routes read (paging, integers, `Idempotency-Key`)."""

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
from core.integers import parse_int

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# Below every later reader's limit: orjson writes at most 254 levels (the idempotency hash
# re-serializes the body) and reads 1024, and Python's recursion stops near 1000. Real requests
# nest about 15 levels (a Functional model's JSON); a predict body nests its tensor's rank + 2.
MAX_JSON_DEPTH = 64
_CONTAINERS = frozenset((list, dict))


def assign_request_id() -> None:
    """Take a well-formed `X-Request-ID` from the client, else make one."""
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def echo_request_id(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    return response


def json_body(*, any_type: bool = False) -> Any:
    """The request body parsed as strict JSON (see `parse_json`).

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
    return parse_json(data)


def parse_json(data: bytes, what: str = "The body") -> Any:
    """The one place the API parses a client's JSON: orjson, strict (no NaN or Infinity), and
    at most MAX_JSON_DEPTH levels deep; anything else is a 400."""
    too_deep = MalformedRequest(
        f"{what} nests arrays and objects more than {MAX_JSON_DEPTH} levels deep; "
        f"at most {MAX_JSON_DEPTH} are accepted."
    )
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        if error.msg == "depth limit exceeded":  # orjson's own limit, far past ours
            raise too_deep from None
        raise MalformedRequest(f"{what} is not valid JSON: {error}.") from None
    if _deeper_than(document, MAX_JSON_DEPTH):
        raise too_deep
    return document


def _deeper_than(document: Any, limit: int) -> bool:
    """Whether the arrays and objects nest more than `limit` levels; level by level, no
    recursion, each container visited once. orjson makes exact lists and dicts, and a set of
    the child types (built in C) passes over a row of numbers without a Python step each."""
    level = [document] if type(document) in _CONTAINERS else []
    for _ in range(limit):
        deeper: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            if not _CONTAINERS.isdisjoint(set(map(type, children))):
                deeper += [child for child in children if type(child) in _CONTAINERS]
        level = deeper
    return bool(level)


def json_response(
    document: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    response = Response(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), status=status)
    response.mimetype = "application/json"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def page_args(default_limit: int = 50, max_limit: int = 500) -> tuple[int, str | None]:
    """`?limit=&cursor=`: the limit checked, the cursor as given (its list decodes it)."""
    limit = query_int("limit", default_limit, 1, max_limit)
    return limit, request.args.get("cursor") or None


def query_int(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter in `low..high`; a bad one is a 422 at `/<name>`."""
    raw = request.args.get(name)
    if raw is None:
        return default
    return parse_int(raw, at=f"/{name}", low=low, high=high, what=f"query parameter {name}")


def path_int(name: str, segment: str, high: int) -> int:
    """An integer path segment in `0..high`; a bad one is a 422 at `/path/<name>`."""
    return parse_int(segment, at=f"/path/{name}", low=0, high=high, what=f"path segment {name}")


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
                key,
            )
        ],
    )


def register(app: Flask) -> None:
    app.before_request(assign_request_id)
    app.after_request(echo_request_id)
