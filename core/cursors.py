"""Page cursors: the sort key of a page's last item, opaque to clients, checked on return.

A cursor is the key's parts as JSON in URL-safe base64. Whatever comes back is decoded within
a length bound and must have the parts a list writes, each of its type; anything else is a 422
at `/cursor`.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from core.errors import FieldError, InvalidRequest, preview

MAX_CURSOR_CHARS = 512


def encode_cursor(*parts: str | float) -> str:
    """The cursor of a sort key, e.g. `encode_cursor(created_at, item_id)`."""
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode().rstrip("=")


def decode_cursor(cursor: str, *types: type[str] | type[float]) -> tuple[Any, ...]:
    """The sort key `encode_cursor` wrote, one part per type (an int counts as a float)."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError(cursor)
        parts = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        raise _bad_cursor(cursor) from None
    if not isinstance(parts, list) or len(parts) != len(types):
        raise _bad_cursor(cursor)
    for part, kind in zip(parts, types, strict=True):
        numeric = isinstance(part, int | float) and not isinstance(part, bool)
        if not (isinstance(part, str) if kind is str else numeric):
            raise _bad_cursor(cursor)
    return tuple(float(p) if kind is float else p for p, kind in zip(parts, types, strict=True))


def _bad_cursor(cursor: str) -> InvalidRequest:
    return InvalidRequest(
        "Bad query parameter cursor: pass back a next_cursor this list gave out.",
        errors=[
            FieldError(
                "/cursor", "Not a cursor this list gave out.", "a next_cursor", preview(cursor, 64)
            )
        ],
    )
