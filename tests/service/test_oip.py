"""The Open Inference Protocol (KServe v2) routes over the same trained models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.storage import DataDir
from tests.service.test_tfserving import IMAGES, META, ROWS, expected
from tests.support.models import MULTI, SINGLE, copy_job


@pytest.fixture
def jobs(library, settings) -> dict[str, str]:
    source, ids = library
    for kind in (SINGLE, MULTI):
        copy_job(source, DataDir(settings.data_dir), ids[kind])
    return ids


def tensor(name: str, array: np.ndarray, datatype: str = "FP32", *, flat: bool = True) -> dict:
    data = array.reshape(-1).tolist() if flat else array.tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def test_server_metadata_and_health(client):
    server = client.get("/v2").get_json()
    assert server["name"] == "fitserve"
    assert server["version"]
    assert server["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").get_json() == {"ready": True}


def test_model_metadata_and_ready(client, jobs):
    body = client.get(f"/v2/models/{jobs[MULTI]}").get_json()
    assert body["versions"] == ["1", "2"]
    assert body["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 2, 3]},
        {"name": "meta", "datatype": "FP32", "shape": [-1, 2]},
    ]
    assert [o["name"] for o in body["outputs"]] == ["score", "probs"]
    ready = client.get(f"/v2/models/{jobs[MULTI]}/versions/1/ready")
    assert ready.status_code == 200
    assert ready.get_json() == {"name": jobs[MULTI], "version": "1", "ready": True}
    assert ready.headers["X-Model-Version"] == "1"
    assert client.get(f"/v2/models/{jobs[MULTI]}/versions/7/ready").status_code == 404


@pytest.mark.parametrize("flat", [True, False])
def test_infer_equals_keras(client, jobs, library, flat):
    body = {"id": "req-1", "inputs": [tensor("input", ROWS, flat=flat)]}
    response = client.post(f"/v2/models/{jobs[SINGLE]}/infer", json=body)
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert answer["id"] == "req-1"
    assert answer["model_name"] == jobs[SINGLE]
    assert answer["model_version"] == "3"
    [out] = answer["outputs"]
    assert out["name"] == "output"
    assert out["datatype"] == "FP32"
    assert out["shape"] == [5, 3]
    want = expected(library, SINGLE, ROWS)
    assert np.allclose(np.reshape(out["data"], out["shape"]), want, atol=1e-6)


@pytest.mark.parametrize(("segment", "file_version"), [("1", 1), ("best", None), ("final", None)])
def test_infer_versions_and_labels(client, jobs, library, segment, file_version, settings):
    from core.storage import read_json

    if segment == "best":
        best = read_json(DataDir(settings.data_dir).job(jobs[SINGLE]) / "manifest.json")["best"]
        file_version = None if best["version"] == 3 else best["version"]
    body = {"inputs": [tensor("input", ROWS)]}
    response = client.post(f"/v2/models/{jobs[SINGLE]}/versions/{segment}/infer", json=body)
    assert response.status_code == 200
    data = response.get_json()["outputs"][0]["data"]
    want = expected(library, SINGLE, ROWS, file_version)
    assert np.allclose(np.reshape(data, (5, 3)), want, atol=1e-6)


def test_infer_multi_output_with_selection(client, jobs, library):
    inputs = [tensor("meta", META, "FP64"), tensor("image", IMAGES)]
    score, probs = expected(library, MULTI, [IMAGES, META])
    both = client.post(f"/v2/models/{jobs[MULTI]}/infer", json={"inputs": inputs}).get_json()
    assert [o["name"] for o in both["outputs"]] == ["score", "probs"]
    assert np.allclose(np.reshape(both["outputs"][1]["data"], (3, 3)), probs, atol=1e-6)
    body = {"inputs": inputs, "outputs": [{"name": "score"}]}
    [only] = client.post(f"/v2/models/{jobs[MULTI]}/infer", json=body).get_json()["outputs"]
    assert only["name"] == "score"
    assert np.allclose(np.reshape(only["data"], (3, 1)), score, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"inputs": [tensor("input", ROWS[:, :3])]}, "/inputs/0/shape"),
        ({"inputs": [{**tensor("input", ROWS), "shape": [4, 4]}]}, "/inputs/0/data"),
        ({"inputs": [tensor("input", ROWS, "BYTES")]}, "/inputs/0/datatype"),
        ({"inputs": [tensor("input", ROWS, "INT32")]}, "/inputs/0/data"),
        ({"inputs": [tensor("nope", ROWS)]}, "/inputs/0/name"),
        ({"inputs": [tensor("input", ROWS), tensor("input", ROWS)]}, "/inputs/1/name"),
        ({"inputs": [{**tensor("input", ROWS), "data": ["x"] * 20}]}, "/inputs/0/data"),
        ({"inputs": [{**tensor("input", ROWS), "data": [[1, 2], [3]]}]}, "/inputs/0/data"),
        ({"inputs": [tensor("input", ROWS)], "outputs": [{"name": "x"}]}, "/outputs/0/name"),
        ({"inputs": []}, "/inputs"),
        (
            {"inputs": [{**tensor("input", ROWS), "parameters": {"binary_data_size": 80}}]},
            "/inputs/0/parameters/binary_data_size",
        ),
        ({"inputs": [tensor("input", ROWS, "FP16")], "parameters": []}, "/parameters"),
        ({"inputs": [{**tensor("input", ROWS), "parameters": 1}]}, "/inputs/0/parameters"),
        (
            {"inputs": [tensor("input", ROWS)], "outputs": [{"name": "output", "parameters": 0}]},
            "/outputs/0/parameters",
        ),
    ],
)
def test_bad_infer_is_422_pointing_at_it(client, jobs, body, path):
    response = client.post(f"/v2/models/{jobs[SINGLE]}/infer", json=body)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["errors"][0]["path"] == path
    assert response.get_json()["error"]


def test_infer_missing_input_and_unknown_model(client, jobs):
    response = client.post(
        f"/v2/models/{jobs[MULTI]}/infer", json={"inputs": [tensor("image", IMAGES)]}
    )
    assert response.status_code == 422
    assert "meta" in response.get_json()["detail"]
    response = client.post("/v2/models/nope/infer", json={"inputs": [tensor("input", ROWS)]})
    assert response.status_code == 404
    assert response.get_json()["error"]


def binary_request(header: dict, *chunks: bytes) -> dict:
    """What Triton's and KServe's clients send with the binary tensor data extension."""
    head = json.dumps(header).encode()
    return {
        "data": head + b"".join(chunks),
        "headers": {"Inference-Header-Content-Length": str(len(head))},
        "content_type": "application/octet-stream",
    }


def binary_tensor(name: str, array: np.ndarray, datatype: str) -> dict:
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": array.nbytes},
    }


def split_binary(response) -> tuple[dict, bytes]:
    length = int(response.headers["Inference-Header-Content-Length"])
    return json.loads(response.data[:length]), response.data[length:]


def test_binary_inputs_and_outputs(client, jobs, library):
    meta = META.astype("<f8")
    header = {
        "inputs": [binary_tensor("image", IMAGES, "FP32"), binary_tensor("meta", meta, "FP64")],
        "outputs": [{"name": "probs", "parameters": {"binary_data": True}}, {"name": "score"}],
    }
    body = binary_request(header, IMAGES.astype("<f4").tobytes(), meta.tobytes())
    response = client.post(f"/v2/models/{jobs[MULTI]}/infer", **body)
    assert response.status_code == 200, response.data[:300]
    assert response.mimetype == "application/octet-stream"
    answer, rest = split_binary(response)
    probs_out, score_out = answer["outputs"]
    assert probs_out["parameters"] == {"binary_data_size": 3 * 3 * 4}
    assert "data" not in probs_out
    score, probs = expected(library, MULTI, [IMAGES, META])
    assert np.allclose(np.frombuffer(rest, "<f4").reshape(3, 3), probs, atol=1e-6)
    assert np.allclose(np.reshape(score_out["data"], (3, 1)), score, atol=1e-6)


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
def test_binary_requests_take_any_content_type(client, jobs, library, content_type):
    header = {"inputs": [binary_tensor("input", ROWS, "FP32")]}
    body = binary_request(header, ROWS.astype("<f4").tobytes())
    body["content_type"] = content_type
    response = client.post(f"/v2/models/{jobs[SINGLE]}/infer", **body)
    assert response.status_code == 200, response.data[:300]
    [out] = response.get_json()["outputs"]
    assert np.allclose(np.reshape(out["data"], out["shape"]), expected(library, SINGLE, ROWS))


def test_binary_output_for_every_output_when_asked(client, jobs, library):
    header = {
        "inputs": [binary_tensor("input", ROWS, "FP32")],
        "parameters": {"binary_data_output": True},
    }
    body = binary_request(header, ROWS.astype("<f4").tobytes())
    answer, rest = split_binary(client.post(f"/v2/models/{jobs[SINGLE]}/infer", **body))
    assert answer["outputs"][0]["parameters"] == {"binary_data_size": 5 * 3 * 4}
    want = expected(library, SINGLE, ROWS)
    assert np.allclose(np.frombuffer(rest, "<f4").reshape(5, 3), want, atol=1e-6)


@pytest.mark.parametrize(
    ("chunk", "status", "path"),
    [
        (ROWS.astype("<f4").tobytes()[:-4], 422, "/inputs/0/parameters/binary_data_size"),
        (ROWS.astype("<f4").tobytes() + b"xx", 422, "/inputs"),
        (np.full((5, 4), np.nan, "<f4").tobytes(), 422, "/inputs/0/data"),
    ],
)
def test_bad_binary_is_422(client, jobs, chunk, status, path):
    header = {"inputs": [binary_tensor("input", ROWS, "FP32")]}
    body = binary_request(header, chunk)
    if len(chunk) < ROWS.nbytes:
        header["inputs"][0]["parameters"]["binary_data_size"] = ROWS.nbytes
        body = binary_request(header, chunk)
    response = client.post(f"/v2/models/{jobs[SINGLE]}/infer", **body)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["errors"][0]["path"] == path


def test_bad_binary_header_is_400(client, jobs):
    response = client.post(
        f"/v2/models/{jobs[SINGLE]}/infer",
        data=b'{"inputs": [}' + b"\0" * 8,
        headers={"Inference-Header-Content-Length": "13"},
    )
    assert response.status_code == 400
    response = client.post(
        f"/v2/models/{jobs[SINGLE]}/infer",
        data=b"{}",
        headers={"Inference-Header-Content-Length": "99"},
    )
    assert response.status_code == 400
