"""The pool child's heartbeat against a real Redis: worker record, lease renewal, reconciler,
and the watchdog of the consumer."""

from __future__ import annotations

import os
import time

import orjson
import pytest
import redis

from core.jobs import JobStore
from core.rediskeys import consumer_key, lease_key, worker_key
from core.runs import StoreControl, WorkerIdentity
from core.settings import Settings
from core.storage import DataDir
from tests.core.test_jobs import SPEC
from tests.support.processes import wait_for
from worker.heartbeat import ConsumerWatch, Heartbeat

ME = WorkerIdentity("w1@test")


def make_heartbeat(settings: Settings, sent: list) -> Heartbeat:
    data = DataDir(settings.data_dir)
    data.ensure()
    store = JobStore(redis.Redis.from_url(settings.redis_url), data, settings)
    return Heartbeat(
        store, ME, queues=["train"], devices=["CPU:0"], send=sent.append, consumer_pid=os.getppid()
    )


def test_a_beat_writes_the_worker_record_and_renews_the_lease(settings: Settings):
    heartbeat = make_heartbeat(settings, [])
    store = heartbeat.store
    job_id = store.create(SPEC, owner=None)["id"]
    store.transition(job_id, "running", attempt=1)
    store.acquire_lease(job_id, ME.holder)
    store.redis.expire(lease_key(job_id), 1)
    control = StoreControl(store, job_id, 1, ME)
    heartbeat.set_control(control)

    heartbeat.beat()

    record = orjson.loads(store.redis.get(worker_key(ME.name)))
    assert record | {"time": None, "consumer_age": None} == {
        "name": ME.name,
        "host": ME.host,
        "pid": ME.pid,
        "queues": ["train"],
        "devices": ["CPU:0"],
        "job": job_id,
        "consumer_age": None,
        "time": None,
    }
    assert 0 <= record["consumer_age"] < settings.consumer_stall_seconds
    assert store.redis.ttl(lease_key(job_id)) == settings.lease_seconds
    assert not control.lease_lost
    assert store.get(job_id)["status"] == "running"


def test_a_lease_held_by_another_stops_the_job(settings: Settings):
    heartbeat = make_heartbeat(settings, [])
    store = heartbeat.store
    job_id = store.create(SPEC, owner=None)["id"]
    store.transition(job_id, "running", attempt=1)
    store.acquire_lease(job_id, "elsewhere/1/w2@other")
    control = StoreControl(store, job_id, 1, ME)
    heartbeat.set_control(control)

    heartbeat.beat()

    assert control.lease_lost
    assert control.should_stop() == "shutdown"


def test_the_thread_beats_until_stopped(settings: Settings):
    sent: list = []
    heartbeat = make_heartbeat(settings.with_overrides(heartbeat_seconds=1), sent)
    lost = heartbeat.store.create(SPEC, owner=None)["id"]
    heartbeat.store.transition(lost, "running", attempt=1)
    heartbeat.start()
    try:
        wait_for(lambda: sent, 5, "the reconciler to re-send the unleased job")
    finally:
        heartbeat.stop()
    assert [job["id"] for job in sent] == [lost]
    assert heartbeat.store.redis.exists(worker_key(ME.name))


def test_after_redis_lost_its_data_a_beat_keeps_its_job_and_restores_the_records(
    settings: Settings,
):
    sent: list = []
    heartbeat = make_heartbeat(settings, sent)
    store = heartbeat.store
    running = store.create(SPEC, owner=None)["id"]
    store.transition(running, "running", attempt=1)
    store.acquire_lease(running, ME.holder)
    queued = store.create(SPEC, owner=None)["id"]
    heartbeat.set_control(StoreControl(store, running, 1, ME))
    store.redis.flushall()

    heartbeat.beat()

    assert store.lease_holder(running) == ME.holder
    assert store.get(running)["status"] == "running"
    assert store.get(queued)["status"] == "queued"
    assert [job["id"] for job in sent] == [queued]
    assert not heartbeat.control.lease_lost


@pytest.mark.parametrize(
    ("beats", "now", "age"),
    [
        ([None], 30.0, 20.0),  # no beat yet: counted from when the child started watching
        ([5.0], 30.0, 20.0),  # a beat older than the watch counts from the watch
        ([25.0], 30.0, 5.0),
        ([25.0, None], 40.0, 15.0),  # the beat gone from Redis (flushed): the last one stands
        ([25.0, 20.0], 40.0, 15.0),  # an older beat never moves the last one back
    ],
)
def test_the_consumer_age_is_counted_from_its_last_beat_seen(
    beats: list[float | None], now: float, age: float
):
    watch = ConsumerWatch(since=10.0)
    for beat in beats[:-1]:
        watch.age(beat, 10.0)
    assert watch.age(beats[-1], now) == age


def test_a_consumer_is_stalled_only_past_a_limit_that_is_on():
    watch = ConsumerWatch(since=0.0)
    assert not watch.stalled(120.0, 120)
    assert watch.stalled(120.5, 120)
    assert not watch.stalled(10_000.0, 0)


def test_a_beat_reports_the_consumer_age_and_ends_a_stalled_consumer(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    heartbeat = make_heartbeat(settings.with_overrides(consumer_stall_seconds=4), [])
    heartbeat.consumer.since -= 60  # the child has watched for a minute
    ended: list[float] = []
    monkeypatch.setattr(heartbeat, "end_consumer", ended.append)
    client = heartbeat.store.redis

    client.set(consumer_key(ME.name), repr(time.monotonic() - 2))
    heartbeat.beat()
    assert 2 <= orjson.loads(client.get(worker_key(ME.name)))["consumer_age"] < 4
    assert ended == []

    client.delete(consumer_key(ME.name))
    heartbeat.consumer.last_beat -= 4  # four seconds on, no new beat
    heartbeat.beat()
    assert 6 <= orjson.loads(client.get(worker_key(ME.name)))["consumer_age"] < 8
    assert len(ended) == 1
    assert ended[0] >= 6
