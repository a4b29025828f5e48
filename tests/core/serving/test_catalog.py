"""The catalog: model ids and names, versions and labels, from job manifests on the volume."""

from __future__ import annotations

import pytest

from core.errors import Conflict, NotFound
from core.serving import catalog
from core.storage import DataDir, new_id, write_json
from tests.support.models import job_manifest, write_job


def entry(version: int) -> dict:
    return {"version": version, "file": f"checkpoints/epoch-{version:04d}.keras", "sha256": "0"}


def add_job(data: DataDir, *, name="m", status="succeeded", versions=(1, 2, 3), **fields) -> dict:
    manifest = job_manifest(new_id(), name=name, owner=fields.pop("owner", None), status=status)
    manifest["checkpoints"] = [entry(v) for v in versions]
    if status == "succeeded" and versions:
        manifest["final"] = {"file": "model.keras", "sha256": "1", "version": versions[-1]}
    manifest.update(fields)
    write_job(data, manifest)
    return manifest


@pytest.fixture
def data(tmp_path) -> DataDir:
    return DataDir(tmp_path / "data")


def everyone(owner):
    return True


def test_names_mean_the_newest_succeeded_job(data):
    old = add_job(data, created_at="2026-01-01T00:00:00.000Z")
    new = add_job(data, created_at="2026-02-01T00:00:00.000Z")
    add_job(data, status="running", created_at="2026-03-01T00:00:00.000Z")
    manifests = catalog.Manifests(data)
    assert manifests.find_model("m", everyone)["id"] == new["id"]
    assert manifests.find_model(old["id"], everyone)["id"] == old["id"]
    with pytest.raises(NotFound):
        manifests.find_model("other", everyone)


@pytest.mark.parametrize("status", ["running", "cancelled", "failed", "queued"])
def test_a_name_with_no_succeeded_job_is_not_found(data, status):
    job = add_job(data, name="r", status=status, created_at="2026-02-01T00:00:00.000Z")
    manifests = catalog.Manifests(data)
    with pytest.raises(NotFound, match="no succeeded job"):
        manifests.find_model("r", everyone)
    assert manifests.find_model(job["id"], everyone)["id"] == job["id"]


def test_a_newer_cancelled_job_leaves_the_name_to_the_succeeded_one(data):
    succeeded = add_job(data, name="r", created_at="2026-01-01T00:00:00.000Z")
    add_job(data, name="r", status="cancelled", created_at="2026-02-01T00:00:00.000Z")
    assert catalog.Manifests(data).find_model("r", everyone)["id"] == succeeded["id"]


def test_another_owners_job_is_not_found(data):
    job = add_job(data, owner="alice")
    manifests = catalog.Manifests(data)
    with pytest.raises(NotFound):
        manifests.find_model(job["id"], lambda owner: owner == "bob")
    with pytest.raises(NotFound):
        manifests.find_model("m", lambda owner: owner == "bob")


def test_a_replaced_manifest_is_read_again(data):
    job = add_job(data, status="running", versions=(1,))
    manifests = catalog.Manifests(data)
    assert manifests.read(job["id"])["status"] == "running"
    write_json(data.job(job["id"]) / "manifest.json", {**job, "status": "succeeded"})
    assert manifests.read(job["id"])["status"] == "succeeded"
    newer = add_job(data)
    assert {m["id"] for m in manifests.all()} == {job["id"], newer["id"]}


@pytest.mark.parametrize(
    ("version", "label", "served", "final"),
    [
        (None, None, 3, True),
        (2, None, 2, False),
        (3, None, 3, True),
        (None, "latest", 3, True),
        (None, "best", 2, False),
        (None, "final", 3, True),
    ],
)
def test_versions_and_labels(data, version, label, served, final):
    job = add_job(data, best={"version": 2, "monitor": "loss", "value": 0.1})
    servable = catalog.resolve_version(data, job, version=version, label=label)
    assert (servable.version, servable.final) == (served, final)


def test_a_running_job_defaults_to_latest_and_has_no_final(data):
    job = add_job(data, status="running", versions=(1, 2))
    assert catalog.resolve_version(data, job).version == 2
    with pytest.raises(NotFound, match="running"):
        catalog.resolve_version(data, job, label="final")


@pytest.mark.parametrize(("version", "label"), [(9, None), (None, "newest")])
def test_unknown_versions_and_labels_are_not_found(data, version, label):
    job = add_job(data)
    with pytest.raises(NotFound):
        catalog.resolve_version(data, job, version=version, label=label)


def test_no_checkpoint_yet_is_a_conflict_naming_the_status(data):
    job = add_job(data, status="queued", versions=())
    with pytest.raises(Conflict, match="queued"):
        catalog.resolve_version(data, job)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_timed_cache_reuses_an_answer_until_it_is_old():
    clock, calls = Clock(), []
    cache = catalog.TimedCache(0.25, size=2, clock=clock)

    def compute(value: str):
        return lambda: calls.append(value) or value

    assert cache.get("a", compute("a1")) == "a1"
    clock.now += 0.2
    assert cache.get("a", compute("a2")) == "a1"
    clock.now += 0.1
    assert cache.get("a", compute("a3")) == "a3"
    assert calls == ["a1", "a3"]
    with pytest.raises(NotFound):
        cache.get("b", lambda: (_ for _ in ()).throw(NotFound("no b")))
    assert cache.get("b", compute("b1")) == "b1"  # an error is not kept
    cache.get("c", compute("c1"))  # past the size: the oldest answer ("a") goes
    assert cache.get("a", compute("a4")) == "a4"
    assert cache.get("c", compute("c2")) == "c1"
