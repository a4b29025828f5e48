"""Workers dying under a job: it resumes from its last checkpoint, never trains twice at once,
and stops at the attempt limit. Faults are real signals sent to real worker processes."""

from __future__ import annotations

import signal

import pytest
import requests

from tests.support.stack import Stack, tiny_request

pytestmark = pytest.mark.e2e

EPOCHS = 12


def at_epoch(epoch: int):
    """A job that has a checkpoint of at least `epoch` on disk."""
    return lambda job: any(entry["version"] >= epoch for entry in job["checkpoints"])


def slow_request(dataset_id: str, epochs: int = EPOCHS) -> dict:
    # Small batches: each epoch takes long enough to kill a worker in the middle of the job.
    return tiny_request(dataset_id, epochs=epochs, batch_size=8)


def assert_resumed_once(stack: Stack, job: dict, *, killed_after: int) -> None:
    """Succeeded on the second attempt, continuing from its checkpoint, one attempt at a time."""
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2
    metrics = requests.get(stack.url(job["links"]["metrics"]), timeout=30).json()
    assert metrics["epochs"] == list(range(1, EPOCHS + 1))
    events = stack.events(job["id"])
    starts = [e for e in events if e["kind"] == "attempt_started"]
    assert [e["attempt"] for e in starts] == [1, 2]
    resumed_from = starts[1]["resume_from"]
    assert resumed_from >= killed_after
    epochs = [(e["attempt"], e["epoch"]) for e in events if e["kind"] == "epoch"]
    # Never twice at once: every event of attempt 1 comes before any of attempt 2.
    attempts = [attempt for attempt, _ in epochs]
    assert attempts == sorted(attempts)
    second = [epoch for attempt, epoch in epochs if attempt == 2]
    assert second == list(range(resumed_from + 1, EPOCHS + 1))


def test_worker_child_killed_mid_training_resumes_from_its_checkpoint(
    healthy_stack: Stack, blobs_dataset
):
    stack = healthy_stack
    job = stack.submit(slow_request(blobs_dataset))
    seen = stack.wait_job(job["id"], at_epoch(2), "to reach epoch 2", timeout=120)
    assert seen["status"] == "running"

    stack.kill_child(stack.worker_running(job["id"]))
    done = stack.wait_finished(job["id"])

    assert_resumed_once(stack, done, killed_after=2)


def test_whole_worker_killed_mid_training_resumes_on_another(
    healthy_stack: Stack, spare_worker: str, blobs_dataset
):
    stack = healthy_stack
    job = stack.submit(slow_request(blobs_dataset))
    stack.wait_job(job["id"], at_epoch(2), "to reach epoch 2", timeout=120)
    victim = stack.worker_running(job["id"])

    stack.kill_worker(victim, signal.SIGKILL)
    done = stack.wait_finished(job["id"])

    assert_resumed_once(stack, done, killed_after=2)
    assert done["worker"].split("@")[0] != victim
    requeued = [e for e in stack.events(job["id"]) if e["kind"] == "requeued"]
    assert [e["reason"] for e in requeued] == ["worker_lost"]


def test_sigterm_saves_and_requeues_at_once(healthy_stack: Stack, spare_worker: str, blobs_dataset):
    stack = healthy_stack
    job = stack.submit(slow_request(blobs_dataset))
    stack.wait_job(job["id"], at_epoch(2), "to reach epoch 2", timeout=120)
    victim = stack.worker_running(job["id"])

    stack.kill_worker(victim, signal.SIGTERM)
    requeued = stack.wait_job(job["id"], lambda j: j["attempt"] == 2, "to be picked up again")
    done = stack.wait_finished(job["id"])

    assert requeued["worker"].split("@")[0] != victim
    assert_resumed_once(stack, done, killed_after=2)
    reasons = [e["reason"] for e in stack.events(job["id"]) if e["kind"] == "requeued"]
    assert reasons == ["shutdown"]
    assert stack.workers[victim].wait(60) == 0


def test_a_job_that_kills_its_worker_every_time_fails_worker_lost(
    healthy_stack: Stack, blobs_dataset
):
    stack = healthy_stack
    job = stack.submit(slow_request(blobs_dataset, epochs=1000))
    killed: list[int] = []
    for attempt in (1, 2):
        stack.wait_job(
            job["id"],
            lambda j, attempt=attempt: j["status"] == "running" and j["attempt"] == attempt,
            f"to run attempt {attempt}",
        )
        killed.append(stack.kill_child(stack.worker_running(job["id"], not_pids=killed)))

    done = stack.wait_finished(job["id"])

    assert done["status"] == "failed"
    assert done["error"]["reason"] == "worker_lost"
    assert "FITSERVE_MAX_ATTEMPTS=2" in done["error"]["message"]
    assert done["attempt"] == 2
