"""`fitserve jobs follow` as a person sees it, against the real API, while the job's record moves
as a worker moves it (through the same JobStore calls): one line per epoch ended, no ETA before
an epoch ended, the outcome printed once, and why training stopped."""

from __future__ import annotations

import re
import subprocess
import time

import redis

from client import Client
from core.jobs import JobStore
from core.settings import Settings
from core.storage import DataDir
from tests.client.conftest import FITSERVE
from tests.client.test_jobs import small_request

EPOCHS = 50
EPOCHS_ENDED = re.compile(r"(\d+)/50 epochs")
STOP = {"reason": "early_stopping", "epoch": 5, "best_epoch": 3, "monitor": "val_loss"}


def progress(completed: int, step: int, metrics: dict | None, eta: float | None) -> dict:
    ended = step == 4
    return {
        "epoch": completed if ended else completed + 1,
        "epochs": EPOCHS,
        "completed": completed,
        "step": step,
        "steps": 4,
        "fraction": (completed + (0 if ended else step / 4)) / EPOCHS,
        "eta_seconds": eta,
        "metrics": metrics,
    }


def train_as_a_worker_would(store: JobStore, job_id: str) -> None:
    """Five epochs with a report inside each and one at each end, then an early stop."""
    store.transition(job_id, "running", attempt=1, worker="w")
    metrics = None
    for epoch in range(1, 6):
        eta = None if epoch == 1 else 0.5 * (EPOCHS - epoch + 0.5)
        store.update(job_id, manifest=False, progress=progress(epoch - 1, 2, metrics, eta))
        time.sleep(0.3)
        metrics = {"loss": 1.0 / epoch, "val_loss": [0.477, 0.384, 0.285, 0.390, 0.462][epoch - 1]}
        store.update(job_id, manifest=False, progress=progress(epoch, 4, metrics, 0.5 * 45))
        store.record_epoch(job_id, epoch, metrics)
        time.sleep(0.3)
    store.transition(job_id, "succeeded", epoch=5, stop=STOP)


def test_follow_prints_each_epoch_once_and_the_outcome_once_with_the_stop_reason(
    server_url: str, settings: Settings
) -> None:
    api = Client(server_url)
    request = small_request(api)
    request["fit"]["epochs"] = EPOCHS
    job_id = api.submit(request)["id"]
    store = JobStore(redis.Redis.from_url(settings.redis_url), DataDir(settings.data_dir), settings)
    follower = subprocess.Popen(
        [str(FITSERVE), "jobs", "follow", job_id, "--url", server_url, "--interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        train_as_a_worker_would(store, job_id)
        stdout, stderr = follower.communicate(timeout=60)
    finally:
        follower.kill()

    assert follower.returncode == 0, stderr
    outcome = stdout.splitlines()
    assert len(outcome) == 2, stdout
    assert outcome[0].startswith("succeeded")
    assert "5/50 epochs" in outcome[0]
    assert "100%" in outcome[0]
    assert "loss=0.2 val_loss=0.462" in outcome[0]
    assert outcome[1] == (
        "stopped early at epoch 5: val_loss did not improve for 2 epochs; best epoch 3"
    )
    frames = stderr.splitlines()
    assert not any(line.startswith("succeeded") for line in frames), stderr
    training = [(int(found[1]), line) for line in frames if (found := EPOCHS_ENDED.search(line))]
    ended = [completed for completed, _ in training]
    assert ended == sorted(set(ended)), stderr  # one line per epoch ended, in order
    assert ended[-1] == 5
    for completed, line in training:
        assert ("ETA" in line) == (completed > 0), line  # none before an epoch ended
