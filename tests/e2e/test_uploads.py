"""Resumable uploads through nginx to gunicorn, as compose runs them: a tuspy upload cut
halfway, resumed from the server's offset, made a dataset and trained on; and nginx passing a
PATCH on to the API as it arrives, not after buffering it whole."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import requests

from client import Client
from tests.e2e.test_proxy import address
from tests.support.processes import wait_for
from tests.support.stack import Stack, blobs, tiny_request

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = 16 << 10


class Interrupted(Exception):
    """Stands for a client killed partway through an upload."""


def test_a_cut_tuspy_upload_resumes_becomes_a_dataset_and_trains(stack: Stack, tmp_path):
    path = tmp_path / "blobs.npz"
    np.savez(path, **blobs())
    size = path.stat().st_size
    client = Client(
        stack.api, resumable_threshold=0, chunk_bytes=CHUNK, upload_store=tmp_path / "urls.json"
    )

    def cut_halfway(done: int, total: int) -> None:
        if done >= total // 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        client.upload_file(path, progress=cut_halfway)
    offsets: list[int] = []
    manifest = client.upload_file(path, progress=lambda done, total: offsets.append(done))
    # Resumed where the server's offset stood, not from the start.
    assert size // 2 <= offsets[0] < size
    assert offsets[-1] == size
    assert manifest["rows"] == 2000
    assert manifest["source"]["bytes"] == size
    job = stack.submit(tiny_request(manifest["id"], epochs=1))
    assert stack.wait_finished(job["id"])["status"] == "succeeded"


def test_nginx_streams_a_patch_to_the_api_as_it_arrives(stack: Stack):
    length = 4 << 20
    created = requests.post(
        stack.url("/v1/uploads"), headers={**TUS, "Upload-Length": str(length)}, timeout=30
    )
    assert created.status_code == 201, created.text
    upload = stack.url(created.headers["Location"])
    path = created.headers["Location"]
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {length}\r\n\r\n"
    )
    sock = socket.create_connection(address(stack.api), timeout=30)
    try:
        sock.sendall(head.encode() + b"a" * (length // 2))

        def offset() -> int:
            answer = requests.head(upload, headers=TUS, timeout=30)
            assert answer.status_code == 200, answer.status_code
            return int(answer.headers["Upload-Offset"])

        # Half the body is sent and the request is still open: with the body buffered by the
        # proxy, the API would have seen none of it yet.
        wait_for(lambda: offset() >= 1 << 20, 20, "the API writing the first MiB of the PATCH")
        sock.sendall(b"b" * (length // 2))
        reply = sock.recv(4096).decode("latin-1")
    finally:
        sock.close()
    assert reply.startswith("HTTP/1.1 204"), reply
    assert f"Upload-Offset: {length}" in reply
    assert requests.delete(upload, headers=TUS, timeout=30).status_code == 204


def test_a_chunk_over_the_cap_is_refused_by_the_proxy(stack: Stack):
    created = requests.post(
        stack.url("/v1/uploads"), headers={**TUS, "Upload-Length": "10"}, timeout=30
    )
    upload = stack.url(created.headers["Location"])
    # Declared over FITSERVE_MAX_UPLOAD_BYTES: refused from the headers, no byte sent.
    sock = socket.create_connection(address(stack.api), timeout=30)
    try:
        sock.sendall(
            (
                f"PATCH {created.headers['Location']} HTTP/1.1\r\nHost: x\r\n"
                "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                "Content-Type: application/offset+octet-stream\r\n"
                f"Content-Length: {(1 << 30) + 1}\r\n\r\n"
            ).encode()
        )
        deadline = time.monotonic() + 30
        reply = b""
        while not reply.rstrip().endswith(b"}") and time.monotonic() < deadline:
            reply += sock.recv(4096)
    finally:
        sock.close()
    text = reply.decode("latin-1")
    assert text.startswith("HTTP/1.1 413"), text
    assert "Tus-Resumable: 1.0.0" in text
    assert "A PATCH chunk may have at most 1073741824 bytes (FITSERVE_MAX_UPLOAD_BYTES)" in text
    assert requests.head(upload, headers=TUS, timeout=30).headers["Upload-Offset"] == "0"
