"""`POST /v1/datasets` with an image archive or an import: 202 `processing`, the ingest task
enqueued on `datasets`; jobs wait for `ready`; imports are for admin keys, inside the folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import redis

from core.ingest import run_ingest
from core.keys import hash_key
from core.queues import DATASETS_QUEUE
from core.reconciler import waiting_task_ids
from core.settings import Settings
from core.storage import DataDir
from service import create_app
from tests.support.images import class_images, write_archive
from tests.support.stack import tiny_request

ADMIN, USER = "admin-key", "user-key"


def archive_bytes(tmp_path: Path, archive_format: str = "tar.gz") -> bytes:
    return write_archive(
        tmp_path / "a", class_images({"a": 2, "b": 2}), archive_format
    ).read_bytes()


def post_archive(client, content: bytes, **form: str):
    data = {"file": (io.BytesIO(content), "images.tgz"), **form}
    return client.post("/v1/datasets", data=data, content_type="multipart/form-data")


def waiting(settings: Settings) -> set[str]:
    return waiting_task_ids(redis.Redis.from_url(settings.redis_url), [DATASETS_QUEUE])


def test_an_archive_is_accepted_processing_and_its_ingest_enqueued(client, settings, tmp_path):
    response = post_archive(client, archive_bytes(tmp_path), image_size="8,8", color_mode="rgba")
    assert response.status_code == 202, response.get_data(as_text=True)
    manifest = response.get_json()
    assert manifest["status"] == "processing"
    assert manifest["source"]["format"] == "tar.gz"
    assert manifest["options"]["image_size"] == [8, 8]
    assert manifest["options"]["color_mode"] == "rgba"
    assert response.headers["Location"] == f"/v1/datasets/{manifest['id']}"
    assert waiting(settings) == {manifest["id"]}
    shown = client.get(f"/v1/datasets/{manifest['id']}").get_json()
    assert shown["status"] == "processing"


def test_a_job_on_a_dataset_not_ready_is_refused_at_data_dataset(client, tmp_path):
    dataset_id = post_archive(client, archive_bytes(tmp_path)).get_json()["id"]
    response = client.post("/v1/jobs", json=tiny_request(dataset_id, epochs=1))
    assert response.status_code == 422, response.get_data(as_text=True)
    (error,) = response.get_json()["errors"]
    assert error["path"] == "/data/dataset"
    assert "still processing" in error["message"]
    assert f"GET /v1/datasets/{dataset_id}" in error["message"]


def test_bad_image_options_are_refused_by_pointer(client, settings, tmp_path):
    response = post_archive(
        client, archive_bytes(tmp_path, "zip"), image_size="8", color_mode="cmyk"
    )
    assert response.status_code == 422
    paths = [error["path"] for error in response.get_json()["errors"]]
    assert paths == ["/image_size", "/color_mode"]
    assert waiting(settings) == set()
    assert list((settings.data_dir / "datasets").iterdir()) == []


def test_a_plain_upload_is_still_ready_at_once(client):
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((3, 2)), y=np.arange(3))
    response = client.post(
        "/v1/datasets",
        data={"file": (io.BytesIO(buffer.getvalue()), "d.npz")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 201
    assert response.get_json()["status"] == "ready"


def keyed(settings: Settings, imports: Path | None):
    keys = f"root:{hash_key(ADMIN)}:admin,ann:{hash_key(USER)}"
    changes = {"api_keys": keys, "import_dir": str(imports) if imports else ""}
    return create_app(settings.with_overrides(**changes)).test_client()


def post_import(client, key: str, **document: object):
    return client.post("/v1/datasets", json=document, headers={"Authorization": f"Bearer {key}"})


def test_an_admin_imports_a_file_inside_the_import_folder(settings, tmp_path):
    imports = tmp_path / "imports"
    imports.mkdir()
    np.save(imports / "x.npy", np.zeros((4, 2), dtype=np.float32))
    client = keyed(settings, imports)
    response = post_import(client, ADMIN, **{"import": "x.npy", "name": "features"})
    assert response.status_code == 202, response.get_data(as_text=True)
    manifest = response.get_json()
    assert manifest["status"] == "processing"
    assert manifest["source"]["import"] == "x.npy"
    assert manifest["options"]["name"] == "features"
    assert waiting(settings) == {manifest["id"]}


def test_a_key_that_is_not_admin_may_not_import(settings, tmp_path):
    client = keyed(settings, tmp_path)
    response = post_import(client, USER, **{"import": "x.npy"})
    assert response.status_code == 403
    assert waiting(settings) == set()


def test_imports_are_off_without_an_import_folder(settings):
    response = post_import(keyed(settings, None), ADMIN, **{"import": "x.npy"})
    assert response.status_code == 403
    assert "FITSERVE_IMPORT_DIR" in response.get_json()["detail"]


def test_an_import_path_that_climbs_out_is_refused(settings, tmp_path):
    imports = tmp_path / "imports"
    imports.mkdir()
    client = keyed(settings, imports)
    response = post_import(client, ADMIN, **{"import": "../x.npy"})
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["path"] == "/import"
    unknown = post_import(client, ADMIN, **{"import": "x.npy", "lable": "y"})
    assert unknown.status_code == 422
    assert unknown.get_json()["errors"][0]["path"] == "/lable"
    assert list((settings.data_dir / "datasets").iterdir()) == []


def test_a_failed_dataset_shows_its_error_and_refuses_jobs(client, settings, tmp_path):
    files = {**class_images({"a": 2, "b": 2}), "b/notes.png": b"not an image"}
    content = write_archive(tmp_path / "bad.zip", files, "zip").read_bytes()
    dataset_id = post_archive(client, content).get_json()["id"]
    # What the CPU task worker runs for the message just enqueued.
    assert run_ingest(DataDir(settings.data_dir), dataset_id, settings) == "failed"
    shown = client.get(f"/v1/datasets/{dataset_id}").get_json()
    assert shown["status"] == "failed"
    assert shown["error"]["member"] == "b/notes.png"
    response = client.post("/v1/jobs", json=tiny_request(dataset_id, epochs=1))
    assert response.status_code == 422
    (error,) = response.get_json()["errors"]
    assert error["path"] == "/data/dataset"
    assert "failed" in error["message"]
    assert "b/notes.png" in error["message"]
