"""A batch prediction through the whole stack, its worker killed mid-way: it resumes from its
durable offset on the restarted worker, scores every row once, and matches Keras."""

from __future__ import annotations

import io
import os
import signal
import time

import numpy as np
import orjson
import pytest
import requests

from tests.support.http import expect_status
from tests.support.stack import Stack, tiny_request

pytestmark = pytest.mark.e2e

ROWS = 100_000
KILL_SECONDS = 120


def wait_batch(stack: Stack, batch_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        url = stack.url(f"/v1/batch-predictions/{batch_id}")
        batch = expect_status(requests.get(url, timeout=30), 200).json()
        if batch["status"] in ("succeeded", "failed", "cancelled"):
            return batch
        time.sleep(0.2)
    raise AssertionError(
        f"batch prediction {batch_id} still {batch}\n{stack.log_tail('worker-main')}"
    )


def kill_after_first_commit(stack: Stack, batch_id: str, pid: int) -> int:
    """SIGSTOP the scoring process as soon as its offset file shows a commit, then SIGKILL it
    (the stop first, so it is caught mid-way however fast it scores); the rows committed."""
    progress = stack.data_dir / "batches" / batch_id / "progress.json"
    deadline = time.monotonic() + KILL_SECONDS
    while not progress.exists():
        assert time.monotonic() < deadline, "the batch prediction never committed a chunk"
        time.sleep(0.001)
    os.kill(pid, signal.SIGSTOP)
    committed = orjson.loads(progress.read_bytes())["rows_done"]
    os.kill(pid, signal.SIGKILL)
    return committed


def test_a_killed_batch_prediction_resumes_from_its_offset_and_matches_keras(
    healthy_stack: Stack, blobs_dataset: str
):
    import keras

    stack = healthy_stack
    job = stack.submit(tiny_request(blobs_dataset, epochs=1))
    assert stack.wait_finished(job["id"])["status"] == "succeeded"
    x = np.random.default_rng(7).normal(size=(ROWS, 16)).astype("float32")
    dataset = stack.upload(features=x)
    child = stack.worker_record("main")["pid"]

    response = requests.post(
        stack.url("/v1/batch-predictions"),
        json={"model": job["id"], "dataset": dataset, "x": "features", "batch_size": 100},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert response.headers["Location"] == f"/v1/batch-predictions/{batch['id']}"
    committed = kill_after_first_commit(stack, batch["id"], child)
    done = wait_batch(stack, batch["id"])

    assert 0 < committed < ROWS
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2
    # Each attempt's committed rows: the second starts where the first's last commit ended.
    assert done["attempts"] == [
        {"attempt": 1, "start": 0, "stop": committed},
        {"attempt": 2, "start": committed, "stop": ROWS},
    ]
    assert done["progress"] == {"rows_done": ROWS, "rows": ROWS, "fraction": 1.0}
    result = stack.url(f"/v1/datasets/{done['result_dataset']}/download?format=npz")
    download = expect_status(requests.get(result, timeout=120), 200)
    with np.load(io.BytesIO(download.content), allow_pickle=False) as arrays:
        [output] = set(arrays.files) - {"class"}
        scores, classes = arrays[output], arrays["class"]
    model = keras.saving.load_model(stack.data_dir / "jobs" / job["id"] / "model.keras")
    expected = model.predict(x, batch_size=4096, verbose=0)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(classes, expected.argmax(axis=1))
