"""Errors the client raises: each carries the server's problem document (RFC 9457)."""

from __future__ import annotations

from typing import Any


class FitserveError(Exception):
    """The server refused a request, or could not be reached.

    Attributes:
        status: the HTTP status (0 when no answer came back).
        code: the problem's stable code (`invalid_request`, `not_found`, ...).
        problem: the whole problem document as the server sent it.
        errors: one dict per field error: `path` (a JSON pointer into the request),
            `message`, and where the server says so `expected` and `received`.
    """

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code: str = str(problem.get("code") or "http_error")
        self.detail: str = str(problem.get("detail") or problem.get("title") or "")
        self.request_id: str | None = problem.get("request_id")
        errors = problem.get("errors")
        self.errors: list[dict[str, Any]] = errors if isinstance(errors, list) else []
        super().__init__(self.describe())

    def describe(self) -> str:
        """The status, the detail, then one line per field error: what a person reads."""
        head = f"{self.status} {self.code}: {self.detail}" if self.status else self.detail
        lines = [head]
        for error in self.errors:
            lines.append("  " + describe_field_error(error))
        return "\n".join(lines)


class ConnectionFailed(FitserveError):
    """No HTTP answer: the server is down, the URL is wrong, or the request timed out.

    `reason` is short (`connection refused`, `timed out`): what a person needs, not the
    transport's chain of exceptions.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        detail = f"cannot reach fitserve at {url}: {reason}"
        super().__init__(0, {"code": "connection_failed", "detail": detail})


class JobFailed(FitserveError):
    """A job that was waited on ended `failed` or `cancelled`; `.job` is its last record."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        status = job.get("status")
        error = job.get("error") or {}
        detail = f"Job {job.get('id')} ended {status}"
        if error.get("reason"):
            detail += f" ({error['reason']})"
        detail += f": {error['message']}" if error.get("message") else "."
        super().__init__(0, {"code": f"job_{status}", "detail": detail})


def describe_field_error(error: dict[str, Any]) -> str:
    """`/fit/epochs: too large (expected: an integer 1..1000; received: 5000)`.

    What the message already says (the server's messages often name both) is not repeated.
    """
    message = str(error.get("message", ""))
    extras = []
    expected = error.get("expected")
    if expected is not None and str(expected) not in message:
        extras.append(f"expected: {expected}")
    if "received" in error and "Received" not in message:
        extras.append(f"received: {error['received']!r}")
    text = f"{error.get('path') or '/'}: {message}"
    return text + (f" ({'; '.join(extras)})" if extras else "")
