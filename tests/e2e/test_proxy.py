"""nginx in front of gunicorn, as compose runs them: slow clients, size caps, and the answers the
proxy and gunicorn give on their own, all application/problem+json.

The stack's clients talk to nginx (`stack.api`); `stack.upstream` is gunicorn itself, for what
it must do alone.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
import pytest
import requests

from core.settings import Settings
from scripts.proxy import local_proxy_command, write_config
from tests.support.processes import free_port, stop_tree, wait_for
from tests.support.stack import Stack, tiny_request

pytestmark = pytest.mark.e2e

HALF_SENT = 64
LONG_LINE = "/v1/jobs/" + "a" * 10_240


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def raw_exchange(url: str, request: bytes) -> http.client.HTTPResponse:
    """Send `request` byte for byte on a new connection; the parsed answer, body read."""
    sock = socket.create_connection(address(url), timeout=30)
    sock.sendall(request)
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.body = response.read()
    sock.close()
    return response


def assert_problem(response: http.client.HTTPResponse, status: int, code: str) -> None:
    assert response.status == status, (response.status, response.body[:300])
    assert response.getheader("Content-Type") == "application/problem+json"
    problem = orjson.loads(response.body)
    assert (problem["status"], problem["code"]) == (status, code), problem
    assert problem["detail"]
    assert problem["error"] == problem["detail"]
    assert problem["request_id"] == response.getheader("X-Request-ID")


REFUSALS = {
    "request line too long": (f"GET {LONG_LINE} HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    "header too long": (
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {'p' * 9_000}\r\n\r\n",
        431,
        "header_fields_too_large",
    ),
    "not HTTP": ("GET\x01 / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed_request"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
@pytest.mark.parametrize("where", ["proxy", "gunicorn"])
def test_refusals_are_problem_documents_from_the_proxy_and_from_gunicorn_alone(
    stack: Stack, where: str, case: str
):
    request, status, code = REFUSALS[case]
    url = stack.api if where == "proxy" else stack.upstream
    assert_problem(raw_exchange(url, request.encode("latin-1")), status, code)


def chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    """`total` bytes of a JSON-looking body, sent chunked (no Content-Length)."""
    yield b'{"name": "'
    for start in range(0, total, size):
        yield b"a" * min(size, total - start)


def test_a_chunked_body_over_the_json_cap_is_413(stack: Stack):
    over = Settings().max_json_bytes + (1 << 20)
    response = requests.post(
        stack.url("/v1/jobs"),
        data=chunks(over),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "payload_too_large"
    # Refused by the proxy as it arrived: gunicorn never read it.
    assert response.headers["X-Request-ID"] not in (stack.logs / "api.log").read_text()


def test_a_dataset_upload_has_the_upload_cap_not_the_json_cap(stack: Stack):
    # Over 16 MiB (the JSON cap), far under the 1 GiB upload cap.
    x = np.zeros((Settings().max_json_bytes // 4 + 100_000,), dtype="float32")
    dataset_id = stack.upload(x=x)
    assert requests.delete(stack.url(f"/v1/datasets/{dataset_id}"), timeout=30).status_code == 204


@pytest.fixture(scope="module")
def trained(stack: Stack, blobs_dataset: str) -> str:
    """A finished job whose model is already loaded in the API processes; its id."""
    job = stack.submit(tiny_request(blobs_dataset, epochs=1))
    assert stack.wait_finished(job["id"])["status"] == "succeeded"
    # Many at once, so each gunicorn worker takes some and loads the model.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: predict(stack, job["id"]), range(24)))
    return job["id"]


def predict(stack: Stack, job_id: str) -> requests.Response:
    response = requests.post(
        stack.url(f"/v1/models/{job_id}:predict"), json={"instances": [[0.0] * 16]}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response


def timed(call) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def test_half_sent_requests_leave_the_service_answering(stack: Stack, trained: str):
    held = []
    try:
        for n in range(HALF_SENT):
            sock = socket.create_connection(address(stack.api), timeout=30)
            if n % 2:
                # Headers that never end.
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:
                # A body that never arrives in full.
                sock.sendall(
                    b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 100000\r\n\r\n{"name": "'
                )
            held.append(sock)
        time.sleep(0.5)
        answers = {
            "healthz": lambda: requests.get(stack.url("/healthz"), timeout=30).raise_for_status(),
            "jobs": lambda: requests.get(stack.url("/v1/jobs"), timeout=30).raise_for_status(),
            "predict": lambda: predict(stack, trained),
        }
        seconds = {name: timed(call) for name, call in answers.items()}
        print(
            f"\nslow_clients half_sent={HALF_SENT}", *(f"{k}={v:.3f}s" for k, v in seconds.items())
        )
        assert max(seconds.values()) < 1.0, seconds
    finally:
        for sock in held:
            sock.close()


def test_an_event_stream_arrives_as_it_is_written(stack: Stack, blobs_dataset: str):
    # No 2-GPU worker runs: the job stays queued, and its stream stays open.
    waiting = stack.submit(tiny_request(blobs_dataset, epochs=1, resources={"gpus": 2}))
    try:
        started = time.monotonic()
        with requests.get(
            stack.url(f"/v1/jobs/{waiting['id']}/events"), stream=True, timeout=30
        ) as response:
            assert response.status_code == 200
            first = next(response.iter_lines(decode_unicode=True))
        assert first == "retry: 2000"
        assert time.monotonic() - started < 5
    finally:
        requests.post(stack.url(f"/v1/jobs/{waiting['id']}:cancel"), timeout=30)


@pytest.fixture
def lone_proxy(tmp_path: Path) -> Iterator[str]:
    """The proxy alone, rendered from small settings, in front of a port nobody listens on."""
    port = free_port()
    settings = Settings(max_json_bytes=1024, max_upload_bytes=2048)
    config = write_config(
        tmp_path / "proxy",
        settings,
        listen=f"127.0.0.1:{port}",
        upstream=f"127.0.0.1:{free_port()}",
    )
    process = subprocess.Popen(local_proxy_command(config), stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: socket.create_connection(address(url), timeout=1).close() or True, 10, url)
        yield url
    finally:
        stop_tree(process)


def test_the_proxy_takes_its_caps_from_settings_and_answers_for_a_missing_api(lone_proxy: str):
    gone = requests.get(lone_proxy + "/healthz", timeout=30)
    assert gone.status_code == 502
    assert gone.headers["Content-Type"] == "application/problem+json"
    assert gone.json()["code"] == "bad_gateway"
    # Checked before the API is asked: 1024 bytes for JSON, 2048 for dataset uploads; the
    # answer names the size, the cap and its setting.
    for path, size, says in (
        ("/v1/jobs", 1025, "this route takes at most 1024 bytes (FITSERVE_MAX_JSON_BYTES)"),
        ("/v1/datasets", 2049, "at most 2048 bytes in one request (FITSERVE_MAX_UPLOAD_BYTES)"),
    ):
        refused = requests.post(lone_proxy + path, data=chunks(size), timeout=30)
        assert refused.status_code == 413, path
        assert says in refused.json()["detail"]
    sized = requests.post(lone_proxy + "/v1/datasets", data=b"x" * 3000, timeout=30)
    assert sized.json()["detail"].startswith("The upload is 3000 bytes; this server takes")
    assert "resumable upload (POST /v1/uploads, tus 1.0)" in sized.json()["detail"]
    # Within the cap, the upload goes on to the API, which is not there.
    within = requests.post(lone_proxy + "/v1/datasets", data=b"x" * 2000, timeout=30)
    assert within.status_code == 502
    assert within.json()["code"] == "bad_gateway"
