"""core.ingest: a dataset recorded `processing` becomes `ready` or `failed`, never half ready;
stale ingests are failed on read; imports stay inside FITSERVE_IMPORT_DIR."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from core import datasets, ingest
from core.archives import ImageOptions
from core.errors import Forbidden, InvalidRequest, NotFound
from core.settings import Settings
from core.storage import DataDir, new_id, sha256_file
from tests.support.images import class_images, png, write_archive

CLASSES = {"a": 2, "b": 3}
OPTIONS = {**ImageOptions().to_json(), "label": "label", "name": "x"}


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    folder = DataDir(tmp_path / "data")
    folder.ensure()
    return folder


@pytest.fixture
def imports(tmp_path: Path) -> Path:
    folder = tmp_path / "imports"
    folder.mkdir()
    return folder


def begin_archive(data: DataDir, tmp_path: Path, files: dict[str, bytes], **options) -> str:
    dataset_id = new_id()
    source = write_archive(tmp_path / f"{dataset_id}.zip", files, "zip")
    ingest.begin_ingest(
        data,
        dataset_id,
        source,
        owner="alice",
        origin={"filename": "images.zip", "format": "zip"},
        options={**OPTIONS, **options},
    )
    return dataset_id


def test_an_archive_goes_from_processing_to_ready(data: DataDir, tmp_path: Path) -> None:
    dataset_id = begin_archive(data, tmp_path, class_images(CLASSES))
    assert datasets.load_manifest(data, dataset_id)["status"] == "processing"
    assert ingest.run_ingest(data, dataset_id, Settings()) == "ready"
    manifest = datasets.load_manifest(data, dataset_id)
    assert manifest["status"] == "ready"
    assert manifest["source"]["filename"] == "images.zip"
    assert manifest["classes"] == {"y": ["a", "b"]}
    assert sorted(p.name for p in data.dataset(dataset_id).iterdir()) == [
        "a0.npy",
        "a1.npy",
        "manifest.json",
    ]
    # A second delivery of the same task finds nothing to do.
    assert ingest.run_ingest(data, dataset_id, Settings()) == "ready"


def test_a_refused_archive_is_failed_with_the_member_named(data: DataDir, tmp_path: Path) -> None:
    files = {**class_images(CLASSES), "b/bad.png": b"not an image"}
    dataset_id = begin_archive(data, tmp_path, files)
    assert ingest.run_ingest(data, dataset_id, Settings()) == "failed"
    manifest = datasets.load_manifest(data, dataset_id)
    assert manifest["status"] == "failed"
    assert manifest["error"]["member"] == "b/bad.png"
    assert "b/bad.png" in manifest["error"]["message"]
    assert [p.name for p in data.dataset(dataset_id).iterdir()] == ["manifest.json"]


def test_an_ingest_killed_midway_is_never_listed_ready(
    data: DataDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset_id = begin_archive(data, tmp_path, class_images(CLASSES))

    class Killed(BaseException):
        """What SIGTERM's handler or a KeyboardInterrupt raises in the middle of a read."""

    checks = iter(range(100))
    original = ingest.IngestProgress.check

    def check(self: ingest.IngestProgress) -> None:
        # The third check is the second image's: the first row is already on disk.
        if next(checks) == 2:
            raise Killed
        original(self)

    monkeypatch.setattr(ingest.IngestProgress, "check", check)
    with pytest.raises(Killed):
        ingest.run_ingest(data, dataset_id, Settings())
    manifest = datasets.load_manifest(data, dataset_id)
    assert manifest["status"] == "failed"
    assert manifest["arrays"] == {}
    assert [p.name for p in data.dataset(dataset_id).iterdir()] == ["manifest.json"]


def test_a_stale_processing_dataset_reads_as_failed(data: DataDir, tmp_path: Path) -> None:
    dataset_id = begin_archive(data, tmp_path, class_images(CLASSES))
    settings = Settings(ingest_stall_seconds=60)
    manifest = datasets.load_manifest(data, dataset_id)
    assert ingest.settle_stale(data, manifest, settings, set)["status"] == "processing"
    # What a worker killed midway leaves: half its arrays, and no sign of life since.
    (data.dataset(dataset_id) / datasets.STAGING).mkdir()
    (data.dataset(dataset_id) / datasets.STAGING / "a0.npy").write_bytes(b"half")
    old = time.time() - 120
    os.utime(data.dataset(dataset_id) / datasets.MANIFEST, (old, old))
    # Still waiting in its queue: a busy task worker, not a lost one.
    waiting = ingest.settle_stale(data, manifest, settings, lambda: {dataset_id})
    assert waiting["status"] == "processing"
    settled = ingest.settle_stale(data, manifest, settings, set)
    assert settled["status"] == "failed"
    assert settled["error"]["code"] == "worker_lost"
    assert datasets.load_manifest(data, dataset_id)["status"] == "failed"
    assert [p.name for p in data.dataset(dataset_id).iterdir()] == ["manifest.json"]
    # Its task, delivered late, leaves it failed.
    assert ingest.run_ingest(data, dataset_id, Settings()) == "failed"


