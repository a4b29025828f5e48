"""The job store against a real Redis and a temp data folder."""

from __future__ import annotations

import pytest

from core.errors import Conflict, InvalidRequest, NotFound
from core.jobs import JobStore, dataset_jobs_key
from core.storage import new_id, read_json

DATASET = "d" * 32
SPEC = {
    "name": "tiny",
    "priority": 5,
    "resources": {"gpus": 1, "mixed_precision": False},
    "data": {"dataset": DATASET, "x": {"input": "x"}, "y": {"output": "y"}, "validation": None},
}


def manifest_of(store: JobStore, job_id: str) -> dict:
    return read_json(store.data.job(job_id) / "manifest.json")


def test_create_writes_records_and_files(store: JobStore):
    job = store.create(SPEC, owner="ann", request_id="r1")
    assert store.get(job["id"])["status"] == "queued"
    assert read_json(store.data.job(job["id"]) / "job.json")["spec"] == SPEC
    manifest = manifest_of(store, job["id"])
    assert manifest["status"] == "queued"
    assert manifest["owner"] == "ann"
    assert manifest["attempt"] == 0
    assert store.redis.smembers(dataset_jobs_key(DATASET)) == {job["id"].encode()}


def test_transitions_follow_the_state_machine(store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    store.transition(job_id, "running", attempt=1)
    store.transition(job_id, "succeeded")
    assert manifest_of(store, job_id)["status"] == "succeeded"
    assert manifest_of(store, job_id)["finished_at"] is not None
    with pytest.raises(Conflict, match="succeeded; it cannot become running"):
        store.transition(job_id, "running")
    assert store.redis.scard(dataset_jobs_key(DATASET)) == 0


def test_unknown_and_malformed_ids_are_not_found(store: JobStore):
    with pytest.raises(NotFound):
        store.get(new_id())
    with pytest.raises(NotFound):
        store.get("../etc")


def test_cancel_of_a_queued_job_ends_it_and_of_a_running_job_asks_to_stop(store: JobStore):
    queued = store.create(SPEC, owner=None)["id"]
    assert store.request_cancel(queued)["status"] == "cancelled"
    running = store.create(SPEC, owner=None)["id"]
    store.transition(running, "running")
    assert store.request_cancel(running)["status"] == "cancelling"
    assert store.stop_request(running) == "cancel"
    assert store.request_cancel(running)["status"] == "cancelling"
    store.transition(running, "cancelled")
    assert store.stop_request(running) is None
    done = store.create(SPEC, owner=None)["id"]
    store.transition(done, "failed", reason="internal", message="boom")
    with pytest.raises(Conflict, match="already failed"):
        store.request_cancel(done)


def test_list_is_newest_first_paginated_and_filtered(store: JobStore):
    ids = [store.create(SPEC, owner="ann" if i % 2 else "bob")["id"] for i in range(5)]
    store.transition(ids[0], "running")
    first, cursor = store.list(owner=None, status=None, limit=2, cursor=None)
    second, cursor2 = store.list(owner=None, status=None, limit=2, cursor=cursor)
    third, cursor3 = store.list(owner=None, status=None, limit=2, cursor=cursor2)
    assert [j["id"] for j in first + second + third] == ids[::-1]
    assert cursor3 is None
    ann, _ = store.list(owner="ann", status=None, limit=10, cursor=None)
    assert [j["id"] for j in ann] == [ids[3], ids[1]]
    running, _ = store.list(owner=None, status="running", limit=10, cursor=None)
    assert [j["id"] for j in running] == [ids[0]]
    with pytest.raises(InvalidRequest):
        store.list(owner=None, status=None, limit=2, cursor="nonsense")


def test_delete_refuses_live_jobs_and_removes_finished_ones(store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    with pytest.raises(Conflict):
        store.delete(job_id)
    store.transition(job_id, "cancelled")
    store.delete(job_id)
    assert not store.data.job(job_id).exists()
    with pytest.raises(NotFound):
        store.get(job_id)
    assert store.list(owner=None, status=None, limit=10, cursor=None) == ([], None)


def test_history_entries_are_replaced_when_an_epoch_is_redone(store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    for epoch in (1, 2, 3):
        store.record_epoch(job_id, epoch, {"loss": float(epoch)})
    store.truncate_history(job_id, 1)
    store.record_epoch(job_id, 2, {"loss": 0.5})
    assert [(h["epoch"], h["metrics"]["loss"]) for h in store.history(job_id)] == [
        (1, 1.0),
        (2, 0.5),
    ]
    assert [h["epoch"] for h in manifest_of(store, job_id)["history"]] == [1, 2]
    store.record_epoch(job_id, 1, {"loss": 0.8})
    assert [(h["epoch"], h["metrics"]["loss"]) for h in store.history(job_id)] == [(1, 0.8)]


def test_a_lease_has_one_holder(store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    assert store.acquire_lease(job_id, "w1/1")
    assert not store.acquire_lease(job_id, "w2/2")
    assert not store.renew_lease(job_id, "w2/2")
    assert store.renew_lease(job_id, "w1/1")
    assert not store.steal_lease(job_id, "w9/9", "w2/2")
    assert store.steal_lease(job_id, "w1/1", "w2/2")
    store.release_lease(job_id, "w1/1")
    assert store.lease_holder(job_id) == "w2/2"
    store.release_lease(job_id, "w2/2")
    assert store.lease_holder(job_id) is None


def test_rebuild_restores_records_from_the_volume(store: JobStore):
    queued = store.create(SPEC, owner="ann")["id"]
    running = store.create(SPEC, owner="ann")["id"]
    store.transition(running, "running", attempt=1)
    store.record_epoch(running, 1, {"loss": 0.7})
    done = store.create(SPEC, owner="bob")["id"]
    store.transition(done, "cancelled")
    store.redis.flushall()

    restored = store.rebuild_records()

    assert [job["id"] for job in restored] == [queued]
    assert store.get(running)["status"] == "running"
    assert store.get(running)["attempt"] == 1
    assert store.get(done)["status"] == "cancelled"
    assert [h["epoch"] for h in store.history(running)] == [1]
    listed, _ = store.list(owner="ann", status=None, limit=10, cursor=None)
    assert [job["id"] for job in listed] == [running, queued]
    assert store.redis.smembers(dataset_jobs_key(DATASET)) == {
        queued.encode(),
        running.encode(),
    }


def test_rebuild_command_restores_records_and_requeues(store: JobStore, monkeypatch, capsys):
    from core.reconciler import waiting_task_ids
    from scripts.rebuild_records import main

    queued = store.create(SPEC, owner=None)["id"]
    store.redis.flushall()
    monkeypatch.setenv("FITSERVE_REDIS_URL", store.settings.redis_url)
    monkeypatch.setenv("FITSERVE_DATA_DIR", str(store.settings.data_dir))

    assert main([]) == 0

    assert store.get(queued)["status"] == "queued"
    assert waiting_task_ids(store.redis, ["train"]) == {queued}
    assert "1 queued job(s) sent again" in capsys.readouterr().out
