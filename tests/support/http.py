"""HTTP answers in tests: a status a test did not expect fails it at once, even inside a wait."""

from __future__ import annotations

import requests


class UnexpectedStatus(Exception):
    """An HTTP answer with a status the test did not expect (a 500, say).

    Not an AssertionError on purpose: `wait_for` retries assertions until its deadline, but a
    server error will not go away by asking again, so it fails the wait at once.
    """


def expect_status(response: requests.Response, *statuses: int) -> requests.Response:
    """`response` if its status is one of `statuses`; else UnexpectedStatus with its body."""
    if response.status_code not in statuses:
        method = response.request.method if response.request else "?"
        raise UnexpectedStatus(
            f"{method} {response.url} answered {response.status_code}, expected one of "
            f"{statuses}: {response.text[:2000]}"
        )
    return response
