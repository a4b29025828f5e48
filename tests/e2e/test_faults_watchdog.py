"""A worker whose consumer (the Celery main process) froze is ended by its own pool child, so
its container exits and Compose restarts it; the job it was training resumes on another worker.

Compose restarts only containers that exit: the healthcheck alone would leave a frozen worker
holding its job's message. Here the consumer is frozen for real (SIGSTOP) under a small stall
limit, and the test waits (bounded) for the watchdog to end it.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
import requests

from tests.support.processes import stop_tree, wait_for
from tests.support.stack import Stack, tiny_request

pytestmark = pytest.mark.e2e

STALL_SECONDS = 4
# Far more epochs than the test waits for: the job is still training when its worker is ended.
EPOCHS = 1000


@pytest.fixture
def watched(healthy_stack: Stack) -> Iterator[str]:
    """A second worker with a small consumer stall limit; its name. Whatever is left of it (its
    main process, or a pool child that outlived it after a failure) is stopped after the test."""
    name = f"watched{int(time.monotonic() * 1000) % 100000}"
    process = healthy_stack.start_worker(
        name, settings={"FITSERVE_CONSUMER_STALL_SECONDS": str(STALL_SECONDS)}
    )
    child = psutil.Process(healthy_stack.worker_record(name)["pid"])
    try:
        yield name
    finally:
        healthy_stack.workers.pop(name)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
        stop_tree(process, timeout=30)
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.is_running():
                child.kill()


def gone(pid: int) -> bool:
    """The process exited (a zombie left for its new parent to reap counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def cancel(stack: Stack, job_id: str) -> None:
    response = requests.post(stack.url(f"/v1/jobs/{job_id}:cancel"), timeout=30)
    assert response.status_code == 202, response.text


def test_a_frozen_consumer_is_ended_by_its_child_and_its_job_resumes_elsewhere(
    healthy_stack: Stack, watched: str, blobs_dataset: str
):
    stack = healthy_stack
    # One task at a time per worker and nothing prefetched: each worker takes one of the two.
    jobs = [
        stack.submit(tiny_request(blobs_dataset, epochs=EPOCHS, name=f"watchdog-{n}"))
        for n in range(2)
    ]
    ids = [job["id"] for job in jobs]
    wait_for(
        lambda: {stack.worker_record(name)["job"] for name in ("main", watched)} == set(ids),
        60,
        "each worker training one of the two jobs",
        interval=0.1,
    )
    target = stack.worker_record(watched)["job"]
    other = next(job_id for job_id in ids if job_id != target)
    stack.wait_job(target, lambda job: job["checkpoints"], "to checkpoint", timeout=60)
    consumer = stack.workers[watched]
    child_pid = stack.worker_record(watched)["pid"]
    assert stack.worker_record(watched)["consumer_age"] < STALL_SECONDS

    consumer.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    cancel(stack, other)  # main is free for the target once it is requeued

    # SIGTERM waits while the process is stopped; SIGKILL after as long again ends it.
    assert consumer.wait(4 * STALL_SECONDS + 10) == -signal.SIGKILL
    ended = time.monotonic() - frozen
    assert ended >= STALL_SECONDS
    wait_for(lambda: gone(child_pid), 15, f"pool child {child_pid} to die with it")
    log = stack.log_tail(f"worker-{watched}", lines=200)
    assert "consumer_stalled" in log
    assert "main process stopped consuming" in log
    assert "consumer_killed" in log

    resumed = stack.wait_job(
        target,
        lambda job: job["status"] == "running" and job["attempt"] == 2,
        "to resume on the main worker",
        timeout=60,
    )
    assert resumed["worker"].split("@")[0] == "main"
    requeued = [e for e in stack.events(target) if e["kind"] == "requeued"]
    assert [e["reason"] for e in requeued] == ["worker_lost"]
    starts = [e for e in stack.events(target) if e["kind"] == "attempt_started"]
    assert starts[-1]["resume_from"] >= 1
    print(f"recovery fault=consumer_frozen ended_after={ended:.1f}s")

    cancel(stack, target)
    assert stack.wait_finished(target, timeout=60)["status"] == "cancelled"
    assert stack.wait_finished(other, timeout=60)["status"] == "cancelled"
