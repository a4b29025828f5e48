"""Usage counted from the volume, finished jobs expiring unless pinned, and the export LRU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson

from core.datasets import store_json
from core.jobs import JobStore, expiry_time, parse_time, view_job
from core.reconciler import expire_jobs
from core.serving.export import trim_exports
from core.storage import new_id
from core.usage import storage_usage

SPEC = {"name": "tiny", "priority": 5, "resources": {"gpus": 1}, "data": {"dataset": "d" * 32}}
TTL = 3600


def finished_job(store: JobStore, owner: str | None = None) -> str:
    job_id = store.create(SPEC, owner=owner)["id"]
    store.transition(job_id, "running", attempt=1)
    store.transition(job_id, "succeeded")
    return job_id


def test_usage_counts_each_kind_of_file_per_owner(store: JobStore) -> None:
    document = {"arrays": {"x": np.zeros((10, 4), "float32").tolist(), "y": [0] * 10}}
    body = orjson.dumps(document)
    for owner in ("ann", "bob"):
        store_json(store.data, new_id(), document, body, settings=store.settings, owner=owner)
    job_id = finished_job(store, owner="ann")
    checkpoints = store.data.job(job_id) / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "epoch-0001.keras").write_bytes(b"k" * 1000)
    (checkpoints / "epoch-0001.onnx").write_bytes(b"o" * 500)
    exports = store.data.job(job_id) / "exports"
    exports.mkdir()
    (exports / "v0001-abc.savedmodel.tar.gz").write_bytes(b"e" * 300)

    ann = storage_usage(store.data, "ann")
    assert (ann.datasets.count, ann.jobs.count) == (1, 1)
    assert (ann.checkpoints.count, ann.checkpoints.bytes) == (1, 1500)
    assert (ann.exports.count, ann.exports.bytes) == (1, 300)
    assert ann.jobs.bytes > 0
    assert ann.bytes == sum(h.bytes for h in (ann.datasets, ann.jobs, ann.checkpoints, ann.exports))
    assert storage_usage(store.data, "bob").jobs.count == 0
    assert storage_usage(store.data, None).datasets.count == 2


def test_finished_jobs_expire_unless_pinned_and_live_ones_never(store: JobStore) -> None:
    store = JobStore(store.redis, store.data, store.settings.with_overrides(job_ttl_seconds=TTL))
    expiring, pinned = finished_job(store), finished_job(store)
    store.update(pinned, pinned=True)
    live = store.create(SPEC, owner=None)["id"]
    store.transition(live, "running", attempt=1)
    finished = parse_time(store.get(expiring)["finished_at"])

    assert expire_jobs(store, finished + TTL - 1) == []
    assert expire_jobs(store, finished + TTL + 1) == [expiring]
    assert not store.exists(expiring)
    assert not store.data.job(expiring).exists()
    assert store.exists(pinned)
    assert store.data.job(pinned).is_dir()
    assert store.get(live)["status"] == "running"
    assert store.manifest(pinned)["pinned"] is True


def test_the_view_dates_a_finished_jobs_removal(store: JobStore) -> None:
    job = store.get(finished_job(store))
    due = expiry_time(job, TTL)
    assert due is not None
    assert parse_time(due) == parse_time(job["finished_at"]) + TTL
    assert view_job(job, ttl_seconds=TTL)["retention"] == {"pinned": False, "expires_at": due}
    assert view_job(job)["retention"]["expires_at"] is None
    store.update(job["id"], pinned=True)
    pinned = view_job(store.get(job["id"]), ttl_seconds=TTL)["retention"]
    assert pinned == {"pinned": True, "expires_at": None}


def test_export_caches_are_trimmed_least_recently_used_first(tmp_path: Path) -> None:
    made = []
    for age, job in enumerate(["a", "b", "c"]):
        folder = tmp_path / job / "exports"
        folder.mkdir(parents=True)
        path = folder / "v0001-x.savedmodel.tar.gz"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + age, 1000 + age))
        made.append(path)
    # "a" is the oldest written but the most recently used.
    os.utime(made[0], (2000, 2000))
    assert trim_exports(tmp_path, 250) == [made[1]]
    assert [path.exists() for path in made] == [True, False, True]
    # The export just made stays, even when it is the stalest.
    assert trim_exports(tmp_path, 0, keep=made[2]) == [made[0]]
    assert made[2].exists()
