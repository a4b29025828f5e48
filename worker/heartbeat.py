"""The pool child's heartbeat: its worker record, the lease of its job, the reconciler.

A daemon thread in the child that trains, so a busy or stuck parent never lets a live job's
lease expire, and a dead child stops renewing it within one lease.
"""

from __future__ import annotations

import logging
import threading

import orjson

from core.devices import worker_key
from core.jobs import JobStore
from core.reconciler import reconcile
from core.runs import StoreControl, WorkerIdentity
from core.storage import utc_now

log = logging.getLogger("fitserve.worker")


class Heartbeat:
    """Beats every `heartbeat_seconds` until stopped; `control` is the job running now, if any."""

    def __init__(
        self,
        store: JobStore,
        worker: WorkerIdentity,
        *,
        queues: list[str],
        devices: list[str],
        send,
    ) -> None:
        self.store = store
        self.worker = worker
        self.queues = queues
        self.devices = devices
        self.send = send
        self.control: StoreControl | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fitserve-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def set_control(self, control: StoreControl | None) -> None:
        self.control = control

    def beat(self) -> None:
        """Write the worker record, renew the job's lease, give the reconciler a turn."""
        settings = self.store.settings
        control = self.control
        record = {
            "name": self.worker.name,
            "host": self.worker.host,
            "pid": self.worker.pid,
            "queues": self.queues,
            "devices": self.devices,
            "job": control.job_id if control else None,
            "time": utc_now(),
        }
        ttl = max(3 * settings.heartbeat_seconds, settings.lease_seconds)
        self.store.redis.set(worker_key(self.worker.name), orjson.dumps(record), ex=ttl)
        if control is not None and not self.store.renew_lease(control.job_id, self.worker.holder):
            log.warning("lease_lost job=%s holder=%s", control.job_id, self.worker.holder)
            control.lease_lost = True
        reconcile(self.store, self.send, self.worker.holder)

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception:
                # Redis away for a moment: the next beat tries again; the lease outlives a few.
                log.warning("heartbeat_failed worker=%s", self.worker.name, exc_info=True)
            if self._stopped.wait(self.store.settings.heartbeat_seconds):
                return
