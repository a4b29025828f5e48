"""The helpers every error goes through: pointers, bounded previews, capped error lists, the
total integer parser and the cursor codec."""

from __future__ import annotations

import sys
import time
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from core.cursors import decode_cursor, encode_cursor
from core.errors import (
    MAX_ERRORS,
    PREVIEW_CHARS,
    FieldError,
    FieldErrors,
    InvalidRequest,
    escape_pointer,
    pointer,
    preview,
    show,
)
from core.integers import parse_int, read_int


def test_pointers_escape_tilde_before_slash():
    assert escape_pointer("a/b~c") == "a~1b~0c"
    assert pointer("inputs", 0, "x/y") == "/inputs/0/x~1y"


def deep(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        deep(sys.getrecursionlimit() * 20),
        {"k": deep(50_000)},
        list(range(1_000_000)),
        {str(i): i for i in range(100_000)},
        "x" * 1_000_000,
        10**5000,
    ],
    ids=["deeper-than-recursion", "deep-in-object", "long-list", "wide-object", "long-text", "big"],
)
def test_previews_are_bounded_whatever_the_value(value):
    assert len(show(value)) <= 80
    shown = preview(value)
    assert len(shown if isinstance(shown, str) else show(shown, 10_000)) <= PREVIEW_CHARS + 3


def test_small_values_are_echoed_as_they_are():
    assert preview([3, 3, 3]) == [3, 3, 3]
    assert preview({"a": [1, None]}) == {"a": [1, None]}
    assert preview(2**70) == str(2**70)
    assert show('a"b') == '"a\\"b"'


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(), st.lists)
)
def test_an_uncut_preview_is_the_value(value):
    """What fits is echoed exactly, so a client sees what it sent."""
    text = show(value, 10_000)
    if not text.endswith("...") and not isinstance(value, int | str):
        assert preview(value, 10_000) == value


def test_an_error_keeps_the_first_fifty_and_counts_the_rest():
    errors = FieldErrors()
    for index in range(MAX_ERRORS + 7):
        errors.append(FieldError(f"/{index}", "bad"))
    assert errors.full
    more = FieldErrors()
    more += [FieldError("/x", "bad")] * 3
    errors.extend(more)
    error = InvalidRequest("bad", errors=errors)
    assert [e.path for e in error.errors] == [f"/{i}" for i in range(MAX_ERRORS)]
    assert error.errors_omitted == 10
    plain = InvalidRequest("bad", errors=[FieldError("/", "bad")] * 60)
    assert (len(plain.errors), plain.errors_omitted) == (MAX_ERRORS, 10)


@pytest.mark.parametrize(
    "text", ["", "-1", "+1", " 1", "1 ", "1e3", "0x1", "\u00b2", "\u0663", "\uff11", "1" * 5000]
)
def test_only_ascii_digits_in_range_are_integers(text):
    assert read_int(text, 0, 10**9) is None
    with pytest.raises(InvalidRequest) as raised:
        parse_int(text, at="/limit", low=0, high=10**9, what="query parameter limit")
    [error] = raised.value.errors
    assert error.path == "/limit"


def test_integers_within_range_are_read():
    assert read_int("007", 1, 500) == 7
    assert read_int("500", 1, 500) == 500
    assert read_int("501", 1, 500) is None
    assert read_int("0", 1, 500) is None


def test_cursors_round_trip_and_refuse_anything_else():
    cursor = encode_cursor(1700000000.123456, "ab" * 16)
    assert decode_cursor(cursor, float, str) == (1700000000.123456, "ab" * 16)
    for bad in ("", "nope", cursor + "x" * 600, encode_cursor("a"), encode_cursor(True, "a")):
        with pytest.raises(InvalidRequest) as raised:
            decode_cursor(bad, float, str)
        assert raised.value.errors[0].path == "/cursor"


def test_a_preview_costs_its_length_not_its_value():
    """Fifty previews (a full error document) of a value both deep and wide take milliseconds:
    500 levels of 1000 items each, the first of which holds the next level."""
    wide: Any = 0
    for _ in range(500):
        wide = [wide, *range(999)]
    started = time.perf_counter()
    for _ in range(MAX_ERRORS):
        preview(wide)
    assert time.perf_counter() - started < 1
