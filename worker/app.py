"""The Celery app of the training workers: `celery --app worker.app worker ...`."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import redis
from celery import Celery, bootsteps
from celery.signals import celeryd_init, worker_process_init, worker_shutting_down
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from core.queues import celery_config
from core.rediskeys import consumer_key
from core.settings import Settings

if TYPE_CHECKING:
    from celery.worker.consumer import Consumer

    from core.batch import BatchPrediction, BatchStore
    from core.jobs import JobStore
    from core.runs import WorkerIdentity
    from core.serving.cache import LoadedModel
    from worker.heartbeat import Heartbeat

log = logging.getLogger("fitserve.worker")

settings = Settings.from_env()
app = Celery("fitserve", include=["worker.tasks"])
app.conf.update(celery_config(settings))
# The child imports TensorFlow before it reports up; on a busy machine that takes far longer
# than Celery's 4 s default, past which the parent kills the child and forks another, forever.
app.conf.worker_proc_alive_timeout = 300


class ConsumerBeat(bootsteps.StartStopStep):
    """The consumer proves it runs: its event loop renews `consumer_key` every heartbeat.

    A timer on the consumer's own hub, so a frozen or stuck main process stops beating (a thread
    would beat on); the pool child's heartbeat watches it (worker.heartbeat.ConsumerWatch).
    """

    def __init__(self, consumer: Consumer, **kwargs: object) -> None:
        self.timer_entry = None
        self.client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=2
        )
        super().__init__(consumer, **kwargs)

    def start(self, consumer: Consumer) -> None:
        name = consumer.hostname
        self.beat(name)
        self.timer_entry = consumer.timer.call_repeatedly(
            settings.heartbeat_seconds, self.beat, (name,)
        )

    def stop(self, consumer: Consumer) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    def beat(self, name: str) -> None:
        """Renew the beat of node `name`: now, on the host's monotonic clock."""
        ttl = max(3 * settings.heartbeat_seconds, settings.consumer_stall_seconds)
        # Redis away: Celery reconnects and says so; the child, unable to read the beat either,
        # starts its count again once Redis is back.
        with contextlib.suppress(redis.RedisError):
            self.client.set(consumer_key(name), repr(time.monotonic()), ex=ttl)


app.steps["consumer"].add(ConsumerBeat)

# Set in the parent before the pool forks (the child inherits it): this worker's node name.
_node = {"name": "celery"}
_child: dict[str, ChildState] = {}
SHUTDOWN_FLAG_SECONDS = 600


@dataclasses.dataclass
class ChildState:
    """What the pool child keeps between tasks: the store, who it is, its heartbeat."""

    store: JobStore
    batches: BatchStore
    worker: WorkerIdentity
    heartbeat: Heartbeat

    def batch_model(self, batch: BatchPrediction) -> LoadedModel:
        """The checkpoint a batch prediction scores with, loaded as serving loads it (sha256
        checked, compiled forward function, warmed)."""
        from concurrent.futures import ThreadPoolExecutor

        from core.serving.cache import load_servable
        from core.serving.catalog import resolve_version
        from core.storage import read_json

        manifest = read_json(self.store.data.job(batch["model"]) / "manifest.json")
        servable = resolve_version(self.store.data, manifest, version=batch["version"])
        return load_servable(servable, self.store.settings, ThreadPoolExecutor(1))


def child() -> ChildState:
    """The pool child's state, set up in `worker_process_init`."""
    return _child["state"]


class JobLogContext(logging.Filter):
    """Appends `job=<id> request_id=<id>` to every log line written while a job runs."""

    job_id: str | None = None
    request_id: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.job_id and not getattr(record, "fitserve_tagged", False):
            record.msg = f"{record.msg} job={self.job_id} request_id={self.request_id}"
            record.fitserve_tagged = True
        return True


_log_context = JobLogContext()


@contextlib.contextmanager
def job_context(job_id: str, request_id: str | None) -> Iterator[None]:
    """Tag the log lines written inside with the job and the request that submitted it."""
    _log_context.job_id, _log_context.request_id = job_id, request_id
    try:
        yield
    finally:
        _log_context.job_id = _log_context.request_id = None


@celeryd_init.connect
def remember_node_name(sender: str, **_: object) -> None:
    """The node name (`--hostname`) names the heartbeat record and the shutdown flag."""
    _node["name"] = sender


@worker_shutting_down.connect
def ask_job_to_requeue(sender: str, **_: object) -> None:
    """SIGTERM in the parent: the child's job saves a checkpoint and goes back to the queue."""
    from core.rediskeys import shutdown_key

    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
        client.set(shutdown_key(sender), "1", ex=SHUTDOWN_FLAG_SECONDS)


@worker_process_init.connect
def import_tensorflow(**_: object) -> None:
    """The pool child imports TensorFlow once, before its first task; the parent never does."""
    import tensorflow as tf

    from core.devices import configure_devices

    configure_devices(settings)

    log.info("tensorflow %s imported devices=%s", tf.__version__, tf.config.list_logical_devices())
    start_heartbeat([device.name for device in tf.config.list_logical_devices()])


def start_heartbeat(devices: list[str]) -> None:
    """The child's store, identity and heartbeat thread; a stale shutdown flag is cleared."""
    from core.batch import BatchStore
    from core.jobs import JobStore
    from core.queues import send_batch, send_sweep_step, send_training
    from core.rediskeys import shutdown_key
    from core.runs import WorkerIdentity
    from core.storage import DataDir
    from worker.heartbeat import Heartbeat

    for handler in logging.getLogger().handlers:
        handler.addFilter(_log_context)
    data = DataDir(settings.data_dir)
    data.ensure()
    # A Redis restart must not fail the epoch that ends during it: every command is retried for
    # about 15 s (a client made by from_url does not retry at all by default).
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=5,
        socket_timeout=10,
        retry=Retry(ExponentialBackoff(cap=2, base=0.1), retries=10),
    )
    store = JobStore(client, data, settings)
    batches = BatchStore(client, data, settings)
    worker = WorkerIdentity(_node["name"])
    client.delete(shutdown_key(worker.name))
    heartbeat = Heartbeat(
        store,
        worker,
        queues=sorted(app.amqp.queues.consume_from or app.amqp.queues),
        devices=devices,
        send=lambda job: send_training(app, job),
        consumer_pid=os.getppid(),
        batches=batches,
        send_batch=lambda batch: send_batch(app, batch),
        send_sweep=lambda sweep_id, task_id: send_sweep_step(app, sweep_id, task_id),
    )
    heartbeat.start()
    _child["state"] = ChildState(store, batches, worker, heartbeat)
