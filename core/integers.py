"""The one way an integer is read from text: a query parameter, a header, a path segment, a
JSON object key.

Only ASCII digits count (`str.isdigit` and `int` also take `²`, `٣` and full-width digits), the
length is bounded before `int` runs (`int` refuses past 4,300 digits and is slow long before),
and the value must lie in a range. A failure is a FieldError at the given JSON pointer.
"""

from __future__ import annotations

import re

from core.errors import FieldError, InvalidRequest

_ASCII_DIGITS = re.compile(r"[0-9]+")


def read_int(text: str, low: int, high: int) -> int | None:
    """The integer `text` spells in ASCII digits if it lies in `low..high` (`low >= 0`), else
    None. Leading zeros are allowed within the length of `high`."""
    if len(text) > len(str(high)) or not _ASCII_DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if low <= value <= high else None


def parse_int(text: str, *, at: str, low: int, high: int, what: str) -> int:
    """`read_int`, or InvalidRequest naming `what` ("query parameter limit") at pointer `at`."""
    value = read_int(text, low, high)
    if value is None:
        expected = f"an integer from {low} to {high} in ASCII digits"
        raise InvalidRequest(
            f"Bad {what}: expected {expected}.",
            errors=[FieldError(at, f"{what} is not {expected}", expected, text)],
        )
    return value