def test_a_deleted_processing_dataset_stays_deleted(data: DataDir, tmp_path: Path) -> None:
    dataset_id = begin_archive(data, tmp_path, class_images(CLASSES))
    datasets.delete_dataset(data, dataset_id)
    assert ingest.run_ingest(data, dataset_id, Settings()) == "deleted"
    assert not data.dataset(dataset_id).exists()


def import_settings(imports: Path) -> Settings:
    return Settings(import_dir=str(imports))


def test_an_imported_npy_is_hard_linked_then_hashed(
    data: DataDir, imports: Path, tmp_path: Path
) -> None:
    array = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.save(imports / "big.npy", array)
    settings = import_settings(imports)
    dataset_id = new_id()
    manifest = ingest.begin_import(
        data, dataset_id, "big.npy", settings=settings, owner=None, options=OPTIONS
    )
    assert manifest["status"] == "processing"
    assert ingest.run_ingest(data, dataset_id, settings) == "ready"
    manifest = datasets.load_manifest(data, dataset_id)
    stored = data.dataset(dataset_id) / "a0.npy"
    assert stored.stat().st_ino == (imports / "big.npy").stat().st_ino
    assert manifest["arrays"]["x"]["sha256"] == sha256_file(imports / "big.npy")
    assert np.array_equal(datasets.open_array(data, dataset_id, "x", verify=True), array)


def test_an_imported_folder_of_class_folders(data: DataDir, imports: Path) -> None:
    for name, content in class_images(CLASSES).items():
        (imports / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (imports / "photos" / name).write_bytes(content)
    (imports / "photos" / "a" / "escape.png").symlink_to("/etc/hostname")
    settings = import_settings(imports)
    dataset_id = new_id()
    ingest.begin_import(
        data,
        dataset_id,
        "photos",
        settings=settings,
        owner=None,
        options={**OPTIONS, "on_bad_image": "skip"},
    )
    assert ingest.run_ingest(data, dataset_id, settings) == "ready"
    manifest = datasets.load_manifest(data, dataset_id)
    assert manifest["rows"] == 5
    assert manifest["skipped"]["members"] == [
        {"member": "a/escape.png", "message": "A symlink member is never an image."}
    ]


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("../secret.npy", InvalidRequest),
        ("sub/../../secret.npy", InvalidRequest),
        ("/etc/passwd", InvalidRequest),
        ("", InvalidRequest),
        ("outside", InvalidRequest),
        ("missing.npy", NotFound),
    ],
)
def test_imports_stay_inside_the_import_folder(
    imports: Path, tmp_path: Path, path: str, error: type
) -> None:
    (tmp_path / "secret.npy").write_bytes(b"x")
    (imports / "sub").mkdir()
    # A link inside the folder that points out of it.
    (imports / "outside").symlink_to(tmp_path)
    with pytest.raises(error):
        ingest.resolve_import(import_settings(imports), path)


def test_a_link_that_stays_inside_is_followed(imports: Path) -> None:
    (imports / "real.png").write_bytes(png())
    (imports / "alias.png").symlink_to(imports / "real.png")
    found = ingest.resolve_import(import_settings(imports), "alias.png")
    assert found == (imports / "real.png").resolve()


def test_imports_are_off_without_an_import_folder() -> None:
    with pytest.raises(Forbidden, match="FITSERVE_IMPORT_DIR"):
        ingest.resolve_import(Settings(), "anything.npy")


def test_an_ingest_whose_workers_keep_dying_fails_after_the_attempts(
    data: DataDir, tmp_path: Path
) -> None:
    dataset_id = begin_archive(data, tmp_path, class_images(CLASSES))
    settings = Settings(max_attempts=2)
    manifest_path = data.dataset(dataset_id) / datasets.MANIFEST
    # Two deliveries already started (each counts itself) and their workers died mid-read.
    manifest = datasets.load_manifest(data, dataset_id)
    manifest_path.write_bytes(orjson.dumps({**manifest, "attempt": 2}))
    assert ingest.run_ingest(data, dataset_id, settings) == "failed"
    error = datasets.load_manifest(data, dataset_id)["error"]
    assert error["code"] == "worker_lost"
    assert "after 2 attempts" in error["message"]
