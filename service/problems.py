"""Every error leaves as `application/problem+json` (RFC 9457), Flask's own included.

Redis errors (a lost connection, a timeout, a Redis refusing writes) and broker connection
errors are mapped here, once, to 503 `unavailable`, whichever route met them.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
import orjson
import redis
from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from core import errors

log = logging.getLogger("fitserve.service")

STATUS: dict[type[errors.FitserveError], int] = {
    errors.MalformedRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PreconditionFailed: 412,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.InvalidRequest: 422,
    errors.InvalidData: 422,
    errors.RateLimited: 429,
    errors.Unavailable: 503,
    errors.TimedOut: 504,
    errors.ChecksumMismatch: 460,
    errors.InsufficientStorage: 507,
}

_HTTP_CODES = {
    400: "malformed_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    field_errors: list[dict[str, Any]] | None = None,
    errors_omitted: int = 0,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build a problem document; `error` repeats `detail` for TF Serving and OIP clients."""
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": g.get("request_id"),
        "error": detail,
    }
    if field_errors:
        body["errors"] = field_errors
    if errors_omitted:
        body["errors_omitted"] = errors_omitted
    response = Response(orjson.dumps(body), status=status, mimetype="application/problem+json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def status_of(error: errors.FitserveError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def handle_fitserve_error(error: errors.FitserveError) -> Response:
    status = status_of(error)
    headers = dict(error.headers)
    if hasattr(error, "retry_after"):
        headers["Retry-After"] = str(error.retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="fitserve"'
    log.info("client_error status=%s code=%s detail=%r", status, error.code, error.detail)
    return problem(
        status,
        error.code,
        error.title,
        error.detail,
        field_errors=[e.to_dict() for e in error.errors],
        errors_omitted=error.errors_omitted,
        headers=headers,
    )


def handle_store_unavailable(error: Exception) -> Response:
    """Redis (the job store and the broker) is away or timed out: 503, retry shortly."""
    log.warning("redis_unavailable request_id=%s error=%r", g.get("request_id"), error)
    return handle_fitserve_error(
        errors.Unavailable("Redis (the job store) is unavailable; retry shortly.", retry_after=2)
    )


def handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    code = _HTTP_CODES.get(status, "http_error")
    headers = {}
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(sorted(error.valid_methods))
    detail = error.description or error.name
    if isinstance(error, RequestEntityTooLarge):
        detail = _too_large_detail()
    return problem(status, code, error.name, detail, headers=headers)


def _too_large_detail() -> str:
    """Werkzeug's 413 (a body over MAX_CONTENT_LENGTH) says which limit, and how to send more."""
    limit = current_app.config["FITSERVE"].max_upload_bytes
    if request.path.startswith("/v1/uploads/"):
        return errors.too_large_chunk(request.content_length, limit)
    return errors.too_large_for_one_request(request.content_length, limit)


def handle_unexpected(error: Exception) -> Response:
    """A bug of ours: logged with its traceback, answered without internals."""
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    log.exception("unhandled_error request_id=%s", g.get("request_id"))
    return problem(500, "internal", "Internal error", "An unexpected error occurred; it is logged.")


def register(app: Flask) -> None:
    app.register_error_handler(errors.FitserveError, handle_fitserve_error)
    app.register_error_handler(redis.RedisError, handle_store_unavailable)
    app.register_error_handler(kombu.exceptions.OperationalError, handle_store_unavailable)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
