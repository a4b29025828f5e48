"""Redis and the data volume failing under a private stack: nothing is lost, reads keep working.

The faults here would disturb the session stack, so this module starts its own: a redis-server
with AOF (`appendfsync always`) in its own folder, restarted on the same port; the data folder
on a small tmpfs, so a test can fill it; a Celery worker and gunicorn (`running_stack`).

The tests run in file order over the one stack (each leaves it serving). Each prints
`recovery fault=<name> seconds=<s>` (run with `-s`): seconds from the fault to what a user sees
working again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from core.checkpoints import verify_checkpoint
from core.jobs import JobStore
from core.reconciler import reconcile
from core.runs import WorkerIdentity, run_job
from core.settings import Settings
from core.storage import DataDir, read_json
from core.training import TrainingFailed
from scripts.stack import ROOT
from tests.support.http import expect_status
from tests.support.processes import free_port, stop_tree, wait_for
from tests.support.stack import Stack, blobs, running_stack, tiny_request

pytestmark = pytest.mark.e2e

WORKER = "faults"
TMPFS_BYTES = 48 << 20
X = blobs(rows=8)["x"]


class FaultyRedis:
    """A redis-server with AOF on a fixed port and folder, so a restart keeps both."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        argv = [
            shutil.which("redis-server") or "redis-server",
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)),
            *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            *("--maxmemory-policy", "noeviction"),
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(redis.Redis.from_url(self.url).ping, 10, f"redis-server on port {self.port}")

    def kill(self) -> float:
        """SIGKILL (a crash: only what AOF fsynced survives); returns the time it happened."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        return time.monotonic()

    def stop(self) -> None:
        if self.process is not None:
            stop_tree(self.process)


@contextlib.contextmanager
def small_volume(folder: Path) -> Iterator[None]:
    """`folder` as a tmpfs of TMPFS_BYTES while the block runs; a plain folder where mounting is
    not permitted (the full-disk test then says it is skipped)."""
    folder.mkdir(parents=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(folder)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyRedis]:
    """The private stack's Redis, which the tests kill and start again."""
    running = FaultyRedis(tmp_path_factory.mktemp("faults-redis"))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory, server: FaultyRedis) -> Iterator[Stack]:
    """The module's own stack over `server`, its data folder a small tmpfs where permitted."""
    folder = tmp_path_factory.mktemp("faults")
    with (
        small_volume(folder / "data"),
        running_stack(folder, WORKER, redis_url=server.url) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def dataset(private: Stack) -> str:
    return private.upload(**blobs(rows=600))


@pytest.fixture(scope="module")
def finished(private: Stack, dataset: str) -> str:
    """A succeeded two-epoch job: its record, manifest and model exist."""
    job = private.submit(tiny_request(dataset, epochs=2, name="finished"))
    done = private.wait_finished(job["id"])
    assert done["status"] == "succeeded", done
    return job["id"]


def report(fault: str, since: float) -> float:
    seconds = round(time.monotonic() - since, 2)
    print(f"\nrecovery fault={fault} seconds={seconds}")
    return seconds


def slow_request(dataset: str, epochs: int, name: str) -> dict:
    # Batches of 4: a few hundred steps per epoch, so the job is still running when we strike.
    return tiny_request(dataset, epochs=epochs, batch_size=4, name=name)


def predict(stack: Stack, job_id: str, version: str = "") -> requests.Response:
    path = f"/v1/models/{job_id}{version}:predict"
    return requests.post(stack.url(path), json={"instances": X.tolist()}, timeout=60)


def job_folders(stack: Stack) -> set[str]:
    return {p.name for p in (stack.data_dir / "jobs").iterdir() if not p.name.startswith(".")}


def fail_open_count(metrics: str) -> float:
    """`fitserve_rate_limit_fail_open_total` in a Prometheus scrape."""
    for line in metrics.splitlines():
        if line.startswith("fitserve_rate_limit_fail_open_total "):
            return float(line.split()[1])
    return 0.0


def submit_when_back(stack: Stack, request: dict, timeout: float = 60) -> dict:
    """Submit, retrying while the API answers 503 (Redis still coming back)."""
    answer: dict = {}

    def accepted() -> bool:
        response = expect_status(
            requests.post(stack.url("/v1/jobs"), json=request, timeout=30), 202, 503
        )
        answer.update(response.json())
        return response.status_code == 202

    wait_for(accepted, timeout, "a submit accepted", interval=0.2)
    return answer


def test_redis_down_refuses_writes_with_503_and_serves_reads_from_the_volume(
    private: Stack, server: FaultyRedis, dataset: str, finished: str
):
    before = job_folders(private)
    server.kill()
    try:
        submit = requests.post(
            private.url("/v1/jobs"), json=tiny_request(dataset, epochs=1), timeout=60
        )
        cancel = requests.post(private.url(f"/v1/jobs/{finished}:cancel"), timeout=60)
        for refused in (submit, cancel):
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"].isdigit()
            assert refused.headers["Content-Type"] == "application/problem+json"
            assert "Redis" in refused.json()["detail"]

        assert requests.get(private.url("/healthz"), timeout=30).status_code == 200
        assert requests.get(private.url(f"/v1/datasets/{dataset}"), timeout=30).status_code == 200
        job = requests.get(private.url(f"/v1/jobs/{finished}"), timeout=60)
        assert job.status_code == 200, job.text
        assert job.json()["status"] == "succeeded"
        served = predict(private, finished)
        assert served.status_code == 200, served.text
        assert served.headers["X-Model-Version"] == "2"
        # The rate limiter let those through: counted from the tokens each API process had
        # leased before Redis went (service/limits.py), or, where a process had none left,
        # unchecked, and it says so.
        scrape = requests.get(private.url("/metrics"), timeout=60)
        assert scrape.status_code == 200, scrape.text
        assert "\nfitserve_redis_up 0.0\n" in scrape.text
        if fail_open_count(scrape.text):
            assert "rate_limit_fail_open" in private.log_tail("api", 400)
    finally:
        server.start()
    back = time.monotonic()

    again = submit_when_back(private, tiny_request(dataset, epochs=1, name="after-outage"))
    report("redis_down_submit_accepted", back)
    # Nothing of the refused submit: one new job only, in Redis and on the volume.
    assert job_folders(private) == before | {again["id"]}
    listed = requests.get(private.url("/v1/jobs?limit=100"), timeout=30).json()["items"]
    assert {job["id"] for job in listed} == before | {again["id"]}
    assert private.wait_finished(again["id"])["status"] == "succeeded"


def test_redis_restart_loses_no_job_and_the_same_worker_goes_on(
    private: Stack, server: FaultyRedis, dataset: str
):
    worker_pid = private.workers[WORKER].pid
    running = private.submit(slow_request(dataset, 10, "running"))
    private.wait_job(running["id"], lambda j: j["checkpoints"], "to checkpoint", timeout=120)
    queued = private.submit(tiny_request(dataset, epochs=2, name="queued"))
    assert private.job(queued["id"])["status"] == "queued"

    struck = server.kill()
    server.start()
    after = submit_when_back(private, tiny_request(dataset, epochs=2, name="after"))
    report("redis_restart_submit_accepted", struck)

    for job in (running, queued, after):
        done = private.wait_finished(job["id"])
        assert done["status"] == "succeeded", done
        # Trained through the restart in one attempt, by the same worker.
        assert done["attempt"] == 1, done
        assert done["worker"].startswith(f"{WORKER}@"), done
    report("redis_restart_all_three_succeeded", struck)
    assert private.workers[WORKER].poll() is None
    assert private.workers[WORKER].pid == worker_pid

    # The healthcheck's command: the worker's consumer answers over the broker.
    ping = ping_worker(private, timeout=10)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "pong" in ping.stdout


def ping_worker(stack: Stack, timeout: int) -> subprocess.CompletedProcess:
    """The worker image's healthcheck: `celery inspect ping` to this worker's node."""
    return subprocess.run(
        [
            *("celery", "--app", "worker.app", "inspect", "ping"),
            *("--destination", f"{WORKER}@{os.uname().nodename}", "--timeout", str(timeout)),
        ],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )


def test_the_liveness_check_fails_while_the_consumer_is_stuck(private: Stack, dataset: str):
    """The pool child's heartbeat goes on while the parent (the consumer) is frozen: only the
    ping tells a stuck worker from a live one."""
    parent = private.workers[WORKER]
    parent.send_signal(signal.SIGSTOP)
    try:
        job = private.submit(tiny_request(dataset, epochs=1, name="while-stuck"))
        stuck = ping_worker(private, timeout=3)
        assert stuck.returncode != 0, stuck.stdout
        assert private.worker_record(WORKER) is not None  # the heartbeat alone says "alive"
        assert private.job(job["id"])["status"] == "queued"
    finally:
        parent.send_signal(signal.SIGCONT)
    assert ping_worker(private, timeout=10).returncode == 0
    assert private.wait_finished(job["id"])["status"] == "succeeded"


def fill(folder: Path, leave: int) -> Path:
    """Take all the free space of `folder`'s file system but `leave` bytes; returns the filler."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, shutil.disk_usage(folder).free - leave)
    return filler


def test_a_full_disk_keeps_the_last_checkpoint_and_fails_the_job_no_space(
    private: Stack, dataset: str, finished: str
):
    if not os.path.ismount(private.data_dir):
        pytest.skip("mounting a tmpfs for the data folder is not permitted here")
    job = private.submit(slow_request(dataset, 1000, "fills-the-disk"))
    seen = private.wait_job(job["id"], lambda j: j["checkpoints"], "to checkpoint", timeout=120)
    size = seen["checkpoints"][-1]["bytes"]

    filler = fill(private.data_dir, leave=size // 2)
    struck = time.monotonic()
    try:
        done = private.wait_finished(job["id"], timeout=120)
        report("disk_full_job_failed", struck)
        assert done["status"] == "failed", done
        assert done["error"]["reason"] == "no_space", done
        assert "data volume is full" in done["error"]["message"]

        last = done["checkpoints"][-1]
        verify_checkpoint(private.data_dir / "jobs" / job["id"], last)
        assert requests.get(private.url("/healthz"), timeout=30).status_code == 200
        assert requests.get(private.url(f"/v1/datasets/{dataset}"), timeout=30).status_code == 200
        assert predict(private, finished).status_code == 200
        served = predict(private, job["id"], f"/versions/{last['version']}")
        assert served.status_code == 200, served.text
        assert served.headers["X-Model-Version"] == str(last["version"])
    finally:
        filler.unlink()
    # The volume says so too (a rebuild after Redis lost its data reads it).
    manifest = read_json(private.data_dir / "jobs" / job["id"] / "manifest.json")
    assert (manifest["status"], manifest["reason"]) == ("failed", "no_space")


def test_redis_data_loss_rebuilds_the_records_and_requeues_the_queued(private: Stack, dataset: str):
    before = {
        job["id"]: job["status"]
        for job in requests.get(private.url("/v1/jobs?limit=100"), timeout=30).json()["items"]
    }
    running = private.submit(slow_request(dataset, 8, "running-at-loss"))
    private.wait_job(running["id"], lambda j: j["status"] == "running", "to run", timeout=120)
    queued = private.submit(tiny_request(dataset, epochs=2, name="queued-at-loss"))
    assert private.job(queued["id"])["status"] == "queued"

    private.redis.flushall()
    struck = time.monotonic()
    late = submit_when_back(private, tiny_request(dataset, epochs=2, name="after-loss"))
    report("redis_data_loss_submit_accepted", struck)
    statuses: dict[str, str] = {}

    def rebuilt() -> bool:
        listed = requests.get(private.url("/v1/jobs?limit=100"), timeout=5).json()["items"]
        statuses.update({job["id"]: job["status"] for job in listed})
        return set(before) | {running["id"], queued["id"]} <= set(statuses)

    wait_for(rebuilt, 30, "every job listed again", interval=0.1)
    report("redis_data_loss_records_back", struck)

    assert {job_id: statuses[job_id] for job_id in before} == before
    for job in (running, queued, late):
        done = private.wait_finished(job["id"])
        assert done["status"] == "succeeded", done
    report("redis_data_loss_all_three_succeeded", struck)


def test_a_progress_write_racing_the_data_loss_does_not_hide_the_job(settings: Settings):
    """Between Redis losing its data and the rebuild, a worker still reports progress: that write
    must not leave a record without a status, which the rebuild would then skip."""
    store = JobStore(redis.Redis.from_url(settings.redis_url), DataDir(settings.data_dir), settings)
    store.data.ensure()
    job = store.create({"name": "raced", "data": {"dataset": "a" * 32}}, owner=None)
    store.redis.flushall()

    store.update(job["id"], manifest=False, progress={"epoch": 1})
    resent = store.rebuild_records()

    assert [queued["id"] for queued in resent] == [job["id"]]
    assert store.get(job["id"])["status"] == "queued"


def test_training_cut_off_by_a_long_redis_outage_is_requeued_not_failed(settings: Settings):
    """Redis away for longer than the worker's retries fails an epoch's write: the attempt ends,
    but the job must not end `failed` (it was Redis's fault); the reconciler requeues it."""
    store = JobStore(redis.Redis.from_url(settings.redis_url), DataDir(settings.data_dir), settings)
    store.data.ensure()
    job_id = store.create({"name": "cut-off", "data": {"dataset": "a" * 32}}, owner=None)["id"]

    def cut_off(job_dir, spec, data, settings, control, *, resume):
        # What core.training.train_job raises when a callback's Redis write gives up.
        outage = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        raise TrainingFailed("internal", f"Unexpected error: {outage}") from outage

    def succeed(job_dir, spec, data, settings, control, *, resume):
        return {"status": "succeeded", "epoch": 1, "metrics": {"loss": 0.5}, "final": None}

    sent: list[dict] = []
    worker = WorkerIdentity("faults@test")
    devices = dict

    assert (
        run_job(store, store.get(job_id), worker, train=cut_off, send=sent.append, devices=devices)
        == "redis_unavailable"
    )
    assert store.get(job_id)["status"] == "running"
    assert reconcile(store, sent.append, "elsewhere/1/other@test") == [job_id]
    assert [job["id"] for job in sent] == [job_id]
    assert (
        run_job(store, store.get(job_id), worker, train=succeed, send=sent.append, devices=devices)
        == "succeeded"
    )
    assert (store.get(job_id)["status"], store.get(job_id)["attempt"]) == ("succeeded", 2)


def broker_messages(stack: Stack) -> int:
    """Messages waiting in the `train` queue (Celery's Redis transport keeps one list per
    priority: `train`, `train:1` ... `train:9`)."""
    keys = ["train", *(f"train:{step}" for step in range(1, 10))]
    return sum(stack.redis.llen(key) for key in keys)


def test_a_job_cancelled_while_queued_never_starts_and_a_late_job_times_out(
    private: Stack, dataset: str
):
    stop_tree(private.workers.pop(WORKER), timeout=60)
    cancelled = private.submit(tiny_request(dataset, epochs=2, name="cancelled-while-queued"))
    response = requests.post(private.url(f"/v1/jobs/{cancelled['id']}:cancel"), timeout=30)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "cancelled"
    assert broker_messages(private) == 1  # its message is still in the broker

    private.env = {**private.env, "FITSERVE_MAX_JOB_SECONDS": "3"}
    private.start_worker(WORKER)
    wait_for(lambda: broker_messages(private) == 0, 60, "the cancelled job's message taken")
    late = private.submit(slow_request(dataset, 1000, "too-long"))
    done = private.wait_finished(late["id"], timeout=120)

    assert done["status"] == "failed", done
    assert done["error"]["reason"] == "timeout"
    assert "FITSERVE_MAX_JOB_SECONDS" in done["error"]["message"]
    assert done["checkpoints"], done
    verify_checkpoint(private.data_dir / "jobs" / late["id"], done["checkpoints"][-1])

    never = private.job(cancelled["id"])
    assert never["status"] == "cancelled"
    assert never["attempt"] == 0
    assert never["started_at"] is None
    assert [e["kind"] for e in private.events(cancelled["id"])] == ["status"]
    assert not (private.data_dir / "jobs" / cancelled["id"] / "checkpoints").exists()
