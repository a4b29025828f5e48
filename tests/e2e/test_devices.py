"""Jobs by device: a 2-GPU job routed to the 2-GPU worker, refusals a CPU worker gives.

The 2-GPU worker runs the `worker-2gpu` command line of docker-compose.yml on a CPU split into
two logical devices (FITSERVE_CPU_REPLICAS=2), so the job trains under MirroredStrategy here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import requests

from tests.support.processes import stop_tree
from tests.support.stack import Stack, tiny_request

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def two_gpu_worker(stack: Stack, name: str) -> Iterator[None]:
    """The compose 2-GPU worker on two logical CPUs, until the block ends."""
    try:
        stack.start_worker(name, "worker-2gpu", {"FITSERVE_CPU_REPLICAS": "2"})
        yield
    finally:
        stop_tree(stack.workers.pop(name), timeout=30)


def test_a_two_gpu_job_waits_for_and_trains_on_the_two_gpu_worker(stack: Stack, blobs_dataset):
    job = stack.submit(tiny_request(blobs_dataset, epochs=2, resources={"gpus": 2}))
    assert stack.job(job["id"])["status"] == "queued"

    with two_gpu_worker(stack, "gpu2"):
        assert stack.worker_record("gpu2")["queues"] == ["train.gpu2"]
        done = stack.wait_finished(job["id"])

    assert done["status"] == "succeeded", done
    assert done["final"]["version"] == 2
    device = done["device"]
    assert device["strategy"] == "MirroredStrategy"
    assert device["num_replicas_in_sync"] == 2
    assert [name.rsplit(":", 2)[-2:] for name in device["replica_devices"]] == [
        ["CPU", "0"],
        ["CPU", "1"],
    ]
    assert "gpu2@" in str(done["worker"])


def test_mixed_precision_on_a_cpu_worker_fails_with_a_clear_message(stack: Stack, blobs_dataset):
    request = tiny_request(blobs_dataset, epochs=1, resources={"mixed_precision": True})
    done = stack.wait_finished(stack.submit(request)["id"])

    assert done["status"] == "failed"
    assert "mixed_precision=true but this worker has no GPU" in done["error"]["message"]


def test_more_gpus_than_allowed_is_422(stack: Stack, blobs_dataset):
    request = tiny_request(blobs_dataset, epochs=1, resources={"gpus": 9})
    response = requests.post(stack.url("/v1/jobs"), json=request, timeout=60)

    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert error["path"] == "/resources/gpus"
    assert error["received"] == 9
