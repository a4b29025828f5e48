"""Storage that cleans itself, on a stack of its own (its TTL would expire the shared stack's
jobs): finished jobs expire with their files unless pinned, and a quota refusal is a 507."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests

from core.jobs import parse_time
from tests.support.http import expect_status
from tests.support.processes import wait_for
from tests.support.stack import Stack, blobs, running_stack, tiny_request

TTL_SECONDS = 3
QUOTA_BYTES = 2 << 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = {
        "FITSERVE_JOB_TTL_SECONDS": str(TTL_SECONDS),
        "FITSERVE_STORAGE_QUOTA_BYTES": str(QUOTA_BYTES),
    }
    with running_stack(tmp_path_factory.mktemp("storage"), "main", settings) as running:
        yield running


def test_finished_jobs_expire_with_their_files_and_pinned_ones_stay(stack: Stack) -> None:
    dataset_id = stack.upload(**blobs(rows=400))
    expiring = stack.submit(tiny_request(dataset_id, epochs=1))["id"]
    kept = stack.submit(tiny_request(dataset_id, epochs=1))["id"]
    pinned = expect_status(requests.post(stack.url(f"/v1/jobs/{kept}:pin"), timeout=30), 200)
    assert pinned.json()["retention"]["pinned"] is True

    finished = stack.wait_finished(expiring)
    assert finished["status"] == "succeeded"
    assert finished["retention"]["expires_at"] is not None
    assert (stack.data_dir / "jobs" / expiring / "checkpoints").is_dir()

    def removed() -> bool:
        response = requests.get(stack.url(f"/v1/jobs/{expiring}"), timeout=30)
        return expect_status(response, 200, 404).status_code == 404

    wait_for(removed, 60, f"job {expiring} to expire")
    assert not (stack.data_dir / "jobs" / expiring).exists()
    done = stack.wait_finished(kept)
    assert done["retention"] == {"pinned": True, "expires_at": None}
    # Past the time it would have expired (and an expiry pass, once a second), it is still there.
    time.sleep(max(0.0, parse_time(done["finished_at"]) + TTL_SECONDS + 2 - time.time()))
    assert stack.job(kept)["status"] == "succeeded"
    assert (stack.data_dir / "jobs" / kept / "checkpoints").is_dir()
    predict = requests.post(
        stack.url(f"/v1/models/{kept}:predict"), json={"instances": [[0.0] * 16]}, timeout=60
    )
    assert expect_status(predict, 200).json()["predictions"]


def test_an_upload_past_the_storage_quota_is_a_507_and_is_not_kept(stack: Stack) -> None:
    before = requests.get(stack.url("/v1/usage"), timeout=30).json()
    assert before["quota_bytes"] == QUOTA_BYTES
    room = QUOTA_BYTES - before["bytes"]
    # Compressed, the upload is small; stored, it expands past the room left.
    zeros = np.zeros((room // 4 + 1024,), "float32")
    buffer_path = stack.data_dir.parent / "zeros.npz"
    np.savez_compressed(buffer_path, x=zeros)
    with open(buffer_path, "rb") as handle:
        response = requests.post(
            stack.url("/v1/datasets"), files={"file": ("zeros.npz", handle)}, timeout=60
        )
    assert response.status_code == 507, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["code"] == "insufficient_storage"
    after = requests.get(stack.url("/v1/usage"), timeout=30).json()
    assert after["datasets"]["count"] == before["datasets"]["count"]
