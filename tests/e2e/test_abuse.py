"""Abuse through the real proxy and gunicorn: traversal request lines byte for byte, and rate
limits.

tests/service/test_traversal.py covers every route through Flask's test client; here the
request line reaches nginx untouched (no client normalizes `..` away), so its own limits answer
too: 414 for a request line past its buffers, 400 for a raw NUL byte or a path above the root.
A second gunicorn, started as compose starts it (two workers) with a small
`FITSERVE_RATE_LIMIT`, shows the limit counted once across its workers.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

from scripts.stack import ROOT, compose_command
from service.limits import WINDOW_SECONDS
from tests.support.processes import free_port, stop_tree
from tests.support.stack import Stack, stack_environment, wait_ready

RATE = 30

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


def raw_request(stack: Stack, method: str, target: str) -> tuple[int, str | None, str]:
    """Send `target` as written (no client-side normalization): status, Content-Type, body."""
    address = urlsplit(stack.api)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        return response.status, response.getheader("Content-Type"), body
    finally:
        connection.close()


@pytest.mark.parametrize("target", FORMS)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_traversal_forms_are_refused_through_the_proxy(stack: Stack, method: str, target: str):
    status, content_type, body = raw_request(stack, method, target)
    # 400: nginx refuses a path that climbs above the root (it decodes %2f to see it) or a NUL.
    assert status in (400, 404, 405, 422), (method, target, status, body[:200])
    assert content_type == "application/problem+json"
    assert "root:x:0:0" not in body


def test_an_over_long_id_is_414(stack: Stack):
    assert raw_request(stack, "GET", "/v1/jobs/" + "a" * 10_240)[0] == 414
    # Within gunicorn's limit the same id reaches Flask and is an unknown job.
    assert raw_request(stack, "GET", "/v1/jobs/" + "a" * 3_000)[0] == 404


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


@pytest.fixture(scope="module")
def limited_api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gunicorn as compose runs it (two workers) with a rate limit of RATE a minute; its URL."""
    folder = tmp_path_factory.mktemp("limited")
    env = stack_environment(redis_url, folder / "data") | {"FITSERVE_RATE_LIMIT": str(RATE)}
    url = f"http://127.0.0.1:{free_port()}"
    with open(folder / "api.log", "ab") as log:
        process = subprocess.Popen(
            compose_command("api", bind=url.removeprefix("http://")),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(url, folder / "api.log")
        yield url
    finally:
        stop_tree(process)


def test_the_rate_limit_holds_across_gunicorn_workers(limited_api: str, clean_redis: str):
    left = WINDOW_SECONDS - time.time() % WINDOW_SECONDS
    if left < 10:
        time.sleep(left + 0.1)
    # Eight at a time on new connections, so both workers take requests at once.
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: requests.get(limited_api + "/v1/jobs", timeout=30), range(RATE + 10))
        )
    statuses = Counter(response.status_code for response in answers)
    assert statuses == {200: RATE, 429: 10}
    refused = next(response for response in answers if response.status_code == 429)
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert 1 <= int(refused.headers["Retry-After"]) <= WINDOW_SECONDS
    assert requests.get(limited_api + "/healthz", timeout=30).status_code == 200
