"""Serving through the real stack: jobs trained by the worker, predictions from gunicorn.

Each answer is checked against the same file loaded directly in Keras, through both protocols,
for every version and label; then downloads, concurrency, bad inputs and a corrupt file.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from core.storage import read_json
from tests.support.http import expect_status
from tests.support.processes import wait_for
from tests.support.stack import Stack, tiny_request

pytestmark = pytest.mark.e2e

X = np.random.default_rng(11).normal(scale=3.0, size=(6, 16)).astype("float32")
A = np.random.default_rng(12).normal(size=(4, 16)).astype("float32")
B = np.random.default_rng(13).normal(size=(4, 4)).astype("float32")


def multi_request(dataset_id: str) -> dict:
    """Two inputs (`a`, `b`) and two outputs (`cls`, `reg`): Keras's own to_json()."""
    import keras

    a = keras.Input((16,), name="a")
    b = keras.Input((4,), name="b")
    joined = keras.layers.Concatenate(name="join")([a, b])
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(joined)
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(hidden)
    reg = keras.layers.Dense(1, name="reg")(hidden)
    return {
        "name": "serve-multi",
        "seed": 1,
        "model": json.loads(keras.Model([a, b], [cls, reg]).to_json()),
        "compile": {
            "optimizer": {"class_name": "Adam", "config": {"learning_rate": 0.01}},
            "loss": {"cls": "sparse_categorical_crossentropy", "reg": "mse"},
        },
        "fit": {"epochs": 2, "batch_size": 16},
        "data": {"dataset": dataset_id, "x": {"a": "a", "b": "b"}, "y": {"cls": "y", "reg": "r"}},
    }


@pytest.fixture(scope="module")
def served(stack: Stack, blobs_dataset: str) -> dict[str, str]:
    """A succeeded single-input job (3 epochs) and a multi-input, multi-output one."""
    rng = np.random.default_rng(0)
    multi_dataset = stack.upload(
        a=rng.normal(size=(64, 16)).astype("float32"),
        b=rng.normal(size=(64, 4)).astype("float32"),
        y=(np.arange(64) % 3).astype("int64"),
        r=rng.normal(size=(64, 1)).astype("float32"),
    )
    jobs = {
        "single": stack.submit(tiny_request(blobs_dataset, epochs=3, name="serve-single"))["id"],
        "multi": stack.submit(multi_request(multi_dataset))["id"],
    }
    for job_id in jobs.values():
        done = stack.wait_finished(job_id)
        assert done["status"] == "succeeded", done
    return jobs


def manifest(stack: Stack, job_id: str) -> dict:
    return read_json(stack.data_dir / "jobs" / job_id / "manifest.json")


def keras_model(stack: Stack, job_id: str, version: int):
    """The file a version names, loaded directly in Keras (final wins a tie, as served)."""
    import keras

    record = manifest(stack, job_id)
    final = record["final"]
    if final and final["version"] == version:
        relative = final["file"]
    else:
        relative = next(c["file"] for c in record["checkpoints"] if c["version"] == version)
    path = stack.data_dir / "jobs" / job_id / relative
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def post(stack: Stack, path: str, body: dict) -> requests.Response:
    return requests.post(stack.url(path), json=body, timeout=60)


def post_until_served_by(stack: Stack, path: str, body: dict, version: int) -> requests.Response:
    """POST until `version` answers (bounded). Asked by a label that follows `latest`, each
    gunicorn worker keeps answering with the older version it holds while the newer one loads
    (DESIGN: a newer version replaces a loaded one only once fully loaded)."""
    answer: list[requests.Response] = []

    def served_by_version() -> bool:
        answer[:] = [expect_status(post(stack, path, body), 200)]
        return answer[0].headers["X-Model-Version"] == str(version)

    wait_for(served_by_version, 30, f"{path} answered by version {version}", interval=0.2)
    return answer[0]


