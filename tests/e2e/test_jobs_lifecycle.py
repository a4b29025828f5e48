"""A job through the real stack: submit, train, watch, finish; cancel; refusals; idempotency."""

from __future__ import annotations

import pytest
import requests

from core.queues import broker_lists
from core.storage import read_json, sha256_file
from tests.service.test_openapi import validator
from tests.support.stack import Stack, tiny_request

pytestmark = pytest.mark.e2e


def broker_messages(stack: Stack, queue: str = "train") -> int:
    """Messages waiting in the queue or delivered and not yet acknowledged."""
    waiting = sum(stack.redis.llen(name) for name in broker_lists(queue))
    return waiting + stack.redis.hlen("unacked")


def test_job_trains_to_succeeded_with_history_checkpoints_and_logs(stack: Stack, blobs_dataset):
    job = stack.submit(tiny_request(blobs_dataset, epochs=3), **{"X-Request-ID": "e2e-ok-1"})
    done = stack.wait_finished(job["id"])

    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1
    assert done["progress"]["epoch"] == 3
    assert done["final"]["version"] == 3
    assert done["metrics"]["last"]["val_accuracy"] > 0.5
    assert done["device"]["devices"]
    assert done["timings"]["queued_seconds"] >= 0
    document = requests.get(stack.url("/openapi.json"), timeout=30).json()
    validator(document, "Job").validate(done)
    metrics = requests.get(stack.url(done["links"]["metrics"]), timeout=30).json()
    assert metrics["epochs"] == [1, 2, 3]
    assert len(metrics["history"]["loss"]) == 3
    job_dir = stack.data_dir / "jobs" / job["id"]
    for entry in done["checkpoints"]:
        assert sha256_file(job_dir / entry["file"]) == entry["sha256"]
    assert [entry["version"] for entry in done["checkpoints"]] == [2, 3]
    manifest = read_json(job_dir / "manifest.json")
    assert manifest["status"] == "succeeded"
    assert manifest["final"]["sha256"] == sha256_file(job_dir / "model.keras")
    logs = requests.get(stack.url(done["links"]["logs"]), timeout=30).json()["lines"]
    assert any(f"job={job['id']}" in line for line in logs)
    worker_log = stack.log_tail("worker-main", 400)
    assert f"job={job['id']} request_id=e2e-ok-1" in worker_log


def test_cancel_of_a_running_job_ends_cancelled_with_a_loadable_checkpoint(
    stack: Stack, blobs_dataset
):
    job = stack.submit(tiny_request(blobs_dataset, epochs=1000))
    # Epoch 1's checkpoint is listed just before its end is reported, and the report before
    # that one (after batch 1 of 1000 epochs) rounds to a fraction of 0: wait for both.
    seen = stack.wait_job(
        job["id"],
        lambda j: j["checkpoints"] and j["progress"]["fraction"] > 0,
        "to save a checkpoint and report progress past it",
        timeout=120,
    )
    assert seen["status"] == "running"
    assert seen["progress"]["epochs"] == 1000
    assert 0 < seen["progress"]["fraction"] < 1
    assert seen["progress"]["eta_seconds"] > 0
    assert seen["worker"].startswith("main@") or seen["worker"].startswith("spare")

    cancelling = requests.post(stack.url(f"/v1/jobs/{job['id']}:cancel"), timeout=30)
    assert cancelling.status_code == 202
    assert cancelling.json()["status"] in ("cancelling", "cancelled")
    done = stack.wait_finished(job["id"], timeout=10)

    assert done["status"] == "cancelled"
    assert done["progress"]["epoch"] < 1000
    from core.checkpoints import load_checkpoint

    model = load_checkpoint(stack.data_dir / "jobs" / job["id"], done["checkpoints"][-1])
    assert model.output_shape == (None, 3)
    again = requests.post(stack.url(f"/v1/jobs/{job['id']}:cancel"), timeout=30)
    assert again.status_code == 202
    assert again.json()["status"] == "cancelled"


def test_invalid_request_is_422_and_enqueues_nothing(stack: Stack, blobs_dataset):
    before = requests.get(stack.url("/v1/jobs?limit=500"), timeout=30).json()["items"]
    # A worker killed by an earlier test may have left its message unacknowledged.
    messages = broker_messages(stack)
    body = tiny_request(blobs_dataset, epochs=0)
    body["model"]["layers"][0]["config"]["units"] = -3

    response = requests.post(stack.url("/v1/jobs"), json=body, timeout=30)

    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    paths = {error["path"] for error in response.json()["errors"]}
    assert "/fit/epochs" in paths
    assert any(path.startswith("/model/layers/0") for path in paths)
    after = requests.get(stack.url("/v1/jobs?limit=500"), timeout=30).json()["items"]
    assert len(after) == len(before)
    assert broker_messages(stack) == messages


def test_repeated_idempotency_key_gives_the_same_job(stack: Stack, blobs_dataset):
    body = tiny_request(blobs_dataset, epochs=1)
    first = stack.submit(body, **{"Idempotency-Key": "e2e-same-1"})
    again = requests.post(
        stack.url("/v1/jobs"), json=body, headers={"Idempotency-Key": "e2e-same-1"}, timeout=30
    )
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert stack.wait_finished(first["id"])["status"] == "succeeded"
    listed = requests.get(stack.url("/v1/jobs?limit=500"), timeout=30).json()["items"]
    assert [job["id"] for job in listed].count(first["id"]) == 1
