"""Domain errors, and the helpers that locate and show what a client sent.

Each error carries a stable `code`; the HTTP layer maps the class to a status. Field errors say
where (a JSON pointer), what was expected and what was received; received values are shown
bounded, however large or deep they are, and an error keeps at most MAX_ERRORS of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

# One cap for every error list (requests and uploads): the first 50, and a count of the rest.
MAX_ERRORS = 50
SHOW_CHARS = 80
# An echoed value stays under a kilobyte: 50 errors carry at most 50 KB of them.
PREVIEW_CHARS = 1000
_INT64 = range(-(2**63), 2**63)
# str() refuses integers past 4,300 digits; 14,000 bits stay below that.
_PRINTABLE_INT_BITS = 14_000
_CUT = "..."


def escape_pointer(token: str | int) -> str:
    """One JSON pointer reference token (RFC 6901 escapes `~` and `/`)."""
    return str(token).replace("~", "~0").replace("/", "~1")


def pointer(*parts: object) -> str:
    """A JSON pointer from its unescaped reference tokens: `pointer("inputs", 0)` is `/inputs/0`.

    A token past 200 characters (a megabyte-long key) is cut, so an error cannot echo it whole.
    """
    return "".join("/" + escape_pointer(str(part)[:200]) for part in parts)


class _Token(str):
    """Text already rendered (punctuation, a key), as opposed to a value still to render."""


def show(value: Any, limit: int = SHOW_CHARS) -> str:
    """A received value as compact JSON text of at most `limit` characters (`...` marks a cut).

    Iterative, and it stops at the limit: a stack of iterators yields one piece at a time, so
    neither the depth nor the size of the value costs more than the limit. Integers past 64 bits
    are shown as strings (JSON readers lose them); values that are not JSON (numpy scalars,
    objects) by their type's name.
    """
    pieces: list[str] = []
    size = 0
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack and size <= limit:
        item = next(stack[-1], _DONE)
        if item is _DONE:
            stack.pop()
            continue
        if isinstance(item, _Token):
            text = str(item)
        elif isinstance(item, dict):
            text = "{"
            stack.append(_members(item, limit))
        elif isinstance(item, list | tuple):
            text = "["
            stack.append(_items(item))
        else:
            text = _scalar(item, limit)
        pieces.append(text)
        size += len(text)
    text = "".join(pieces)
    if stack or len(text) > limit:
        return text[: limit - len(_CUT)] + _CUT
    return text


_DONE = object()


def _items(items: list[Any] | tuple[Any, ...]) -> Iterator[Any]:
    for index, member in enumerate(items):
        if index:
            yield _Token(",")
        yield member
    yield _Token("]")


def _members(mapping: dict[Any, Any], limit: int) -> Iterator[Any]:
    for index, (key, member) in enumerate(mapping.items()):
        name = key if isinstance(key, str) else _scalar(key, limit).strip('"')
        yield _Token(("," if index else "") + _quoted(name, limit) + ":")
        yield member
    yield _Token("}")


def _scalar(item: Any, limit: int) -> str:
    """The JSON text of a value that is not a list or an object."""
    if isinstance(item, str):
        return _quoted(item, limit)
    if isinstance(item, bool) or item is None or isinstance(item, float):
        return orjson.dumps(item).decode()
    if isinstance(item, int):
        if item in _INT64:
            return str(item)
        if item.bit_length() <= _PRINTABLE_INT_BITS:
            return _quoted(str(item), limit)
        return _quoted(f"an integer of {item.bit_length()} bits", limit)
    return _quoted(f"<{type(item).__name__}>", limit)


def _quoted(text: str, limit: int) -> str:
    return orjson.dumps(text[: limit + 1]).decode()


def preview(value: Any, limit: int = PREVIEW_CHARS) -> Any:
    """A received value as an error document echoes it, JSON-safe and bounded: a number, a
    boolean or null as it is, a string cut at `limit`, anything else as its `show` text."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + _CUT
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        # Past 64 bits JSON readers lose the value: its digits as text instead.
        return value if value in _INT64 else show(value, limit).strip('"')
    text = show(value, limit)
    # Whole, the text is the value's JSON (big integers already as strings): echo the value.
    return text if text.endswith(_CUT) else orjson.loads(text)


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
            out["received"] = preview(self.received)
        return out


class FieldErrors(list[FieldError]):
    """Field errors in the order they are found: the first MAX_ERRORS are kept, the others only
    counted in `omitted`, so that once `full` a checker can skip building their messages."""

    def __init__(self) -> None:
        super().__init__()
        self.omitted = 0

    @property
    def full(self) -> bool:
        return len(self) >= MAX_ERRORS

    def append(self, error: FieldError) -> None:
        if self.full:
            self.omitted += 1
        else:
            super().append(error)

    def extend(self, errors: Iterable[FieldError]) -> None:
        for error in errors:
            self.append(error)
        self.omitted += getattr(errors, "omitted", 0)

    def __iadd__(self, errors: Iterable[FieldError]) -> FieldErrors:  # type: ignore[override,misc]
        self.extend(errors)
        return self


class FitserveError(Exception):
    """Base of every error a client can be told about.

    It keeps the first MAX_ERRORS field errors; `errors_omitted` counts the others.
    """

    code = "internal"
    title = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        errors: Iterable[FieldError] = (),
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        listed = list(errors)
        self.errors = listed[:MAX_ERRORS]
        self.errors_omitted = len(listed) - len(self.errors) + getattr(errors, "omitted", 0)
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


class PreconditionFailed(FitserveError):
    """A protocol version the server does not speak (tus's Tus-Resumable, 412)."""

    code = "precondition_failed"
    title = "Precondition failed"


class ChecksumMismatch(FitserveError):
    """A chunk whose digest is not the one its Upload-Checksum names (tus's 460)."""

    code = "checksum_mismatch"
    title = "Checksum mismatch"


# The client sends files above this many bytes as resumable uploads (its default threshold).
CLIENT_RESUMABLE_THRESHOLD = 64 << 20


def format_bytes(count: int) -> str:
    """`1.3 GB`, `64 MiB`: decimal units, or binary ones when the count is a whole number of
    them (limits are set as powers of two)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def too_large_for_one_request(size: int | None, limit: int) -> str:
    """What a client reads when a plain upload is over FITSERVE_MAX_UPLOAD_BYTES: the size, the
    limit and its setting, and the way to send more."""
    received = "" if size is None else f"The upload is {format_bytes(size)}; "
    return (
        f"{received}{'this' if received else 'This'} server takes at most {format_bytes(limit)} "
        "in one request (FITSERVE_MAX_UPLOAD_BYTES). Send larger files as a resumable upload "
        "(POST /v1/uploads, tus 1.0), which the fitserve client does on its own above "
        f"{format_bytes(CLIENT_RESUMABLE_THRESHOLD)}."
    )


def too_large_chunk(size: int | None, limit: int) -> str:
    """A tus PATCH over the one-request cap: send smaller chunks."""
    received = "" if size is None else f" (this one is {format_bytes(size)})"
    return (
        f"A PATCH chunk may have at most {format_bytes(limit)}{received} "
        "(FITSERVE_MAX_UPLOAD_BYTES); send the upload in smaller chunks."
    )


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
