"""`/v1/datasets` over the real app: each format, the refusals, ownership, idempotency, memory."""

from __future__ import annotations

import gc
import io
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis

from core.idempotency import IdempotencyKeys
from core.keys import hash_key
from core.settings import Settings
from core.storage import sha256_file
from service import create_app


def npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npz_bytes(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def upload(client, content: bytes, filename: str = "data.bin", headers=None, **form):
    data = {"file": (io.BytesIO(content), filename), **form}
    return client.post(
        "/v1/datasets", data=data, content_type="multipart/form-data", headers=headers or {}
    )


def single_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == code
    assert len(body.get("errors", [])) == 1, body
    return body["errors"][0]


def stored_folders(settings: Settings) -> list[Path]:
    return sorted((settings.data_dir / "datasets").iterdir())


def assert_nothing_stored(settings: Settings) -> None:
    assert stored_folders(settings) == []
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_npy_upload_is_stored_with_manifest_and_statistics(client, settings):
    array = np.array([[0.5, 1.0], [2.0, np.nan], [np.inf, -3.0]], dtype=np.float32)
    content = npy_bytes(array)
    response = upload(client, content, "train.npy", name="features")
    assert response.status_code == 201
    manifest = response.get_json()
    assert response.headers["Location"] == f"/v1/datasets/{manifest['id']}"
    assert manifest["source"]["format"] == "npy"
    assert manifest["source"]["filename"] == "train.npy"
    assert manifest["source"]["bytes"] == len(content)
    assert manifest["rows"] == 3
    entry = manifest["arrays"]["features"]
    assert entry["file"] == "a0.npy"
    assert entry["shape"] == [3, 2]
    assert entry["dtype"] == "float32"
    assert entry["stats"] == {
        "min": -3.0,
        "max": 2.0,
        "integer_valued": False,
        "nan": 1,
        "inf": 1,
        "labels": [-3.0, 0.5, 1.0, 2.0],
    }
    folder = settings.data_dir / "datasets" / manifest["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["a0.npy", "manifest.json"]
    assert entry["sha256"] == sha256_file(folder / "a0.npy")
    np.testing.assert_array_equal(np.load(folder / "a0.npy"), array)
    assert client.get(f"/v1/datasets/{manifest['id']}").get_json() == manifest
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_npz_upload_keeps_each_member(client):
    x = np.arange(20, dtype=np.float64).reshape(10, 2) / 4
    y = np.arange(10, dtype=np.uint8) % 3
    response = upload(client, npz_bytes(compressed=True, x=x, y=y), "set.npz")
    assert response.status_code == 201
    manifest = response.get_json()
    assert manifest["source"]["format"] == "npz"
    assert manifest["rows"] == 10
    assert [(a["file"], a["shape"], a["dtype"]) for a in manifest["arrays"].values()] == [
        ("a0.npy", [10, 2], "float64"),
        ("a1.npy", [10], "uint8"),
    ]
    assert manifest["arrays"]["y"]["stats"] == {
        "min": 0,
        "max": 2,
        "integer_valued": True,
        "nan": 0,
        "inf": 0,
        "labels": [0, 1, 2],
    }
    assert manifest["arrays"]["x"]["stats"]["integer_valued"] is False
    assert manifest["arrays"]["x"]["stats"]["max"] == 4.75


def test_csv_upload_turns_string_labels_into_class_ids(client, settings):
    text = (
        "sepal_length,petal_width,species\n5.1,0.2,setosa\n7.0,1.4,versicolor\n"
        "6.3,2.5,virginica\n4.9,0.2,setosa\n"
    )
    response = upload(client, text.encode(), "iris.csv", label="species")
    assert response.status_code == 201
    manifest = response.get_json()
    assert manifest["source"]["format"] == "csv"
    assert manifest["classes"] == {"y": ["setosa", "versicolor", "virginica"]}
    assert manifest["arrays"]["x"]["shape"] == [4, 2]
    assert manifest["arrays"]["x"]["dtype"] == "float32"
    assert manifest["arrays"]["y"]["dtype"] == "int64"
    assert manifest["arrays"]["y"]["stats"]["labels"] == [0, 1, 2]
    folder = settings.data_dir / "datasets" / manifest["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["a0.npy", "a1.npy", "manifest.json"]
    np.testing.assert_array_equal(np.load(folder / "a1.npy"), [0, 1, 2, 0])
    np.testing.assert_allclose(np.load(folder / "a0.npy")[1], [7.0, 1.4])


def test_json_upload_stores_arrays(client, settings):
    response = client.post("/v1/datasets", json={"arrays": {"x": [[1.5, 2], [3, 4]], "y": [1, 0]}})
    assert response.status_code == 201
    manifest = response.get_json()
    assert manifest["source"]["format"] == "json"
    assert manifest["arrays"]["x"]["dtype"] == "float32"
    assert manifest["arrays"]["y"]["dtype"] == "int64"
    assert manifest["arrays"]["y"]["stats"]["labels"] == [0, 1]
    folder = settings.data_dir / "datasets" / manifest["id"]
    np.testing.assert_array_equal(np.load(folder / "a0.npy"), [[1.5, 2], [3, 4]])


def test_pickled_npy_is_refused(client, settings):
    content = npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    error = single_error(upload(client, content, "evil.npy"), 422, "invalid_data")
    assert error["path"] == "/file"
    assert error["received"] == "object"
    assert "pickled" in error["message"]
    assert_nothing_stored(settings)


def zip_declaring(declared: int) -> bytes:
    """A small valid .npz whose central directory declares `declared` uncompressed bytes."""
    content = bytearray(npz_bytes(compressed=True, x=np.zeros(1000, dtype=np.float32)))
    central = content.rindex(b"PK\x01\x02")
    content[central + 24 : central + 28] = declared.to_bytes(4, "little")
    return bytes(content)


def test_zip_bomb_npz_is_refused_before_decompressing(settings):
    client = create_app(settings.with_overrides(max_dataset_bytes=1 << 30)).test_client()
    content = zip_declaring(4_000_000_000)
    assert len(content) < 1000
    size = single_error(upload(client, content, "bomb.npz"), 422, "invalid_data")
    assert (size["path"], size["received"]) == ("/file/arrays/x", 4_000_000_000)
    assert size["expected"] == f"at most {1 << 30} bytes"
    # The refusal says which limit and how to get past it.
    assert "FITSERVE_MAX_DATASET_BYTES" in size["message"]
    assert "split the arrays into several datasets" in size["message"]
    assert_nothing_stored(settings)


def test_member_declaring_other_sizes_than_its_header_is_refused(client, settings):
    """The central directory's size and the member's .npy header must agree before a byte of
    data is decompressed; the copy then reads no more than declared."""
    content = zip_declaring(128 + 4000 - 1)
    error = single_error(upload(client, content, "liar.npz"), 422, "invalid_data")
    assert (error["path"], error["expected"], error["received"]) == (
        "/file/arrays/x",
        "4000 data bytes",
        3999,
    )
    assert_nothing_stored(settings)


@pytest.mark.parametrize(
    "labels",
    [np.sort(np.arange(60_000) % 10), np.zeros(4 << 20, dtype=np.uint8)],
    ids=["sorted labels", "zeros"],
)
def test_highly_compressed_npz_within_the_caps_is_stored(client, labels):
    """Deflate shrinks sorted or constant arrays a thousandfold; declared sizes within the caps
    are what counts, not the ratio."""
    response = upload(client, npz_bytes(compressed=True, y=labels), "labels.npz")
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["arrays"]["y"]["shape"] == [len(labels)]


@pytest.mark.parametrize(
    ("descr", "received"), [("<f16", "float128"), (">f4", ">f4"), ("<c8", "complex64")]
)
def test_npz_member_of_an_unaccepted_dtype_is_named(client, settings, descr, received):
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": (2,)}
    np.lib.format.write_array_header_1_0(buffer, header)
    itemsize = np.lib.format.descr_to_dtype(descr).itemsize
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("x.npy", npy_bytes(np.zeros(2, dtype=np.float32)))
        out.writestr("weird.npy", buffer.getvalue() + bytes(2 * itemsize))
    error = single_error(upload(client, archive.getvalue(), "w.npz"), 422, "invalid_data")
    assert (error["path"], error["received"]) == ("/file/arrays/weird", received)
    assert "/file/arrays/weird" in error["message"]
    assert received in error["message"]
    assert_nothing_stored(settings)


def test_wide_csv_header_is_refused_at_once(client, settings):
    """450 KB of repeated header names once took minutes of CPU (a quadratic repeat check).
    (Below 500 KB, the test client keeps the body in memory rather than in a temporary file.)"""
    names = [chr(97 + i % 26) + chr(97 + i // 26 % 26) for i in range(150_000)]
    content = (",".join(names) + ",label\n1\n").encode()
    started = time.process_time()
    error = single_error(upload(client, content, "wide.csv"), 422, "invalid_data")
    assert time.process_time() - started < 1
    assert (error["path"], error["received"]) == ("/file", 150_001)
    assert error["expected"] == "at most 32768 columns"
    assert_nothing_stored(settings)


def test_upload_past_its_cpu_budget_is_413(settings):
    client = create_app(settings.with_overrides(upload_cpu_seconds=0)).test_client()
    response = upload(client, b"a,label\n" + b"1,2\n" * 1000, "slow.csv")
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == "upload_too_costly"
    assert "CPU" in body["detail"]
    assert_nothing_stored(settings)


def test_json_labels_are_class_ids_and_never_fixed_width_text(client):
    """As fixed-width text, 100,001 labels beside one of 100,000 characters would take 40 GB;
    labels are class ids, and the long one is refused where it is."""
    labels = ["x" * 256] + ["a", "b"] * 50_000
    response = client.post("/v1/datasets", json={"arrays": {"y": labels}})
    assert response.status_code == 201, response.get_json()
    manifest = response.get_json()
    assert manifest["classes"] == {"y": ["a", "b", "x" * 256]}
    assert manifest["arrays"]["y"]["dtype"] == "int64"
    started = time.process_time()
    labels[50_000] = "x" * 100_000
    response = client.post("/v1/datasets", json={"arrays": {"y": labels}})
    error = single_error(response, 422, "invalid_data")
    assert (error["path"], error["received"]) == ("/arrays/y/50000", "x" * 100)
    assert error["expected"] == "a label of 1 to 256 characters"
    assert time.process_time() - started < 1


def test_ragged_csv_row_is_named(client, settings):
    text = "a,b,label\n1,2,0\n3,4\n5,6,1\n"
    error = single_error(upload(client, text.encode(), "r.csv"), 422, "invalid_data")
    assert error["path"] == "/file/rows/3"
    assert error["expected"] == "3 cells"
    assert error["received"] == 2
    assert_nothing_stored(settings)


def test_non_numeric_csv_cell_is_named_by_row_and_column(client, settings):
    rows = [f"{i}.0,0.{i},1" for i in range(2, 17)]
    text = "sepal_length,petal_width,label\n" + "\n".join(rows) + "\n5.0,abc,0\n"
    error = single_error(upload(client, text.encode(), "iris.csv"), 422, "invalid_data")
    assert error["path"] == "/file/rows/17/columns/petal_width"
    assert error["received"] == "abc"
    assert error["expected"] == "a number"
    assert_nothing_stored(settings)


def test_hdf5_file_is_refused_naming_the_accepted_formats(client, settings):
    content = b"\x89HDF\r\n\x1a\n" + bytes(512)
    error = single_error(upload(client, content, "model.h5"), 422, "invalid_data")
    assert error["path"] == "/file"
    assert error["received"] == "HDF5"
    assert ".npz" in error["expected"]
    assert "CSV" in error["expected"]
    assert_nothing_stored(settings)


def test_empty_file_is_refused(client, settings):
    error = single_error(upload(client, b"", "empty.npy"), 422, "invalid_data")
    assert error["path"] == "/file"
    assert error["received"] == 0
    assert "empty" in error["message"]
    assert_nothing_stored(settings)


def test_unrecognized_binary_is_refused(client):
    error = single_error(upload(client, b"\x80\x04\x95 pickle", "x.pkl"), 422, "invalid_data")
    assert error["received"] == b"\x80\x04\x95 pickle"[:8].hex()


def test_missing_file_part_is_named(client):
    response = client.post("/v1/datasets", data={"name": "x"}, content_type="multipart/form-data")
    error = single_error(response, 422, "invalid_request")
    assert error["path"] == "/file"


def test_file_sent_as_a_text_field_is_explained(client):
    body = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n1,2\r\n--b--\r\n'
    response = client.post(
        "/v1/datasets", data=body, content_type="multipart/form-data; boundary=b"
    )
    error = single_error(response, 422, "invalid_request")
    assert (error["path"], error["received"]) == ("/file", "a text field")
    assert "no filename" in error["message"]


def test_truncated_multipart_body_is_400(client, settings):
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n1,2\r\n'
    response = client.post(
        "/v1/datasets", data=body, content_type="multipart/form-data; boundary=b"
    )
    assert response.status_code == 400
    assert response.get_json()["code"] == "malformed_request"
    assert "multipart body is malformed" in response.get_json()["detail"]
    assert_nothing_stored(settings)


def test_wrong_content_type_is_415(client):
    response = client.post("/v1/datasets", data=b"1,2\n", content_type="text/csv")
    assert response.status_code == 415
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == "unsupported_media_type"
    assert "'text/csv'" in body["detail"]


@pytest.mark.parametrize("size", [8192, 3 << 20], ids=["file-over-limit", "body-over-limit"])
def test_body_over_the_limit_is_413(settings, size):
    """A file over the limit is refused by us; a body far over it by werkzeug, also as a problem."""
    client = create_app(settings.with_overrides(max_upload_bytes=4096)).test_client()
    response = upload(client, bytes(size), "big.npy")
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "payload_too_large"
    assert_nothing_stored(settings)


def test_json_body_over_its_limit_is_413(settings):
    client = create_app(settings.with_overrides(max_json_bytes=100)).test_client()
    response = client.post("/v1/datasets", json={"arrays": {"x": list(range(100))}})
    assert response.status_code == 413
    assert response.get_json()["code"] == "payload_too_large"


def test_traversal_filename_is_only_metadata(client, settings):
    response = upload(client, npy_bytes(np.ones(3)), "../../etc/passwd")
    assert response.status_code == 201
    manifest = response.get_json()
    assert manifest["source"]["filename"] == "../../etc/passwd"
    assert [p.name for p in stored_folders(settings)] == [manifest["id"]]
    files = sorted(str(p.relative_to(settings.data_dir)) for p in settings.data_dir.rglob("*"))
    assert files == [
        "datasets",
        f"datasets/{manifest['id']}",
        f"datasets/{manifest['id']}/a0.npy",
        f"datasets/{manifest['id']}/manifest.json",
        "jobs",
        "tmp",
        "uploads",
    ]


def test_arrays_with_different_rows_are_refused_naming_shapes(client, settings):
    content = npz_bytes(x=np.zeros((10, 2)), y=np.zeros(9))
    response = upload(client, content, "mismatch.npz")
    assert response.status_code == 422
    errors = response.get_json()["errors"]
    assert [(e["path"], e["received"]) for e in errors] == [
        ("/file/arrays/x", [10, 2]),
        ("/file/arrays/y", [9]),
    ]
    assert_nothing_stored(settings)


@pytest.mark.parametrize("dataset_id", ["0" * 32, "abc", "..%2F..%2Fetc", "A" * 32])
def test_unknown_and_malformed_ids_are_404(client, dataset_id):
    for method in (client.get, client.delete):
        response = method(f"/v1/datasets/{dataset_id}")
        assert response.status_code == 404
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["code"] == "not_found"


def test_deep_json_body_is_400(client):
    body = '{"arrays": {"x": ' + "[" * 5000 + "]" * 5000 + "}}"
    response = client.post("/v1/datasets", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "malformed_request"


def test_nan_in_json_body_is_400(client):
    body = '{"arrays": {"x": [1.0, NaN]}}'
    response = client.post("/v1/datasets", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["code"] == "malformed_request"


@pytest.mark.parametrize(
    ("values", "path", "received"),
    [
        ([1, None], "/arrays/x/1", "null"),
        ([-2, "", "a"], "/arrays/x/1", ""),
        (["a", True], "/arrays/x/0", "a"),
        ([[1.5, {}], [2, 3]], "/arrays/x/0/1", "an object"),
        ([[1, 2], ["a", "b"]], "/arrays/x/1/0", "a"),
        ([1, 2**63], "/arrays/x/1", str(2**63)),
    ],
)
def test_json_array_of_mixed_values_is_refused(client, values, path, received):
    response = client.post("/v1/datasets", json={"arrays": {"x": values}})
    error = single_error(response, 422, "invalid_data")
    assert (error["path"], error["received"]) == (path, received)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([[1, 2], [3]], "ragged"),
        ([[1, 2], 3], "mix lists and values"),
        ([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]], "deeper than 32"),
        ([[], []], "empty"),
    ],
)
def test_json_arrays_of_the_wrong_shape_are_refused(client, values, message):
    response = client.post("/v1/datasets", json={"arrays": {"x": values}})
    error = single_error(response, 422, "invalid_data")
    assert error["path"] == "/arrays/x"
    assert message in error["message"]


def test_list_pages_newest_first(client):
    ids = [upload(client, npy_bytes(np.ones(2)), "a.npy").get_json()["id"] for _ in range(3)]
    first = client.get("/v1/datasets?limit=2").get_json()
    assert [item["id"] for item in first["items"]] == ids[::-1][:2]
    second = client.get(f"/v1/datasets?limit=2&cursor={first['next_cursor']}").get_json()
    assert [item["id"] for item in second["items"]] == [ids[0]]
    assert second["next_cursor"] is None
    error = single_error(client.get("/v1/datasets?cursor=nope"), 422, "invalid_request")
    assert (error["path"], error["received"]) == ("/cursor", "nope")


def test_delete_removes_the_dataset_unless_a_live_job_uses_it(client, settings):
    dataset_id = upload(client, npy_bytes(np.ones(2)), "a.npy").get_json()["id"]
    jobs = f"fitserve:dataset:{dataset_id}:jobs"
    redis.Redis.from_url(settings.redis_url).sadd(jobs, "f" * 32)
    response = client.delete(f"/v1/datasets/{dataset_id}")
    assert response.status_code == 409
    assert response.get_json()["code"] == "conflict"
    assert stored_folders(settings) != []
    redis.Redis.from_url(settings.redis_url).delete(jobs)
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    assert_nothing_stored(settings)
    assert client.get(f"/v1/datasets/{dataset_id}").status_code == 404


def test_idempotency_key_returns_the_same_dataset(client, settings):
    headers = {"Idempotency-Key": "upload-1"}
    first = upload(client, npy_bytes(np.ones(2)), "a.npy", headers=headers)
    again = upload(client, npy_bytes(np.ones(2)), "a.npy", headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert len(stored_folders(settings)) == 1
    other = upload(client, npy_bytes(np.ones(2)), "a.npy", headers={"Idempotency-Key": "2"})
    assert other.get_json()["id"] != first.get_json()["id"]


def test_idempotency_key_in_progress_is_409_and_a_deleted_dataset_frees_it(client, settings):
    keys = IdempotencyKeys(redis.Redis.from_url(settings.redis_url), "datasets")
    with keys.claim(None, "busy", "another upload", lambda _: False):
        headers = {"Idempotency-Key": "busy"}
        busy = upload(client, npy_bytes(np.ones(2)), "a.npy", headers=headers)
    assert busy.status_code == 409
    assert "in progress" in busy.get_json()["detail"]
    assert_nothing_stored(settings)
    headers = {"Idempotency-Key": "again"}
    first = upload(client, npy_bytes(np.ones(2)), "a.npy", headers=headers).get_json()["id"]
    assert client.delete(f"/v1/datasets/{first}").status_code == 204
    second = upload(client, npy_bytes(np.ones(2)), "a.npy", headers=headers)
    assert second.status_code == 201
    assert second.get_json()["id"] != first
    replayed = upload(client, npy_bytes(np.ones(2)), "a.npy", headers=headers)
    assert (replayed.status_code, replayed.get_json()["id"]) == (200, second.get_json()["id"])
    assert 0 < keys.redis.ttl(keys.key_name(None, "again")) <= 24 * 3600


def test_idempotency_key_with_a_different_upload_is_409(client, settings):
    headers = {"Idempotency-Key": "one-upload"}
    first = upload(client, npy_bytes(np.ones(2)), "a.npy", headers=headers)
    assert first.status_code == 201
    for content, name in ((np.zeros(2), "a.npy"), (np.ones(2), "b.npy")):
        other = upload(client, npy_bytes(content), name, headers=headers)
        assert other.status_code == 409, other.get_json()
        assert other.mimetype == "application/problem+json"
        assert first.get_json()["id"] in other.get_json()["detail"]
    json_first = client.post("/v1/datasets", json={"arrays": {"x": [1, 2]}}, headers=headers)
    assert json_first.status_code == 409
    json_headers = {"Idempotency-Key": "json-upload"}
    made = client.post("/v1/datasets", json={"arrays": {"x": [1, 2]}}, headers=json_headers)
    same = client.post("/v1/datasets", json={"arrays": {"x": [1, 2]}}, headers=json_headers)
    assert (made.status_code, same.status_code) == (201, 200)
    assert same.get_json()["id"] == made.get_json()["id"]
    other = client.post("/v1/datasets", json={"arrays": {"x": [1, 3]}}, headers=json_headers)
    assert other.status_code == 409
    assert len(stored_folders(settings)) == 2


def test_failed_upload_releases_its_idempotency_key(client, settings):
    headers = {"Idempotency-Key": "retry-me"}
    assert upload(client, b"", "a.npy", headers=headers).status_code == 422
    assert upload(client, npy_bytes(np.ones(2)), "a.npy", headers=headers).status_code == 201


def test_idempotency_key_without_redis_is_503_and_stores_nothing(settings):
    down = settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    client = create_app(down).test_client()
    response = upload(client, npy_bytes(np.ones(2)), "a.npy", headers={"Idempotency-Key": "k"})
    assert response.status_code == 503
    assert response.get_json()["code"] == "unavailable"
    assert_nothing_stored(settings)


@pytest.fixture
def keyed(settings):
    keys = {"alice": "fs_alice", "bob": "fs_bob", "root": "fs_root"}
    entries = [f"{name}:{hash_key(key)}" for name, key in keys.items()]
    app = create_app(settings.with_overrides(api_keys=",".join(entries) + ":admin"))
    return app.test_client(), {name: {"Authorization": f"Bearer {k}"} for name, k in keys.items()}


def test_keys_are_required_and_datasets_are_owned(keyed):
    client, auth = keyed
    content = npy_bytes(np.ones(2))
    assert upload(client, content, "a.npy").status_code == 401
    wrong = upload(client, content, "a.npy", headers={"Authorization": "Bearer fs_nope"})
    assert wrong.status_code == 401
    assert wrong.get_json()["code"] == "unauthorized"
    made = upload(client, content, "a.npy", headers=auth["alice"]).get_json()
    assert made["owner"] == "alice"
    path = f"/v1/datasets/{made['id']}"
    assert client.get(path, headers=auth["alice"]).status_code == 200
    assert client.get(path, headers=auth["bob"]).status_code == 404
    assert client.delete(path, headers=auth["bob"]).status_code == 404
    assert client.get("/v1/datasets", headers=auth["bob"]).get_json()["items"] == []
    assert len(client.get("/v1/datasets", headers=auth["root"]).get_json()["items"]) == 1


def rss_peak_during(action) -> tuple[int, object]:
    """Run `action` while sampling this process's RSS; return (peak growth in bytes, result)."""
    process = psutil.Process()
    gc.collect()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join(5)
    return peak - baseline, result


def test_200_mb_upload_keeps_memory_flat(client, settings, tmp_path):
    path = tmp_path / "big.npy"
    rows = (200 << 20) // (64 * 4)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 64))
    for start in range(0, rows, 1 << 14):
        stop = min(start + (1 << 14), rows)
        array[start:stop] = (np.arange(start * 64, stop * 64) % 1000).reshape(-1, 64)
    array.flush()
    del array

    def post():
        with open(path, "rb") as handle:
            return client.post("/v1/datasets", data={"file": (handle, "big.npy")})

    growth, response = rss_peak_during(post)
    print(f"200 MB upload: peak RSS growth {growth / 2**20:.1f} MiB")
    assert response.status_code == 201, response.get_data(as_text=True)
    manifest = response.get_json()
    assert manifest["rows"] == rows
    assert manifest["arrays"]["x"]["stats"]["max"] == 999.0
    assert manifest["arrays"]["x"]["sha256"] == sha256_file(path)
    assert growth < 80 << 20
