"""`wait_for`: a failed assertion is retried until the deadline and then named; a server error
fails the wait at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.support.http import UnexpectedStatus, expect_status
from tests.support.processes import wait_for


class Broken(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"boom")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def broken_server() -> Iterator[str]:
    """An HTTP server on a free port that answers every GET with a 500; its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)
    server.server_close()


def test_a_500_fails_the_wait_at_once(broken_server: str):
    started = time.monotonic()
    with pytest.raises(UnexpectedStatus, match=r"answered 500.*boom"):
        wait_for(
            lambda: expect_status(requests.get(broken_server, timeout=5), 200, 503).ok,
            10,
            "an answer",
        )
    assert time.monotonic() - started < 5


def test_the_last_assertion_is_named_at_the_deadline():
    polls: list[int] = []

    def check() -> bool:
        polls.append(len(polls))
        assert polls[-1] > 1000, f"only {len(polls)} polls"
        return True

    with pytest.raises(TimeoutError, match=r"waiting for many polls; .*AssertionError: only") as e:
        wait_for(check, 0.3, "many polls", interval=0.01)
    assert isinstance(e.value.__cause__, AssertionError)
    assert str(len(polls)) in str(e.value)


def test_a_refused_connection_is_retried_until_it_listens():
    with pytest.raises(TimeoutError, match="ConnectionError"):
        wait_for(lambda: requests.get("http://127.0.0.1:9", timeout=1), 0.3, "port 9")
