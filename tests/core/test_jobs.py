"""The job store against a real Redis and a temp data folder."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator

from core import cost
from core.datasets import load_manifest, store_json
from core.errors import Conflict, InvalidRequest, NotFound
from core.grammar import data, parse_job, shapes
from core.jobs import JobStore, JobView, provenance, view_job
from core.rediskeys import dataset_jobs_key
from core.settings import Settings
from core.storage import new_id, read_json, write_json
from core.typeschema import json_schema

DATASET = "d" * 32
SPEC = {
    "name": "tiny",
    "priority": 5,
    "resources": {"gpus": 1, "mixed_precision": False},
    "data": {"dataset": DATASET, "x": {"input": "x"}, "y": {"output": "y"}, "validation": None},
}


def manifest_of(store: JobStore, job_id: str) -> dict:
    return read_json(store.data.job(job_id) / "manifest.json")


def record_reads(store: JobStore) -> int:
    """HGETALLs the Redis server has answered so far."""
    return store.redis.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)


def test_create_writes_records_and_files(store: JobStore):
    before = record_reads(store)
    job = store.create(SPEC, owner="ann", request_id="r1")
    assert record_reads(store) == before, "create read back the record it had just written"
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


# A manifest as the store wrote it before `Job` owned the record's fields (no request_sha256,
# resume_from), and one older still (no datasets, priority, gpus, updated_at, record).
BEFORE_JOB_TYPE = {
    "id": "b" * 32,
    "name": "tiny",
    "owner": "ann",
    "status": "succeeded",
    "reason": None,
    "message": None,
    "attempt": 1,
    "created_at": "2026-01-02T03:04:05.000000Z",
    "updated_at": "2026-01-02T03:05:00.000000Z",
    "started_at": "2026-01-02T03:04:06.000000Z",
    "finished_at": "2026-01-02T03:05:00.000000Z",
    "device": {"devices": ["/device:CPU:0"], "tensorflow": "2.21.0"},
    "worker": "w1@host",
    "epoch": 2,
    "checkpoints": [{"version": 2, "file": "checkpoints/epoch-0002.keras", "sha256": "0" * 64}],
    "best": {"version": 2, "monitor": "loss", "value": 0.25},
    "final": {"file": "model.keras", "sha256": "1" * 64, "bytes": 10, "version": 2},
    "test_metrics": None,
    "request_id": "r1",
    "priority": 7,
    "gpus": 1,
    "datasets": [DATASET],
    "history": [{"epoch": 1, "metrics": {"loss": 0.5}}, {"epoch": 2, "metrics": {"loss": 0.25}}],
    "record": {"spec_sha256": "2" * 64, "seed": 3, "datasets": {DATASET: "3" * 64}},
}
OLDEST = {
    "id": "c" * 32,
    "name": "tiny",
    "owner": None,
    "status": "queued",
    "attempt": 0,
    "created_at": "2025-06-01T00:00:00.000000Z",
    "epoch": 0,
    "checkpoints": [],
    "history": [],
}


def test_manifests_written_before_the_job_type_still_restore(store: JobStore):
    schema = Draft202012Validator(json_schema(JobView))
    for manifest in (BEFORE_JOB_TYPE, OLDEST):
        folder = store.data.job(manifest["id"])
        created = {"id": manifest["id"], "owner": None, "created_at": manifest["created_at"]}
        write_json(folder / "job.json", created | {"spec": SPEC})
        write_json(folder / "manifest.json", manifest)

    assert [job["id"] for job in store.rebuild_records()] == [OLDEST["id"]]

    done = store.get(BEFORE_JOB_TYPE["id"])
    stored = {key: value for key, value in BEFORE_JOB_TYPE.items() if key != "history"}
    assert {key: done[key] for key in stored} == stored
    assert (done["metrics"], done["request_sha256"]) == ({"loss": 0.25}, None)
    assert store.history(done["id"]) == BEFORE_JOB_TYPE["history"]
    oldest = store.get(OLDEST["id"])
    assert (oldest["priority"], oldest["gpus"], oldest["datasets"]) == (5, 1, [DATASET])
    assert (oldest["updated_at"], oldest["record"]) == (OLDEST["created_at"], None)
    assert store.list(owner="ann", status=None, limit=5, cursor=None)[0] == [done]
    for job in (done, oldest):
        schema.validate(orjson.loads(orjson.dumps(view_job(job))))


def test_the_parse_reads_each_manifest_once_and_provenance_uses_them(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
):
    document = {"arrays": {"x": np.eye(4).tolist(), "y": [0, 1, 0, 1]}}
    dataset_id = new_id()
    store_json(
        store.data,
        dataset_id,
        document,
        orjson.dumps(document),
        settings=store.settings,
        owner=None,
    )
    reads: list[str] = []

    def manifest_of(wanted: str) -> dict:
        reads.append(wanted)
        return load_manifest(store.data, wanted)

    split = {"dataset": dataset_id}
    body = {
        "model": {"input_shape": [4], "layers": [{"class_name": "Dense", "config": {"units": 2}}]},
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy"},
        "fit": {"epochs": 1},
        "data": {"dataset": dataset_id, "x": "x", "y": "y", "validation": split, "test": split},
    }
    inferred = []
    summarize_model = shapes.summarize_model

    def counted(model: dict, **options: Any) -> dict:
        inferred.append(model)
        return summarize_model(model, **options)

    # The model's shapes: inferred once by the parse, once more by the cost model for the rows'
    # own sizes (the data checks reuse the first).
    monkeypatch.setattr(shapes, "summarize_model", counted)
    monkeypatch.setattr(data, "summarize_model", counted)
    monkeypatch.setattr(cost, "summarize_model", counted)
    parsed = parse_job(body, settings=Settings(), manifest_of=manifest_of)

    assert reads == [dataset_id]
    assert len(inferred) == 2
    assert parsed.summary["total_params"] == 10
    record = provenance(parsed.spec, parsed.manifests)
    sha256 = load_manifest(store.data, dataset_id)["source"]["sha256"]
    assert record["datasets"] == {dataset_id: sha256}
    job = store.create(parsed.spec, owner=None, record=record)
    assert read_json(store.data.job(job["id"]) / "manifest.json")["record"] == record


def test_tags_cloned_from_and_the_raw_request_survive_a_rebuild(store: JobStore):
    spec = {**SPEC, "tags": {"project": "mnist"}}
    job = store.create(spec, owner=None, request={"raw": True}, cloned_from="c" * 32)
    assert read_json(store.data.job(job["id"]) / "request.json") == {"raw": True}
    assert store.raw_request(job["id"]) == {"raw": True}
    store.redis.flushdb()
    store.rebuild_records()
    restored = store.get(job["id"])
    assert (restored["tags"], restored["cloned_from"]) == ({"project": "mnist"}, "c" * 32)
    found, _ = store.list(owner=None, status=None, limit=10, cursor=None, tags=spec["tags"])
    assert [item["id"] for item in found] == [job["id"]]


def test_a_succeeded_job_leaves_its_running_time_and_records_read_only_some_fields(
    store: JobStore,
):
    job = store.create(SPEC, owner=None)
    store.transition(job["id"], "running", started_at="2026-01-01T00:00:00Z")
    store.transition(job["id"], "succeeded", finished_at="2026-01-01T00:01:30Z")
    assert store.recent_durations() == [90.0]
    other = store.create(SPEC, owner=None)
    found = store.records([job["id"], "0" * 32, other["id"]], ("id", "priority"))
    assert found == [{"id": job["id"], "priority": 5}, {"id": other["id"], "priority": 5}]
