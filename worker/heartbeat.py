"""The pool child's heartbeat: its worker record, the lease of its job, the reconciler, and
the watchdog of its consumer.

A daemon thread in the child that trains, so a busy or stuck parent never lets a live job's
lease expire, and a dead child stops renewing it within one lease. The parent (the consumer)
beats from its event loop (worker.app.ConsumerBeat); a consumer that stopped beating is ended
here, so its container exits and is restarted, and the job is requeued through its lease.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time

import orjson

from core.batch import BatchStore
from core.jobs import JobStore
from core.reconciler import BatchSend, Send, SendSweep, reconcile
from core.rediskeys import consumer_key, worker_key
from core.runs import LeasedWork, WorkerIdentity
from core.storage import utc_now

log = logging.getLogger("fitserve.worker")


@dataclasses.dataclass
class ConsumerWatch:
    """When the consumer last beat, as its pool child saw it; times are `time.monotonic()`,
    one clock for every process on the host.

    A consumer gets a full stall limit from `since` (the child started watching, or Redis came
    back); a beat missing from Redis (expired, or Redis lost its data) leaves the last one seen.
    """

    since: float
    last_beat: float | None = None

    def age(self, beat: float | None, now: float) -> float:
        """Seconds since the consumer last beat, given the beat read now (None: none there)."""
        if beat is not None and (self.last_beat is None or beat > self.last_beat):
            self.last_beat = beat
        return now - max(self.since, self.last_beat or self.since)

    def stalled(self, age: float, limit: int) -> bool:
        """Past the limit (0: never)."""
        return 0 < limit < age


class Heartbeat:
    """Beats every `heartbeat_seconds` until stopped; `control` is the job running now, if any."""

    def __init__(
        self,
        store: JobStore,
        worker: WorkerIdentity,
        *,
        queues: list[str],
        devices: list[str],
        send: Send,
        consumer_pid: int,
        batches: BatchStore | None = None,
        send_batch: BatchSend | None = None,
        send_sweep: SendSweep | None = None,
    ) -> None:
        self.store = store
        self.worker = worker
        self.queues = queues
        self.devices = devices
        self.send = send
        self.send_sweep = send_sweep
        self.consumer_pid = consumer_pid
        self.batches = batches
        self.send_batch = send_batch
        self.consumer = ConsumerWatch(since=time.monotonic())
        self.control: LeasedWork | None = None
        self._ending = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fitserve-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def set_control(self, control: LeasedWork | None) -> None:
        self.control = control

    def beat(self) -> None:
        """Write the worker record, renew the job's lease, give the reconciler a turn; end a
        stalled consumer."""
        settings = self.store.settings
        control = self.control
        raw = self.store.redis.get(consumer_key(self.worker.name))
        consumer_age = self.consumer.age(float(raw) if raw else None, time.monotonic())
        record = {
            "name": self.worker.name,
            "host": self.worker.host,
            "pid": self.worker.pid,
            "queues": self.queues,
            "devices": self.devices,
            "job": control.job_id if control else None,
            "consumer_age": round(consumer_age, 1),
            "time": utc_now(),
        }
        ttl = max(3 * settings.heartbeat_seconds, settings.lease_seconds)
        self.store.redis.set(worker_key(self.worker.name), orjson.dumps(record), ex=ttl)
        if control is not None and not control.renew_lease():
            log.warning("lease_lost job=%s holder=%s", control.job_id, self.worker.holder)
            control.lease_lost = True
        reconcile(
            self.store,
            self.send,
            self.worker.holder,
            batches=self.batches,
            send_batch=self.send_batch,
            send_sweep=self.send_sweep,
        )
        if self.consumer.stalled(consumer_age, settings.consumer_stall_seconds):
            self.end_consumer(consumer_age)

    def end_consumer(self, age: float) -> None:
        """End the stalled consumer, once, in a thread of its own: the beats (and the job's
        lease) go on meanwhile."""
        if self._ending.is_set():
            return
        self._ending.set()
        log.error(
            "consumer_stalled worker=%s consumer_pid=%s consumer_age=%.1f limit=%s: the worker's "
            "main process stopped consuming; ending it so the worker restarts",
            self.worker.name,
            self.consumer_pid,
            age,
            self.store.settings.consumer_stall_seconds,
        )
        threading.Thread(target=self._end_consumer, name="fitserve-watchdog", daemon=True).start()

    def _end_consumer(self) -> None:
        # SIGTERM first: a consumer still able to run its handler shuts down warmly (the job
        # saves a checkpoint and requeues itself) within as long again as the stall limit. This
        # child dies with its consumer (Celery sets PR_SET_PDEATHSIG in pool children), so it
        # gets past the sleep only if the consumer is still there; the job's lease then lapses
        # and the reconciler requeues it.
        pid = self.consumer_pid
        os.kill(pid, signal.SIGTERM)
        time.sleep(self.store.settings.consumer_stall_seconds)
        log.error("consumer_killed worker=%s consumer_pid=%s", self.worker.name, pid)
        os.kill(pid, signal.SIGKILL)

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception:
                # Redis away for a moment: the next beat tries again; the lease outlives a few.
                # The consumer could not beat either: its stall limit starts again.
                log.warning("heartbeat_failed worker=%s", self.worker.name, exc_info=True)
                self.consumer.since = time.monotonic()
            if self._stopped.wait(self.store.settings.heartbeat_seconds):
                return
