"""Traversal forms and over-long ids through the real gunicorn, byte for byte as sent.

tests/service/test_traversal.py covers every route through Flask's test client; here the
request line reaches gunicorn untouched (no client normalizes `..` away), so its own limits
answer too: 414 for a request line past `limit_request_line`, 400 for a raw NUL byte.
"""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import Stack

FORMS = (
    "/v1/jobs/..",
    "/v1/jobs/../../../../etc/passwd",
    "/v1/jobs/..%2f..%2f..%2fetc%2fpasswd",
    "/v1/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd/logs",
    "/v1/datasets/%2fetc%2fpasswd",
    "/v1/datasets/%00",
    "/v1/models/..%2f..%2fjobs/download",
    "/v1/models/%2e%2e/metadata",
    "/v2/models/..%2f..%2fetc/versions/..%2f..",
    "/v1/jobs/%E2%80%A5%2fx",
)


@pytest.fixture(scope="module", autouse=True)
def log_offset(stack: Stack) -> int:
    """Where the API's log stood before this module's requests (other tests kill workers)."""
    return (stack.logs / "api.log").stat().st_size


def raw_request(stack: Stack, method: str, target: str) -> http.client.HTTPResponse:
    address = urlsplit(stack.api)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    connection.putrequest(method, target, skip_accept_encoding=True)
    connection.endheaders()
    return connection.getresponse()


@pytest.mark.parametrize("target", FORMS)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_traversal_forms_are_404_or_405_through_gunicorn(stack: Stack, method: str, target: str):
    response = raw_request(stack, method, target)
    body = response.read().decode(errors="replace")
    assert response.status in (404, 405, 422), (method, target, response.status, body[:200])
    assert response.getheader("Content-Type") == "application/problem+json"
    assert "root:x:0:0" not in body


def test_an_over_long_id_is_gunicorns_414(stack: Stack):
    response = raw_request(stack, "GET", "/v1/jobs/" + "a" * 10_240)
    assert response.status == 414
    # Within gunicorn's limit the same id reaches Flask and is an unknown job.
    assert raw_request(stack, "GET", "/v1/jobs/" + "a" * 3_000).status == 404


def test_a_raw_nul_in_the_request_line_is_refused(stack: Stack):
    address = urlsplit(stack.api)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(b"GET /v1/jobs/\x00../etc HTTP/1.1\r\nHost: x\r\n\r\n")
        status_line = sock.recv(200).split(b"\r\n", 1)[0]
    assert status_line.split()[1] in (b"400", b"404"), status_line


def test_no_request_left_a_traceback(stack: Stack, log_offset: int):
    with open(stack.logs / "api.log", "rb") as handle:
        handle.seek(log_offset)
        log = handle.read().decode(errors="replace")
    assert "request_id=" in log
    assert "unhandled_error" not in log
    assert "Traceback" not in log
