"""Serving through faults on the session stack: a checkpoint altered on disk, a gunicorn worker
killed mid-request. Each prints `recovery fault=<name> seconds=<s>` (run with `-s`)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from tests.e2e.test_faults_storage import X, predict, report
from tests.support.processes import wait_for
from tests.support.stack import START_SECONDS, Stack, tiny_request

pytestmark = pytest.mark.e2e

CLIENTS = 4


@pytest.fixture(scope="module")
def model(stack: Stack, blobs_dataset: str) -> str:
    """A succeeded three-epoch job (versions 2 and 3 kept, and the final model)."""
    job = stack.submit(tiny_request(blobs_dataset, epochs=3, name="faults-serving"))
    done = stack.wait_finished(job["id"])
    assert done["status"] == "succeeded", done
    return job["id"]


def gunicorn_workers(stack: Stack) -> list[int]:
    return sorted(child.pid for child in psutil.Process(stack.others[0].pid).children())


def test_an_altered_checkpoint_is_503_and_other_versions_serve(stack: Stack, model: str):
    pids = gunicorn_workers(stack)
    path: Path = stack.data_dir / "jobs" / model / "checkpoints" / "epoch-0002.keras"
    original = path.read_bytes()
    altered = bytearray(original)
    altered[len(altered) // 2] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(altered))
    try:
        for _ in range(2 * len(pids)):  # whichever worker answers
            refused = predict(stack, model, "/versions/2")
            assert refused.status_code == 503, refused.text
            assert "epoch-0002.keras" in refused.json()["detail"]
            assert "sha256" in refused.json()["detail"]
            assert refused.headers["X-Model-Version"] == "2"
            fine = predict(stack, model, "/versions/3")
            assert fine.status_code == 200, fine.text
            assert predict(stack, model).headers["X-Model-Version"] == "3"
    finally:
        path.write_bytes(original)
    assert gunicorn_workers(stack) == pids
    assert predict(stack, model, "/versions/2").status_code == 200


class PredictLoop:
    """Clients predicting without pause; counts answers and failures, with their times."""

    def __init__(self, stack: Stack, job_id: str) -> None:
        self.stack = stack
        self.job_id = job_id
        self.ok: list[float] = []
        self.failed: list[tuple[float, str]] = []
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(CLIENTS)]

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                response = predict(self.stack, self.job_id)
                if response.status_code == 200:
                    self.ok.append(time.monotonic())
                else:
                    self.failed.append((time.monotonic(), f"{response.status_code}"))
            except requests.RequestException as error:
                self.failed.append((time.monotonic(), type(error).__name__))

    def __enter__(self) -> PredictLoop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(90)


def test_a_gunicorn_worker_killed_mid_request_leaves_the_others_serving(stack: Stack, model: str):
    expected = np.asarray(predict(stack, model).json()["predictions"])
    first, second = gunicorn_workers(stack)[:2]
    with PredictLoop(stack, model) as loop:
        wait_for(lambda: len(loop.ok) >= 20, 60, "predictions flowing")
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: len([t for t in loop.ok if t > killed]) >= 50, 60, "serving after kill")
    first_answer = min(t for t in loop.ok if t > killed)
    print(f"\nrecovery fault=gunicorn_worker_killed seconds={first_answer - killed:.2f}")
    print(f"requests lost to the kill: {len(loop.failed)} of {len(loop.ok) + len(loop.failed)}")
    # Only requests the killed worker held can fail, and those at the moment of the kill: the
    # proxy answers them 502.
    assert len(loop.failed) <= CLIENTS, loop.failed
    assert all(kind == "502" for _, kind in loop.failed), loop.failed

    replacement: list[int] = []

    def respawned() -> bool:
        replacement[:] = [p for p in gunicorn_workers(stack) if p not in (first, second)]
        return bool(replacement)

    wait_for(respawned, 30, "gunicorn to fork a replacement worker")
    # With the other original worker gone too, only the replacement can answer: it loads the
    # model lazily, on this first request.
    os.kill(second, signal.SIGKILL)
    answer = requests.post(
        stack.url(f"/v1/models/{model}:predict"),
        json={"instances": X.tolist()},
        timeout=START_SECONDS,
    )
    assert answer.status_code == 200, answer.text
    report("gunicorn_worker_replacement_serves_reloaded_model", killed)
    assert np.allclose(np.asarray(answer.json()["predictions"]), expected, atol=1e-6)
    wait_for(lambda: len(gunicorn_workers(stack)) == 2, 30, "gunicorn back to two workers")