def versions_and_labels(stack: Stack, job_id: str) -> list[tuple[str, str, int]]:
    """(TF Serving suffix, OIP version segment, version served) for every way to name one."""
    record = manifest(stack, job_id)
    versions = sorted({c["version"] for c in record["checkpoints"]} | {record["final"]["version"]})
    named = [(f"/versions/{v}", str(v), v) for v in versions]
    labels = {
        "final": record["final"]["version"],
        "latest": versions[-1],
        "best": record["best"]["version"],
    }
    named += [(f"/labels/{label}", label, v) for label, v in labels.items()]
    return [*named, ("", "", labels["final"])]


def test_single_input_every_version_label_and_format_equals_keras(stack: Stack, served):
    job_id = served["single"]
    for suffix, segment, version in versions_and_labels(stack, job_id):
        want = keras_model(stack, job_id, version)(X, training=False).numpy()
        path = f"/v1/models/{job_id}{suffix}:predict"
        rows = post_until_served_by(stack, path, {"instances": X.tolist()}, version)
        assert np.allclose(rows.json()["predictions"], want, atol=1e-5)
        columns = post_until_served_by(stack, path, {"inputs": X.tolist()}, version)
        assert np.allclose(columns.json()["outputs"], want, atol=1e-5)
        path = f"/v2/models/{job_id}" + (f"/versions/{segment}" if segment else "") + "/infer"
        tensor = {"name": "input", "shape": [6, 16], "datatype": "FP32", "data": X.ravel().tolist()}
        infer = post_until_served_by(stack, path, {"inputs": [tensor]}, version)
        assert infer.json()["model_version"] == str(version)
        [out] = infer.json()["outputs"]
        assert np.allclose(np.reshape(out["data"], out["shape"]), want, atol=1e-5)


