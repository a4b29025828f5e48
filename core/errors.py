"""Domain errors. Each carries a stable `code`; the HTTP layer maps the class to a status."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One thing wrong with a request, located by a JSON pointer into it."""

    path: str
    message: str
    expected: str | None = None
    received: Any = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "message": self.message}
        if self.expected is not None:
            out["expected"] = self.expected
        if self.received is not None:
            out["received"] = _json_safe(self.received)
        return out


_INT64 = range(-(2**63), 2**63)


def _json_safe(value: Any) -> Any:
    """Integers past 64 bits (a computed total, a huge number in a request) become text, since
    JSON encoders refuse them; everything else is left as received."""
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        return str(value)
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value


class FitserveError(Exception):
    """Base of every error a client can be told about."""

    code = "internal"
    title = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | tuple[FieldError, ...] = (),
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)
        # Response headers that belong with this error (which model version it concerns).
        self.headers: dict[str, str] = {}
        if code is not None:
            self.code = code


class MalformedRequest(FitserveError):
    code = "malformed_request"
    title = "Malformed request"


class Unauthorized(FitserveError):
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(FitserveError):
    """The key is valid but may not do this (a route for admin keys only)."""

    code = "forbidden"
    title = "Forbidden"


class NotFound(FitserveError):
    code = "not_found"
    title = "Not found"


class Conflict(FitserveError):
    code = "conflict"
    title = "Conflict"


class PayloadTooLarge(FitserveError):
    code = "payload_too_large"
    title = "Payload too large"


class UnsupportedMediaType(FitserveError):
    code = "unsupported_media_type"
    title = "Unsupported media type"


class InvalidRequest(FitserveError):
    """The request is well-formed JSON but not a valid request (422)."""

    code = "invalid_request"
    title = "Invalid request"


class InvalidData(FitserveError):
    """An uploaded file or array is unreadable, unsafe or inconsistent (422)."""

    code = "invalid_data"
    title = "Invalid data"


class TimedOut(FitserveError):
    """A computation for the request ran past its time limit (504)."""

    code = "timeout"
    title = "Timed out"


class RateLimited(FitserveError):
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class QuotaExceeded(RateLimited):
    """A key has as many live jobs as its quota allows (429, like a rate limit)."""

    code = "quota_exceeded"
    title = "Quota exceeded"


class InsufficientStorage(FitserveError):
    """A key's storage quota (stored jobs, datasets, bytes) is used up (507)."""

    code = "insufficient_storage"
    title = "Insufficient storage"


class Unavailable(FitserveError):
    """A dependency (Redis, a checkpoint on disk) cannot serve right now (503)."""

    code = "unavailable"
    title = "Service unavailable"

    def __init__(self, detail: str, *, code: str | None = None, retry_after: int = 1) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after
