"""The work around a job on the session stack (one worker): a warm start with a frozen base and a
new head, a clone with a patch, and queued jobs' places counting down as the jobs ahead finish.

One scenario, so the jobs serve several checks: a base job trains; a long job then holds the
worker while three more are queued behind it (the warm start, a clone with `fit.epochs`
patched, a plain clone); cancelling the long job lets the three run in queue order.
"""

from __future__ import annotations

import time
from typing import Any

import keras
import numpy as np
import requests

from core.serving.catalog import resolve_version
from core.storage import DataDir, read_json
from tests.support.http import expect_status
from tests.support.stack import JOB_SECONDS, Stack, blobs, tiny_request

MERGE_PATCH = "application/merge-patch+json"


def clone(stack: Stack, job_id: str, body: bytes, content_type: str) -> dict:
    response = requests.post(
        stack.url(f"/v1/jobs/{job_id}:clone"),
        data=body,
        headers={"Content-Type": content_type},
        timeout=60,
    )
    return expect_status(response, 202).json()


def final_model(stack: Stack, job_id: str) -> Any:
    """The job's final model from the data folder, loaded only after its sha256 check."""
    data = DataDir(stack.data_dir)
    manifest = read_json(data.job(job_id) / "manifest.json")
    path = resolve_version(data, manifest, label="final").verified_path()
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def positions_until_started(stack: Stack, job_id: str) -> list[int]:
    """The job's queue positions, each change once, from now until it leaves the queue."""
    seen: list[int] = []
    deadline = time.monotonic() + JOB_SECONDS
    while time.monotonic() < deadline:
        job = stack.job(job_id)
        if job["status"] != "queued":
            return seen
        position = job["queue"]["position"]
        if not seen or seen[-1] != position:
            seen.append(position)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still queued after {JOB_SECONDS} s; positions {seen}")


def test_warm_start_clone_and_queue_positions(stack: Stack) -> None:
    dataset_id = stack.upload(**blobs(rows=600))
    base = stack.submit(tiny_request(dataset_id, epochs=2, name="warm-base"))
    assert stack.wait_finished(base["id"])["status"] == "succeeded"

    blocker = stack.submit(tiny_request(dataset_id, epochs=1000, name="blocker"))
    stack.wait_job(blocker["id"], lambda job: job["status"] == "running", "to start")
    frozen_base = {"units": 32, "activation": "relu", "trainable": False}
    head = {"name": "head", "units": 3, "activation": "softmax"}
    warm = stack.submit(
        tiny_request(
            dataset_id,
            epochs=2,
            name="warm",
            model={
                "input_shape": [16],
                "layers": [
                    {"class_name": "Dense", "config": frozen_base},
                    {"class_name": "Dense", "config": head},
                ],
            },
            warm_start={"job": "warm-base", "version": "final"},
        )
    )
    patched = clone(stack, base["id"], b'{"fit": {"epochs": 3}}', MERGE_PATCH)
    plain = clone(stack, base["id"], b"", "application/json")

    # Queued behind the running job, in the order they were sent (same priority).
    for position, job in enumerate((warm, patched, plain), start=1):
        queue = stack.job(job["id"])["queue"]
        assert (queue["position"], queue["ahead"]) == (position, position - 1)
    # One worker, a running job with an ETA and a finished job to time by: a start is expected.
    assert stack.job(plain["id"])["queue"]["expected_start"] is not None
    listed = requests.get(stack.url("/v1/jobs?status=queued"), timeout=30).json()["items"]
    assert [item["queue"]["position"] for item in listed] == [3, 2, 1]

    expect_status(requests.post(stack.url(f"/v1/jobs/{blocker['id']}:cancel"), timeout=30), 202)
    assert positions_until_started(stack, plain["id"]) == [3, 2, 1]

    for job in (warm, patched, plain):
        assert stack.wait_finished(job["id"])["status"] == "succeeded"

    # The warm start: the base loaded and stayed frozen, the new head trained from scratch.
    warmed = stack.job(warm["id"])
    assert warmed["warm_start"] == {
        "job": base["id"],
        "version": 2,
        "strict": False,
        "loaded": ["dense"],
        "skipped": ["head"],
    }
    events = [event for event in stack.events(warm["id"]) if event["kind"] == "warm_start"]
    assert [event["loaded"] for event in events] == [["dense"]]
    source, trained = final_model(stack, base["id"]), final_model(stack, warm["id"])
    for before, after in zip(
        source.get_layer("dense").get_weights(),
        trained.get_layer("dense").get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(before, after)
    assert not trained.get_layer("dense").trainable

    # The clone trained with its patched setting, and says where it came from.
    cloned = stack.job(patched["id"])
    assert cloned["cloned_from"] == base["id"]
    assert (cloned["progress"]["epoch"], cloned["progress"]["epochs"]) == (3, 3)
    metrics = requests.get(stack.url(f"/v1/jobs/{patched['id']}/metrics"), timeout=30).json()
    assert metrics["epochs"] == [1, 2, 3]
    assert stack.job(plain["id"])["progress"]["epochs"] == 2
