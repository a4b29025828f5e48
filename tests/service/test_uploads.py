"""`/v1/uploads` (tus 1.0) over the real app: every header and status of core, creation,
expiration, termination and checksum; ownership, quota, expiry; and the dataset it becomes."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time

import numpy as np
import pytest

from core.ingest import run_ingest
from core.keys import hash_key
from core.settings import Settings
from core.storage import DataDir
from service import create_app
from tests.service.test_datasets import npy_bytes, npz_bytes

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def create(client, length: int, headers=None, metadata: str | None = None) -> str:
    """A new upload's id."""
    extra = {"Upload-Metadata": metadata} if metadata is not None else {}
    response = client.post(
        "/v1/uploads", headers={**TUS, "Upload-Length": str(length), **extra, **(headers or {})}
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith("/v1/uploads/")
    return location.rsplit("/", 1)[1]


def patch(client, upload_id: str, offset: int, body: bytes, headers=None):
    return client.patch(
        f"/v1/uploads/{upload_id}",
        data=body,
        headers={**PATCH, "Upload-Offset": str(offset), **(headers or {})},
    )


def head(client, upload_id: str, headers=None):
    return client.head(f"/v1/uploads/{upload_id}", headers={**TUS, **(headers or {})})


def problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    body = response.get_json()
    assert body["code"] == code, body
    return body


def upload_bytes(client, content: bytes, chunk: int = 7, headers=None, metadata=None) -> str:
    upload_id = create(client, len(content), headers, metadata)
    for start in range(0, len(content), chunk):
        response = patch(client, upload_id, start, content[start : start + chunk], headers)
        assert response.status_code == 204, response.get_data(as_text=True)
    return upload_id


def test_options_describes_the_server(client, settings: Settings):
    response = client.options("/v1/uploads")
    assert response.status_code == 204
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.headers["Tus-Version"] == "1.0.0"
    extensions = set(response.headers["Tus-Extension"].split(","))
    assert {"creation", "termination", "checksum", "expiration"} <= extensions
    assert response.headers["Tus-Max-Size"] == str(settings.max_dataset_bytes)
    assert set(response.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256", "md5"}


def test_create_then_head_then_patch_in_chunks(client):
    metadata = f"filename {b64('train.npy')},filetype {b64('application/octet-stream')},empty"
    upload_id = create(client, 20, metadata=metadata)
    first = head(client, upload_id)
    assert first.status_code == 200
    assert first.headers["Upload-Offset"] == "0"
    assert first.headers["Upload-Length"] == "20"
    assert first.headers["Cache-Control"] == "no-store"
    assert first.headers["Tus-Resumable"] == "1.0.0"
    assert "Upload-Expires" in first.headers
    echoed = {pair.partition(" ")[0]: pair for pair in first.headers["Upload-Metadata"].split(",")}
    assert echoed["empty"] == "empty"
    assert base64.b64decode(echoed["filename"].removeprefix("filename ")) == b"train.npy"
    response = patch(client, upload_id, 0, b"0123456789")
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "10"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert "GMT" in response.headers["Upload-Expires"]
    assert patch(client, upload_id, 10, b"abcdefghij").headers["Upload-Offset"] == "20"
    assert head(client, upload_id).headers["Upload-Offset"] == "20"


def test_the_offset_is_the_bytes_on_disk(client, settings: Settings):
    upload_id = create(client, 8)
    patch(client, upload_id, 0, b"abc")
    assert (settings.data_dir / "uploads" / upload_id / "data").read_bytes() == b"abc"


def test_a_wrong_offset_is_a_conflict_and_changes_nothing(client):
    upload_id = create(client, 10)
    patch(client, upload_id, 0, b"abcd")
    for wrong in (0, 2, 6):
        body = problem(patch(client, upload_id, wrong, b"xy"), 409, "conflict")
        assert "resume from 4" in body["detail"]
    assert head(client, upload_id).headers["Upload-Offset"] == "4"


def test_every_request_but_options_needs_tus_1_0_0(client):
    upload_id = create(client, 4)
    for version in (None, "0.2.2", "2.0.0"):
        headers = {} if version is None else {"Tus-Resumable": version}
        for method, path in (
            ("POST", "/v1/uploads"),
            ("HEAD", f"/v1/uploads/{upload_id}"),
            ("PATCH", f"/v1/uploads/{upload_id}"),
            ("DELETE", f"/v1/uploads/{upload_id}"),
        ):
            response = client.open(path, method=method, headers=headers)
            assert response.status_code == 412, (method, version)
            assert response.headers["Tus-Version"] == "1.0.0"
            assert response.headers["Tus-Resumable"] == "1.0.0"
            if method != "HEAD":
                assert response.get_json()["code"] == "unsupported_tus_version"
    assert head(client, upload_id).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Upload-Length": "-1"}, {"Upload-Length": "1e3"}, {"Upload-Length": "٣"}],
)
def test_creation_needs_a_plain_upload_length(client, headers):
    body = problem(client.post("/v1/uploads", headers={**TUS, **headers}), 400, "malformed_request")
    assert body["errors"][0]["path"] == "/headers/Upload-Length"


@pytest.mark.parametrize(
    "metadata",
    [
        "filename not-base64!",
        "bad key " + b64("x"),
        f"a {b64('1')},a {b64('2')}",
        "x " + b64(bytes([255])),
    ],
)
def test_malformed_metadata_is_refused(client, metadata):
    response = client.post(
        "/v1/uploads", headers={**TUS, "Upload-Length": "3", "Upload-Metadata": metadata}
    )
    assert problem(response, 400, "malformed_request")["errors"][0]["path"] == (
        "/headers/Upload-Metadata"
    )


def test_an_upload_longer_than_a_dataset_may_be_is_refused(settings: Settings):
    client = create_app(settings.with_overrides(max_dataset_bytes=100)).test_client()
    response = client.post("/v1/uploads", headers={**TUS, "Upload-Length": "101"})
    body = problem(response, 413, "payload_too_large")
    assert "FITSERVE_MAX_DATASET_BYTES" in body["detail"]
    assert list((settings.data_dir / "uploads").iterdir()) == []


def test_the_storage_quota_counts_unfinished_uploads(settings: Settings):
    client = create_app(settings.with_overrides(storage_quota_bytes=100)).test_client()
    create(client, 60)
    body = problem(
        client.post("/v1/uploads", headers={**TUS, "Upload-Length": "41"}),
        507,
        "insufficient_storage",
    )
    assert "FITSERVE_STORAGE_QUOTA_BYTES" in body["detail"]
    create(client, 40)


def test_patch_needs_its_media_type_and_an_offset(client):
    upload_id = create(client, 4)
    response = client.patch(
        f"/v1/uploads/{upload_id}",
        data=b"ab",
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/octet-stream"},
    )
    problem(response, 415, "unsupported_media_type")
    response = client.patch(f"/v1/uploads/{upload_id}", data=b"ab", headers=PATCH)
    assert problem(response, 400, "malformed_request")["errors"][0]["path"] == (
        "/headers/Upload-Offset"
    )
    assert head(client, upload_id).headers["Upload-Offset"] == "0"


def test_a_chunk_past_the_length_is_refused_whole(client):
    upload_id = create(client, 4)
    problem(patch(client, upload_id, 0, b"abcdef"), 413, "payload_too_large")
    assert head(client, upload_id).headers["Upload-Offset"] == "0"


def test_a_chunked_body_past_the_length_is_taken_back(client):
    upload_id = create(client, 4)
    response = client.patch(
        f"/v1/uploads/{upload_id}",
        input_stream=io.BytesIO(b"abcdef"),
        headers={**PATCH, "Upload-Offset": "0", "Transfer-Encoding": "chunked"},
        # As gunicorn says of a chunked body: the stream ends where the body does.
        environ_overrides={"wsgi.input_terminated": True},
    )
    problem(response, 413, "payload_too_large")
    assert head(client, upload_id).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
def test_a_checksummed_chunk_is_appended_when_it_matches(client, algorithm):
    upload_id = create(client, 6)
    digest = b64(hashlib.new(algorithm, b"abc").digest())
    response = patch(client, upload_id, 0, b"abc", {"Upload-Checksum": f"{algorithm} {digest}"})
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "3"


def test_a_mismatched_chunk_is_a_460_and_discarded(client, settings: Settings):
    upload_id = create(client, 6)
    patch(client, upload_id, 0, b"ab")
    digest = b64(hashlib.sha1(b"something else", usedforsecurity=False).digest())
    response = patch(client, upload_id, 2, b"cde", {"Upload-Checksum": f"sha1 {digest}"})
    body = problem(response, 460, "checksum_mismatch")
    assert "discarded" in body["detail"]
    assert head(client, upload_id).headers["Upload-Offset"] == "2"
    assert sorted(p.name for p in (settings.data_dir / "uploads" / upload_id).iterdir()) == [
        "data",
        "info.json",
    ]


@pytest.mark.parametrize("value", ["crc32 AAAA", "sha1", "sha1 !!!", "sha1 "])
def test_a_malformed_or_unknown_checksum_is_a_400(client, value):
    upload_id = create(client, 4)
    response = patch(client, upload_id, 0, b"ab", {"Upload-Checksum": value})
    assert problem(response, 400, "malformed_request")["errors"][0]["path"] == (
        "/headers/Upload-Checksum"
    )
    assert head(client, upload_id).headers["Upload-Offset"] == "0"


class CutStream(io.BytesIO):
    """A body whose connection is reset after the bytes it holds."""

    def read(self, size: int | None = -1) -> bytes:
        block = super().read(size)
        if not block:
            raise ConnectionResetError("connection reset by peer")
        return block


def test_a_cut_request_keeps_what_arrived_and_resumes(client):
    upload_id = create(client, 10)
    response = client.patch(
        f"/v1/uploads/{upload_id}",
        input_stream=CutStream(b"01234"),
        headers={**PATCH, "Upload-Offset": "0"},
        environ_overrides={"CONTENT_LENGTH": "8"},
    )
    problem(response, 400, "malformed_request")
    offset = int(head(client, upload_id).headers["Upload-Offset"])
    assert offset == 5
    assert patch(client, upload_id, offset, b"56789").headers["Upload-Offset"] == "10"


def test_a_cut_checksummed_chunk_leaves_nothing(client):
    upload_id = create(client, 10)
    digest = b64(hashlib.sha1(b"01234567", usedforsecurity=False).digest())
    response = client.patch(
        f"/v1/uploads/{upload_id}",
        input_stream=CutStream(b"01234"),
        headers={**PATCH, "Upload-Offset": "0", "Upload-Checksum": f"sha1 {digest}"},
        environ_overrides={"CONTENT_LENGTH": "8"},
    )
    problem(response, 400, "malformed_request")
    assert head(client, upload_id).headers["Upload-Offset"] == "0"


def test_a_second_writer_is_a_conflict(client, settings: Settings):
    import fcntl

    upload_id = create(client, 4)
    with open(settings.data_dir / "uploads" / upload_id / "data", "ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        body = problem(patch(client, upload_id, 0, b"ab"), 409, "conflict")
    assert "Another request" in body["detail"]
    assert patch(client, upload_id, 0, b"ab").status_code == 204


def test_delete_terminates(client, settings: Settings):
    upload_id = create(client, 4)
    patch(client, upload_id, 0, b"ab")
    response = client.delete(f"/v1/uploads/{upload_id}", headers=TUS)
    assert response.status_code == 204
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert head(client, upload_id).status_code == 404
    problem(patch(client, upload_id, 2, b"cd"), 404, "not_found")
    problem(client.delete(f"/v1/uploads/{upload_id}", headers=TUS), 404, "not_found")
    assert list((settings.data_dir / "uploads").iterdir()) == []


@pytest.mark.parametrize("bad", ["../../etc", "A" * 32, "0" * 31])
def test_ids_that_are_not_server_ids_are_unknown(client, bad):
    problem(client.delete(f"/v1/uploads/{bad}", headers=TUS), 404, "not_found")


def test_an_upload_expires_after_its_last_write(settings: Settings):
    data = DataDir(settings.data_dir)
    client = create_app(settings.with_overrides(upload_expiry_seconds=60)).test_client()
    stale, fresh = create(client, 4), create(client, 4)
    past = time.time() - 120
    for name in ("info.json", "data"):
        os.utime(data.resumable_uploads / stale / name, (past, past))
    assert head(client, stale).status_code == 404
    assert not (data.resumable_uploads / stale).exists()
    # A write keeps an upload alive: its expiry counts from the last write.
    os.utime(data.resumable_uploads / fresh / "info.json", (past, past))
    assert patch(client, fresh, 0, b"ab").status_code == 204
    assert head(client, fresh).status_code == 200


def test_creation_sweeps_expired_uploads(settings: Settings):
    data = DataDir(settings.data_dir)
    client = create_app(settings.with_overrides(upload_expiry_seconds=60)).test_client()
    stale = create(client, 4)
    past = time.time() - 120
    for name in ("info.json", "data"):
        os.utime(data.resumable_uploads / stale / name, (past, past))
    create(client, 4)
    assert not (data.resumable_uploads / stale).exists()


KEYS = {"ann": "fs_ann", "bob": "fs_bob"}


def as_(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture
def keyed(settings: Settings):
    entries = ",".join(f"{name}:{hash_key(key)}" for name, key in KEYS.items())
    return create_app(settings.with_overrides(api_keys=entries)).test_client()


def test_another_keys_upload_is_unknown(keyed):
    upload_id = create(keyed, 4, as_("ann"))
    assert head(keyed, upload_id, as_("bob")).status_code == 404
    problem(patch(keyed, upload_id, 0, b"ab", as_("bob")), 404, "not_found")
    problem(
        keyed.delete(f"/v1/uploads/{upload_id}", headers={**TUS, **as_("bob")}), 404, "not_found"
    )
    response = keyed.post("/v1/datasets", json={"upload": upload_id}, headers=as_("bob"))
    assert problem_plain(response, 404)["code"] == "not_found"
    assert head(keyed, upload_id, as_("ann")).headers["Upload-Offset"] == "0"
    problem(keyed.post("/v1/uploads", headers={**TUS, "Upload-Length": "4"}), 401, "unauthorized")


# -- the dataset a finished upload becomes ----------------------------------------------


def ingest_upload(client, settings: Settings, document: dict) -> dict:
    """POST the upload as a dataset: 202 `processing`, the upload gone; then the ingest task's
    work, and the dataset's manifest."""
    response = client.post("/v1/datasets", json=document)
    assert response.status_code == 202, response.get_json()
    manifest = response.get_json()
    assert manifest["status"] == "processing"
    assert manifest["source"]["upload"] == document["upload"]
    assert head(client, document["upload"]).status_code == 404
    run_ingest(DataDir(settings.data_dir), manifest["id"], settings)
    return client.get(f"/v1/datasets/{manifest['id']}").get_json()


def test_a_finished_npz_upload_becomes_a_dataset(client, settings: Settings):
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    y = np.array([0, 1, 0, 1, 1, 0], dtype=np.int64)
    content = npz_bytes(x=x, y=y)
    upload_id = upload_bytes(client, content, chunk=100, metadata=f"filename {b64('b.npz')}")
    manifest = ingest_upload(client, settings, {"upload": upload_id})
    assert manifest["status"] == "ready"
    assert manifest["rows"] == 6
    assert set(manifest["arrays"]) == {"x", "y"}
    assert manifest["source"]["filename"] == "b.npz"
    assert manifest["source"]["bytes"] == len(content)
    # Nothing of the upload is left, in its folder or the temp folder.
    assert list((settings.data_dir / "uploads").iterdir()) == []
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_npy_and_csv_uploads_take_the_forms_options(client, settings: Settings):
    npy_id = upload_bytes(client, npy_bytes(np.ones((3, 2), np.float32)), chunk=50)
    manifest = ingest_upload(client, settings, {"upload": npy_id, "name": "features"})
    assert set(manifest["arrays"]) == {"features"}
    csv_id = upload_bytes(client, b"a,b,species\n1,2,cat\n3,4,dog\n", chunk=9)
    manifest = ingest_upload(client, settings, {"upload": csv_id, "label": "species"})
    assert manifest["classes"] == {"y": ["cat", "dog"]}


def test_an_unfinished_upload_is_a_conflict_at_upload(client, settings: Settings):
    upload_id = create(client, 10)
    patch(client, upload_id, 0, b"abc")
    body = problem_plain(client.post("/v1/datasets", json={"upload": upload_id}), 409)
    assert "3 of its 10 bytes" in body["detail"]
    assert body["errors"][0]["path"] == "/upload"
    assert head(client, upload_id).headers["Upload-Offset"] == "3"
    assert list((settings.data_dir / "datasets").iterdir()) == []


def test_a_file_that_cannot_be_read_fails_its_dataset_with_the_reason(client, settings: Settings):
    upload_id = upload_bytes(client, b"a,b\n1,2\n")
    manifest = ingest_upload(client, settings, {"upload": upload_id})
    assert manifest["status"] == "failed"
    assert "label" in manifest["error"]["message"]


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"upload": 5}, "/upload"),
        ({"upload": "0" * 32, "label": ["x"]}, "/label"),
        ({"upload": "0" * 32, "colour": "red"}, "/colour"),
    ],
)
def test_bad_options_name_their_place(client, document, path):
    response = client.post("/v1/datasets", json=document)
    assert response.status_code == 422
    assert [e["path"] for e in response.get_json()["errors"]] == [path]


def test_an_unknown_upload_is_not_found(client):
    assert client.post("/v1/datasets", json={"upload": "0" * 32}).status_code == 404


def problem_plain(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    return response.get_json()


# -- the one-request cap names itself ----------------------------------------------------


def test_a_plain_upload_over_the_cap_names_the_limit_and_the_way_out(settings: Settings):
    client = create_app(settings.with_overrides(max_upload_bytes=1 << 20)).test_client()
    body = b"x" * ((2 << 20) + 300_000)
    response = client.post(
        "/v1/datasets", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    detail = problem_plain(response, 413)["detail"]
    assert detail.startswith("The upload is 2.4 MB; this server takes at most 1 MiB in one request")
    assert "FITSERVE_MAX_UPLOAD_BYTES" in detail
    assert "POST /v1/uploads" in detail
