"""The whole stack for end-to-end tests and benchmarks: redis-server, Celery workers, gunicorn
and nginx in front of it (tests talk to nginx, as clients of compose do).

`running_stack` starts them with the command lines of docker-compose.yml and yields a `Stack`:
its URLs and folders, HTTP helpers, and the means to start and kill more workers. The e2e
fixtures (tests/e2e/conftest.py), the stacks some tests start of their own, and bench/train.py
and bench/load.py all start this way. `blobs` and `tiny_request` are the job every one of them
trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import redis
import requests

from core.jobs import LIVE, TERMINAL
from core.rediskeys import worker_key
from core.settings import Settings
from scripts.proxy import local_proxy_command, write_config
from scripts.stack import ROOT, compose_command
from tests.support.http import expect_status
from tests.support.processes import free_port, redis_server, stop_tree, wait_for

START_SECONDS = 180  # a worker child and each gunicorn worker import TensorFlow on a busy CPU
JOB_SECONDS = 240
# Small limits so faults resolve in seconds: a lost worker's lease ends after 3 s.
STACK_SETTINGS = {
    "FITSERVE_LEASE_SECONDS": "3",
    "FITSERVE_HEARTBEAT_SECONDS": "1",
    "FITSERVE_MAX_ATTEMPTS": "2",
    "FITSERVE_MAX_EPOCHS": "2000",
    "FITSERVE_KEEP_CHECKPOINTS": "2",
    # Batch predictions commit every 5000 rows: a worker killed mid-way is caught between commits.
    "FITSERVE_BATCH_PREDICT_CHUNK_ROWS": "5000",
}


@dataclasses.dataclass
class Stack:
    """A running stack: its URLs and folders, and the processes it started."""

    api: str
    # gunicorn itself, behind the proxy at `api`: for what gunicorn alone must do.
    upstream: str
    redis_url: str
    data_dir: Path
    logs: Path
    env: dict[str, str]
    workers: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)
    others: list[subprocess.Popen] = dataclasses.field(default_factory=list)

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    # Processes ----------------------------------------------------------------------------

    def start_worker(
        self, name: str, service: str = "worker", settings: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """Start docker-compose.yml's worker `service` named `<name>@<host>`, with `settings`
        over the stack's environment; returns once its heartbeat is seen."""
        argv = [*compose_command(service), "--hostname", f"{name}@%h"]
        process = self.spawn(argv, f"worker-{name}", settings)
        self.workers[name] = process
        wait_for(
            lambda: self.worker_record(name) is not None,
            START_SECONDS,
            f"worker {name} heartbeat (log: {self.logs / f'worker-{name}.log'})",
            interval=0.2,
        )
        return process

    def start_tasks(self, name: str = "tasks") -> subprocess.Popen:
        """Start docker-compose.yml's CPU task worker (`tasks`) named `<name>@<host>`; returns
        once it answers a Celery ping."""
        from celery import Celery

        from core.queues import celery_config

        node = f"{name}@{os.uname().nodename}"
        process = self.spawn([*compose_command("tasks"), "--hostname", node], name)
        self.others.append(process)
        producer = Celery("fitserve-tests", set_as_current=False)
        producer.conf.update(celery_config(Settings(redis_url=self.redis_url)))
        wait_for(
            lambda: bool(producer.control.ping(destination=[node], timeout=1)),
            START_SECONDS,
            f"task worker {node} ping (log: {self.logs / f'{name}.log'})",
            interval=0.5,
        )
        return process

    def spawn(
        self, argv: list[str], log_name: str, settings: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """Start `argv` from the repository root in its own session, logging to `<log_name>.log`;
        `settings` go over the stack's environment. The caller stops it (or adds it to `others`)."""
        # The child writes to its own copy of the descriptor; ours closes once it is started.
        with open(self.logs / f"{log_name}.log", "ab") as log:
            return subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env | (settings or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def worker_record(self, name: str) -> dict | None:
        """The worker's heartbeat (`pid` is its pool child's), or None."""
        import orjson

        raw = self.redis.get(worker_key(f"{name}@{os.uname().nodename}"))
        return orjson.loads(raw) if raw else None

    def worker_running(self, job_id: str, not_pids: list[int] = ()) -> str:
        """The name (without host) of the worker whose heartbeat says it trains `job_id`.

        `not_pids`: pool children already killed, whose last heartbeat may linger.
        """
        found: list[str] = []

        def check() -> bool:
            found[:] = [
                name
                for name, record in ((name, self.worker_record(name)) for name in self.workers)
                if record and record.get("job") == job_id and record["pid"] not in not_pids
            ]
            return bool(found)

        wait_for(check, 30, f"a worker heartbeat naming job {job_id}", interval=0.1)
        return found[0]

    def kill_child(self, name: str) -> int:
        """SIGKILL the worker's pool child (the process training); returns its pid."""
        pid = self.worker_record(name)["pid"]
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_worker(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the worker's parent (SIGKILL: to the whole tree at once)."""
        process = self.workers[name]
        if sig == signal.SIGKILL:
            family = [process.pid, *(c.pid for c in psutil.Process(process.pid).children(True))]
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait(10)
        else:
            process.send_signal(sig)

    def stop(self) -> None:
        for process in [*self.others, *self.workers.values()]:
            stop_tree(process, timeout=30)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # HTTP helpers -------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.api + path

    def upload(self, **arrays: np.ndarray) -> str:
        """Upload arrays as an .npz dataset; returns its id."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        response = requests.post(
            self.url("/v1/datasets"), files={"file": ("data.npz", buffer.getvalue())}, timeout=60
        )
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def import_dataset(self, relative: str, timeout: float = JOB_SECONDS) -> str:
        """Import a file under the stack's FITSERVE_IMPORT_DIR; its id once `ready`."""
        response = requests.post(self.url("/v1/datasets"), json={"import": relative}, timeout=60)
        assert response.status_code == 202, response.text
        dataset_id = response.json()["id"]

        def ready() -> bool:
            found = requests.get(self.url(f"/v1/datasets/{dataset_id}"), timeout=30)
            status = expect_status(found, 200).json()["status"]
            assert status != "failed", found.text
            return status == "ready"

        wait_for(ready, timeout, f"dataset {dataset_id} imported", interval=0.2)
        return dataset_id

    def submit(self, request: dict, **headers: str) -> dict:
        response = requests.post(self.url("/v1/jobs"), json=request, headers=headers, timeout=60)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        response = requests.get(self.url(f"/v1/jobs/{job_id}"), timeout=30)
        return expect_status(response, 200).json()

    def wait_job(self, job_id: str, check, what: str, timeout: float = JOB_SECONDS) -> dict:
        """Poll the job until `check(job)` holds; fail with the worker logs after `timeout`, and
        at once if the API answers anything but 200 (a 500 will not go away by waiting)."""
        seen: dict = {}

        def poll() -> bool:
            seen.update(self.job(job_id))
            return bool(check(seen))

        try:
            wait_for(poll, timeout, f"job {job_id} {what}", interval=0.1)
        except TimeoutError as error:
            logs = "\n".join(self.log_tail(f"worker-{name}") for name in self.workers)
            raise AssertionError(f"{error}; last seen {seen}\n{logs}") from error
        return dict(seen)

    def wait_finished(self, job_id: str, timeout: float = JOB_SECONDS) -> dict:
        return self.wait_job(job_id, lambda job: job["status"] in TERMINAL, "to finish", timeout)

    def cancel_live_jobs(self, timeout: float = 60) -> None:
        """Cancel every job not finished yet and wait until each is."""
        live = [
            job["id"]
            for status in LIVE
            for job in expect_status(
                requests.get(self.url(f"/v1/jobs?status={status}&limit=500"), timeout=30), 200
            ).json()["items"]
        ]
        for job_id in live:
            # 409: it finished since it was listed.
            cancel = requests.post(self.url(f"/v1/jobs/{job_id}:cancel"), timeout=30)
            expect_status(cancel, 202, 409)
        for job_id in live:
            self.wait_finished(job_id, timeout)

    def events(self, job_id: str) -> list[dict]:
        """The job's event stream, oldest first."""
        from core.jobs import JobStore
        from core.settings import Settings
        from core.storage import DataDir

        settings = Settings(redis_url=self.redis_url, data_dir=self.data_dir)
        return JobStore(self.redis, DataDir(self.data_dir), settings).events(job_id)


def stack_environment(redis_url: str, data_dir: Path) -> dict[str, str]:
    """The stack's processes' environment: ours, STACK_SETTINGS, its Redis and data folder."""
    return {
        **os.environ,
        **STACK_SETTINGS,
        "FITSERVE_REDIS_URL": redis_url,
        "FITSERVE_DATA_DIR": str(data_dir),
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "-1"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }


def wait_ready(api: str, log: Path) -> None:
    """Wait until the gunicorn at `api` answers /readyz (`log`: where to look if it never does)."""
    wait_for(
        # 503: not ready yet; 502: a proxy in front whose upstream does not listen yet.
        lambda: expect_status(requests.get(f"{api}/readyz", timeout=2), 200, 502, 503).ok,
        START_SECONDS,
        f"gunicorn /readyz at {api} (log: {log})",
        interval=0.2,
    )


@contextlib.contextmanager
def running_stack(
    folder: Path,
    worker: str,
    settings: dict[str, str] | None = None,
    *,
    redis_url: str | None = None,
    tasks: bool = False,
) -> Iterator[Stack]:
    """redis-server, a worker named `worker`, gunicorn and nginx in front of it, with
    docker-compose.yml's command lines and proxy config, in `folder`; ready (the worker's
    heartbeat seen, /readyz answering through nginx). `settings` go over STACK_SETTINGS;
    `redis_url`: a Redis the caller runs (the fault tests restart theirs) instead of a new one;
    `tasks`: the CPU task worker too (dataset ingest, sweeps), answering pings.
    The tests' stacks and bench/train.py start this way."""
    logs = folder / "logs"
    logs.mkdir(parents=True)
    given = contextlib.nullcontext(redis_url)
    with redis_server(folder / "redis") if redis_url is None else given as redis_url:
        port, upstream = free_port(), free_port()
        running = Stack(
            api=f"http://127.0.0.1:{port}",
            upstream=f"http://127.0.0.1:{upstream}",
            redis_url=redis_url,
            data_dir=folder / "data",
            logs=logs,
            env=stack_environment(redis_url, folder / "data")
            | {"FITSERVE_TRUSTED_PROXIES": "127.0.0.1"}
            | (settings or {}),
        )
        try:
            argv = compose_command("api", bind=f"127.0.0.1:{upstream}")
            running.others.append(running.spawn(argv, "api"))
            config = write_config(
                folder / "proxy",
                Settings.from_env(running.env),
                listen=f"127.0.0.1:{port}",
                upstream=f"127.0.0.1:{upstream}",
            )
            running.others.append(running.spawn(local_proxy_command(config), "proxy"))
            running.start_worker(worker)
            if tasks:
                running.start_tasks()
            wait_ready(running.api, logs / "api.log")
            yield running
        finally:
            running.stop()


def blobs(rows: int = 2000, features: int = 16, classes: int = 3, seed: int = 0) -> dict:
    """Separable clusters, one per class: a job on them learns in an epoch or two."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % classes
    centres = rng.normal(scale=3.0, size=(classes, features))
    x = centres[y] + rng.normal(size=(rows, features))
    return {"x": x.astype("float32"), "y": y.astype("int64")}


def tiny_request(dataset_id: str, *, epochs: int, batch_size: int = 32, **changes: object) -> dict:
    """A small Sequential classifier on `blobs` data (short form of the request)."""
    request = {
        "name": "tiny",
        "seed": 1,
        "model": {
            "input_shape": [16],
            "layers": [
                {"class_name": "Dense", "config": {"units": 32, "activation": "relu"}},
                {"class_name": "Dense", "config": {"units": 3, "activation": "softmax"}},
            ],
        },
        "compile": {
            "optimizer": {"class_name": "Adam", "config": {"learning_rate": 0.001}},
            "loss": "sparse_categorical_crossentropy",
            "metrics": ["accuracy"],
        },
        "fit": {"epochs": epochs, "batch_size": batch_size, "validation_split": 0.1},
        "data": {"dataset": dataset_id, "x": "x", "y": "y"},
    }
    request.update(changes)
    return request