def test_multi_input_multi_output_through_both_protocols(stack: Stack, served):
    job_id = served["multi"]
    cls, reg = (t.numpy() for t in keras_model(stack, job_id, 2)([A, B], training=False))
    instances = [{"a": a.tolist(), "b": b.tolist()} for a, b in zip(A, B, strict=True)]
    rows = post(stack, f"/v1/models/{job_id}:predict", {"instances": instances}).json()
    assert np.allclose([r["cls"] for r in rows["predictions"]], cls, atol=1e-5)
    assert np.allclose([r["reg"] for r in rows["predictions"]], reg, atol=1e-5)
    columns = {"a": A.tolist(), "b": B.tolist()}
    outputs = post(stack, f"/v1/models/{job_id}:predict", {"inputs": columns}).json()["outputs"]
    assert np.allclose(outputs["cls"], cls, atol=1e-5)
    assert np.allclose(outputs["reg"], reg, atol=1e-5)
    tensors = [
        {"name": "a", "shape": [4, 16], "datatype": "FP32", "data": A.tolist()},
        {"name": "b", "shape": [4, 4], "datatype": "FP32", "data": B.tolist()},
    ]
    infer = post(stack, f"/v2/models/{job_id}/infer", {"id": "m1", "inputs": tensors}).json()
    assert infer["id"] == "m1"
    by_name = {o["name"]: np.reshape(o["data"], o["shape"]) for o in infer["outputs"]}
    assert np.allclose(by_name["cls"], cls, atol=1e-5)
    assert np.allclose(by_name["reg"], reg, atol=1e-5)
    binary = binary_infer(stack, job_id)
    assert np.allclose(binary, cls, atol=1e-5)
    metadata = requests.get(stack.url(f"/v1/models/{job_id}/metadata"), timeout=60).json()
    assert metadata["inputs"] == [
        {"name": "a", "dtype": "float32", "shape": [-1, 16]},
        {"name": "b", "dtype": "float32", "shape": [-1, 4]},
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["cls", "reg"]


def binary_infer(stack: Stack, job_id: str) -> np.ndarray:
    """`cls` for A, B sent and answered as binary tensors, as Triton's client does by default."""
    header = json.dumps(
        {
            "inputs": [
                {"name": name, "shape": list(x.shape), "datatype": "FP32",
                 "parameters": {"binary_data_size": x.nbytes}}
                for name, x in (("a", A), ("b", B))
            ],
            "outputs": [{"name": "cls", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    response = requests.post(
        stack.url(f"/v2/models/{job_id}/infer"),
        data=header + A.astype("<f4").tobytes() + B.astype("<f4").tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    [out] = json.loads(response.content[:length])["outputs"]
    return np.frombuffer(response.content[length:], "<f4").reshape(out["shape"])


def test_a_job_name_serves_its_newest_succeeded_job(stack: Stack, served):
    by_name = post(stack, "/v1/models/serve-single:predict", {"instances": X.tolist()})
    by_id = post(stack, f"/v1/models/{served['single']}:predict", {"instances": X.tolist()})
    assert by_name.status_code == 200
    assert by_name.json() == by_id.json()


def test_downloads_give_the_file_and_an_equivalent_savedmodel(stack: Stack, served, tmp_path):
    import tensorflow as tf

    job_id = served["multi"]
    keras_file = requests.get(stack.url(f"/v1/models/{job_id}/download?format=keras"), timeout=60)
    assert keras_file.content == (stack.data_dir / "jobs" / job_id / "model.keras").read_bytes()
    url = stack.url(f"/v1/models/{job_id}/download?format=savedmodel")
    archive = requests.get(url, timeout=120)
    assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(tmp_path, filter="data")
    signature = tf.saved_model.load(str(tmp_path / "2")).signatures["serving_default"]
    outputs = signature(a=tf.constant(A), b=tf.constant(B))
    assert sorted(outputs) == ["cls", "reg"]
    cls, reg = keras_model(stack, job_id, 2)([A, B], training=False)
    assert np.allclose(outputs["cls"], cls, atol=1e-5)
    assert np.allclose(outputs["reg"], reg, atol=1e-5)
    assert requests.get(url, timeout=60).content == archive.content


def test_fifty_concurrent_requests_answer_as_sequential_ones(stack: Stack, served):
    path = f"/v1/models/{served['single']}:predict"
    bodies = [{"instances": X[i % 6 : i % 6 + 1 + i % 3].tolist()} for i in range(50)]
    sequential = [post(stack, path, body).json()["predictions"] for body in bodies]
    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(lambda body: post(stack, path, body), bodies))
    assert [r.status_code for r in responses] == [200] * 50
    for response, want in zip(responses, sequential, strict=True):
        assert np.allclose(response.json()["predictions"], want, atol=1e-6)


def api_workers(stack: Stack) -> set[int]:
    return {child.pid for child in psutil.Process(stack.others[0].pid).children()}


def test_bad_inputs_are_clear_errors_and_no_worker_dies(stack: Stack, served):
    workers = api_workers(stack)
    path = f"/v1/models/{served['single']}:predict"
    cases = [
        ({"instances": [[1.0] * 16, [1.0] * 15]}, 422, "/instances/1"),
        ({"instances": [[1.0] * 16, [[1.0] * 16]]}, 422, "/instances/1"),
        ({"instances": [[1.0] * 15 + ["NaN"]]}, 422, "/instances/0"),
        ({"instances": [[1.0] * 15 + [1e39]]}, 422, "/instances"),
        ({"inputs": {"x": [[1.0] * 16]}}, 422, "/inputs/x"),
        ({"instances": [[0.0] * 16] * 10_001}, 413, None),
    ]
    for body, status, pointer in cases:
        response = post(stack, path, body)
        assert response.status_code == status, response.text
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.json()["error"]
        if pointer is not None:
            assert response.json()["errors"][0]["path"] == pointer
    overflow = requests.post(
        stack.url(path),
        data=b'{"instances": [[' + b"1e999," * 15 + b"1]]}",
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert overflow.status_code == 400
    assert post(stack, "/v1/models/no-such-model:predict", {"instances": []}).status_code == 404
    assert post(stack, f"/v1/models/{served['single']}/versions/99:predict", {}).status_code == 404
    assert api_workers(stack) == workers
    assert post(stack, path, {"instances": X.tolist()}).status_code == 200


def test_running_job_serves_its_latest_checkpoint_and_a_queued_one_is_409(
    stack: Stack, blobs_dataset
):
    running = stack.submit(tiny_request(blobs_dataset, epochs=1000, name="serve-running"))
    stack.wait_job(running["id"], lambda j: j["checkpoints"], "to save a checkpoint", timeout=120)
    queued = stack.submit(tiny_request(blobs_dataset, epochs=1, name="serve-queued"))
    try:
        response = post(stack, f"/v1/models/{running['id']}:predict", {"instances": X.tolist()})
        assert response.status_code == 200, response.text
        newest = max(c["version"] for c in manifest(stack, running["id"])["checkpoints"])
        assert 1 <= int(response.headers["X-Model-Version"]) <= newest
        waiting = post(stack, f"/v1/models/{queued['id']}:predict", {"instances": X.tolist()})
        assert waiting.status_code == 409, waiting.text
        assert "queued" in waiting.json()["detail"]
    finally:
        for job in (queued, running):
            requests.post(stack.url(f"/v1/jobs/{job['id']}:cancel"), timeout=30)
        stack.wait_finished(running["id"], timeout=60)


def test_a_corrupt_checkpoint_is_503_naming_it(stack: Stack, served):
    workers = api_workers(stack)
    job_id = served["multi"]
    path: Path = stack.data_dir / "jobs" / job_id / "checkpoints" / "epoch-0001.keras"
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    try:
        tensors = [
            {"name": "a", "shape": [1, 16], "datatype": "FP32", "data": A[0].tolist()},
            {"name": "b", "shape": [1, 4], "datatype": "FP32", "data": B[0].tolist()},
        ]
        for attempt in range(2):  # both gunicorn workers, whichever answers
            response = post(stack, f"/v2/models/{job_id}/versions/1/infer", {"inputs": tensors})
            assert response.status_code == 503, (attempt, response.text)
            assert "epoch-0001.keras" in response.json()["error"]
            assert response.headers["X-Model-Version"] == "1"
        fine = post(stack, f"/v2/models/{job_id}/versions/2/infer", {"inputs": tensors})
        assert fine.status_code == 200
        assert api_workers(stack) == workers
    finally:
        path.write_bytes(original)


def test_tf_serving_documented_curl_command(stack: Stack, served):
    """`curl -d '{"instances": ...}' -X POST .../v1/models/NAME:predict`, as TF Serving's REST
    docs write it: curl sends it as application/x-www-form-urlencoded."""
    job_id = served["single"]
    want = keras_model(stack, job_id, 3)(X, training=False).numpy()
    body = json.dumps({"instances": X.tolist()})
    for model in (job_id, "serve-single"):
        command = [
            "curl",
            "-sS",
            "-d",
            body,
            "-X",
            "POST",
            stack.url(f"/v1/models/{model}:predict"),
        ]
        done = subprocess.run(command, capture_output=True, timeout=60, check=True)
        assert np.allclose(json.loads(done.stdout)["predictions"], want, atol=1e-5), done.stdout


@pytest.mark.parametrize("binary", [False, True])
def test_triton_client_infers_in_json_and_binary(stack: Stack, served, binary):
    """Triton's own Python client, unchanged: it sends no Content-Type."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(stack.api.removeprefix("http://"), network_timeout=60)
    try:
        assert client.is_server_live()
        for job_id, version in ((served["single"], ""), (served["multi"], "1")):
            assert client.is_model_ready(job_id, version)
            metadata = client.get_model_metadata(job_id, version)
            model = keras_model(
                stack, job_id, int(version or manifest(stack, job_id)["final"]["version"])
            )
            arrays = {"input": X} if job_id == served["single"] else {"a": A, "b": B}
            inputs = []
            for tensor in metadata["inputs"]:
                array = arrays[tensor["name"]]
                inputs.append(triton.InferInput(tensor["name"], list(array.shape), "FP32"))
                inputs[-1].set_data_from_numpy(array, binary_data=binary)
            names = [tensor["name"] for tensor in metadata["outputs"]]
            outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in names]
            result = client.infer(job_id, inputs, model_version=version, outputs=outputs)
            want = model(list(arrays.values()) if len(arrays) > 1 else X, training=False)
            want = want if isinstance(want, list) else [want]
            for name, expected in zip(names, want, strict=True):
                assert np.allclose(result.as_numpy(name), expected, atol=1e-5), name
    finally:
        client.close()
