"""One delivery of a job (core.runs) and the reconciler, against a real Redis.

`train` is a stand-in for core.training.train_job (which has its own tests): these tests are
about the lease, the attempt counter and the statuses around it.
"""

from __future__ import annotations

import subprocess
import sys

import orjson

from core.jobs import JobStore
from core.reconciler import reconcile
from core.rediskeys import ORPHAN_LOCK, RECONCILER_LOCK, job_key, shutdown_key
from core.runs import StoreControl, WorkerIdentity, run_job
from core.training import TrainingFailed
from tests.core.test_jobs import SPEC

ME = WorkerIdentity("w1@test")


def run(store: JobStore, job_id: str, train, sent: list | None = None) -> str:
    return run_job(
        store,
        store.get(job_id),
        ME,
        train=train,
        send=(sent if sent is not None else []).append,
        devices=lambda: {"devices": ["CPU:0"]},
    )


def succeed(job_dir, spec, data, settings, control, *, resume):
    control.report_epoch(1, {"loss": 0.5})
    return {"status": "succeeded", "epoch": 1, "metrics": {"loss": 0.5}, "final": None}


def test_a_run_marks_running_then_records_the_outcome(store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    seen = {}

    def train(job_dir, spec, data, settings, control, *, resume):
        seen.update(store.get(job_id), resume=resume, holder=store.lease_holder(job_id))
        return succeed(job_dir, spec, data, settings, control, resume=resume)

    assert run(store, job_id, train) == "succeeded"
    assert seen["status"] == "running"
    assert seen["holder"] == ME.holder
    assert seen["resume"] is None
    job = store.get(job_id)
    assert (job["status"], job["attempt"], job["epoch"]) == ("succeeded", 1, 1)
    assert job["device"] == {"devices": ["CPU:0"]}
    assert store.lease_holder(job_id) is None
    kinds = [e["kind"] for e in store.events(job_id) if e["kind"] != "status"]
    assert kinds == ["attempt_started", "epoch"]
    assert run(store, job_id, train) == "finished"


def test_a_job_leased_by_a_live_worker_is_left_alone(store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    store.acquire_lease(job_id, "elsewhere/1/w2@other")
    assert run(store, job_id, succeed) == "leased"
    assert store.get(job_id)["status"] == "queued"


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over(store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.acquire_lease(job_id, f"{ME.host}/{dead.pid}/w1@test")
    assert run(store, job_id, succeed) == "succeeded"


def test_training_failures_end_the_job_failed_with_their_reason(store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]

    def diverge(*args, **kwargs):
        raise TrainingFailed("nan_loss", "The loss became NaN at epoch 2.")

    assert run(store, job_id, diverge) == "failed"
    job = store.get(job_id)
    assert (job["status"], job["reason"]) == ("failed", "nan_loss")
    assert store.lease_holder(job_id) is None


def test_a_shutdown_requeues_and_sends_the_job_again(store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    sent: list[dict] = []

    def interrupted(job_dir, spec, data, settings, control, *, resume):
        store.redis.set(shutdown_key(ME.name), "1")
        assert control.should_stop() == "shutdown"
        return {"status": "interrupted", "epoch": 1}

    holders: list[str | None] = []

    def send(job: dict) -> None:
        sent.append(job)
        holders.append(store.lease_holder(job_id))

    result = run_job(store, store.get(job_id), ME, train=interrupted, send=send, devices=dict)

    assert result == "interrupted"
    assert store.get(job_id)["status"] == "queued"
    assert [job["id"] for job in sent] == [job_id]
    # The next worker must find the job free the moment the message is out.
    assert holders == [None]


def test_the_attempt_limit_ends_the_job_worker_lost(store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    store.transition(job_id, "running", attempt=store.settings.max_attempts)
    assert run(store, job_id, succeed) == "failed"
    job = store.get(job_id)
    assert job["reason"] == "worker_lost"
    assert "FITSERVE_MAX_ATTEMPTS=3" in job["message"]


def test_should_stop_reads_the_cancel_flag(store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    store.transition(job_id, "running")
    control = StoreControl(store, job_id, 1, ME)
    assert control.should_stop() is None
    store.request_cancel(job_id)
    assert control.should_stop() == "cancel"


def test_reconciler_requeues_unleased_jobs_and_rebuilds_after_data_loss(store: JobStore):
    lost = store.create(SPEC, owner=None)["id"]
    store.transition(lost, "running", attempt=1)
    worn = store.create(SPEC, owner=None)["id"]
    store.transition(worn, "running", attempt=3)
    stopping = store.create(SPEC, owner=None)["id"]
    store.transition(stopping, "running", attempt=1)
    store.transition(stopping, "cancelling")
    alive = store.create(SPEC, owner=None)["id"]
    store.transition(alive, "running", attempt=1)
    store.acquire_lease(alive, "elsewhere/1/w2@other")
    sent: list[dict] = []

    assert sorted(reconcile(store, sent.append, ME.holder)) == sorted([lost, worn, stopping])

    assert [job["id"] for job in sent] == [lost]
    assert store.get(lost)["status"] == "queued"
    assert (store.get(worn)["status"], store.get(worn)["reason"]) == ("failed", "worker_lost")
    assert store.get(stopping)["status"] == "cancelled"
    assert store.get(alive)["status"] == "running"

    store.redis.flushall()
    store.redis.delete(RECONCILER_LOCK)
    sent.clear()
    assert reconcile(store, sent.append, ME.holder) == [lost]
    assert store.get(alive)["status"] == "running"
    assert [job["id"] for job in sent] == [lost]


def test_reconciler_resends_a_stale_queued_job_whose_message_is_gone(store: JobStore):
    from celery import Celery

    from core.queues import celery_config, send_training

    producer = Celery("test-producer", set_as_current=False)
    producer.conf.update(celery_config(store.settings))
    waiting = store.create(SPEC, owner=None)
    send_training(producer, waiting)
    lost = store.create(SPEC, owner=None)
    fresh = store.create(SPEC, owner=None)
    for job in (waiting, lost):
        store.redis.hset(job_key(job["id"]), "updated_at", orjson.dumps("2020-01-01T00:00:00Z"))
    sent: list[dict] = []

    assert reconcile(store, sent.append, ME.holder) == [lost["id"]]
    assert [job["id"] for job in sent] == [lost["id"]]
    assert fresh["id"] not in [job["id"] for job in sent]
    store.redis.delete(RECONCILER_LOCK)
    assert reconcile(store, sent.append, ME.holder) == []  # one broker scan per period
    store.redis.delete(RECONCILER_LOCK, ORPHAN_LOCK)
    assert reconcile(store, sent.append, ME.holder) == [lost["id"]]  # no worker took it
