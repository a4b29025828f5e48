"""Each API key sees only what it made; an admin key sees all; owners are kept on disk.

Every `/v1` and `/v2` route that takes an id is read from the app's url_map, so a new route is
tried here without anyone adding it: another key's id must be a 404 whatever the method.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import redis

from core.batch import BatchStore, ParsedBatch
from core.keys import hash_key
from core.settings import Settings
from core.storage import DataDir, read_json
from service import create_app
from tests.service.test_jobs import X, Y, job_request
from tests.service.test_sweeps import sweep_request
from tests.support.models import SINGLE, copy_job, write_trained_job

KEYS = {"ann": "fs_ann", "bob": "fs_bob", "ops": "fs_ops"}
PREDICT_ROWS = [[0.5, -1.0, 2.0, 0.0]]
BODIES = {
    ":predict": {"instances": PREDICT_ROWS},
    ":classify": {"instances": PREDICT_ROWS},
    ":regress": {"instances": PREDICT_ROWS},
    "/infer": {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": PREDICT_ROWS[0]}]
    },
}
_VARIABLE = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def as_(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture
def app(settings: Settings):
    entries = [f"{name}:{hash_key(key)}" for name, key in KEYS.items()]
    return create_app(settings.with_overrides(api_keys=",".join(entries) + ":admin"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataDir, str]:
    """ann's trained model, made once; each test copies it into its own data folder."""
    data = DataDir(tmp_path_factory.mktemp("owned-model"))
    return data, write_trained_job(data, SINGLE, epochs=1, name="tiny", owner="ann")


@pytest.fixture
def owned(app, client, settings: Settings, trained) -> dict[str, str]:
    """ann's dataset, queued job, trained model (named `tiny`), upload and batch prediction."""
    upload = client.post("/v1/datasets", json={"arrays": {"x": X, "y": Y}}, headers=as_("ann"))
    assert upload.status_code == 201, upload.get_json()
    dataset = upload.get_json()["id"]
    job = client.post("/v1/jobs", json=job_request(dataset), headers=as_("ann"))
    assert job.status_code == 202, job.get_json()
    source, model = trained
    copy_job(source, DataDir(settings.data_dir), model)
    created = client.post(
        "/v1/uploads", headers={**as_("ann"), "Tus-Resumable": "1.0.0", "Upload-Length": "10"}
    )
    assert created.status_code == 201, created.get_json()
    upload = created.headers["Location"].rsplit("/", 1)[1]
    # Recorded directly: the copied model has no job.json for the submit to read its inputs.
    parsed = ParsedBatch(model, 1, dataset, {"input": "x"}, 8, len(X), False, None)
    store = BatchStore(
        redis.Redis.from_url(settings.redis_url), DataDir(settings.data_dir), settings
    )
    batch = store.create(parsed, owner="ann", request_id=None)
    sweep = client.post("/v1/sweeps", json=sweep_request(dataset), headers=as_("ann"))
    assert sweep.status_code == 202, sweep.get_json()
    return {
        "dataset": dataset,
        "job": job.get_json()["id"],
        "model": model,
        "upload": upload,
        "batch": batch["id"],
        "sweep": sweep.get_json()["id"],
    }


def id_routes(app) -> Iterator[tuple[str, str]]:
    """(method, path pattern) of every /v1 and /v2 route with a variable part."""
    for rule in app.url_map.iter_rules():
        if rule.arguments and rule.rule.startswith(("/v1/", "/v2/")):
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield method, rule.rule


def fill(pattern: str, owned: dict[str, str]) -> str:
    """A path to ann's resource: the model for /models routes, else the dataset or job."""
    values = {
        "dataset_id": owned["dataset"],
        "job_id": owned["job"],
        "sweep_id": owned["sweep"],
        "model": owned["model"],
        "label": "latest",
        "version": "1",
        "upload_id": owned["upload"],
        "batch_id": owned["batch"],
    }
    return _VARIABLE.sub(lambda match: values[match.group(1)], pattern)


def send(client, method: str, path: str, key: str):
    body = next((b for suffix, b in BODIES.items() if path.endswith(suffix)), None)
    # The tus routes answer 412 to a request without their protocol version, before any lookup.
    headers = {**as_(key), "Tus-Resumable": "1.0.0"}
    return client.open(path, method=method, json=body, headers=headers, buffered=False)


def test_every_route_hides_another_keys_resource(app, client, owned):
    tried = []
    for method, pattern in id_routes(app):
        path = fill(pattern, owned)
        response = send(client, method, path, "bob")
        try:
            assert response.status_code == 404, (method, path, response.get_json())
            assert response.mimetype == "application/problem+json"
            # Not a word of ann's resource (its owner, its record) leaks into the answer.
            assert "ann" not in response.get_data(as_text=True)
        finally:
            response.close()
        tried.append(f"{method} {pattern}")
    # The routes the contract names are among those read from the url_map.
    for expected in (
        "DELETE /v1/datasets/<dataset_id>",
        "POST /v1/jobs/<job_id>:cancel",
        "DELETE /v1/jobs/<job_id>",
        "POST /v1/sweeps/<sweep_id>:cancel",
        "DELETE /v1/sweeps/<sweep_id>",
        "GET /v1/jobs/<job_id>/logs",
        "GET /v1/jobs/<job_id>/metrics",
        "GET /v1/models/<model>/download",
        "POST /v1/models/<model>:predict",
        "POST /v2/models/<model>/infer",
        "PATCH /v1/uploads/<upload_id>",
        "DELETE /v1/uploads/<upload_id>",
    ):
        assert expected in tried
    # Nothing of ann's was cancelled or deleted by bob's tries.
    job = client.get(f"/v1/jobs/{owned['job']}", headers=as_("ann")).get_json()
    assert job["status"] == "queued"
    assert client.get(f"/v1/datasets/{owned['dataset']}", headers=as_("ann")).status_code == 200


@pytest.mark.parametrize("who", ["ann", "ops"])
def test_the_owner_and_an_admin_reach_it(client, owned, who):
    job, model, dataset = owned["job"], owned["model"], owned["dataset"]
    for path in (
        f"/v1/datasets/{dataset}",
        f"/v1/jobs/{job}",
        f"/v1/jobs/{job}/metrics",
        f"/v1/jobs/{job}/logs",
        f"/v1/models/{model}",
        "/v1/models/tiny",
        f"/v1/models/{model}/metadata",
        f"/v1/models/{model}/download",
        f"/v2/models/{model}",
    ):
        assert client.get(path, headers=as_(who)).status_code == 200, path
    for path in (f"/v1/models/{model}:predict", f"/v2/models/{model}/infer"):
        response = send(client, "POST", path, who)
        assert response.status_code == 200, (path, response.get_json())
        assert response.headers["X-Model-Version"] == "1"
    assert client.post(f"/v1/jobs/{job}:cancel", headers=as_(who)).status_code == 202
    assert client.delete(f"/v1/jobs/{job}", headers=as_(who)).status_code == 204
    # The queued batch prediction reads the dataset: it ends before the dataset can go.
    batch = owned["batch"]
    assert client.post(f"/v1/batch-predictions/{batch}:cancel", headers=as_(who)).status_code == 202
    assert client.delete(f"/v1/datasets/{dataset}", headers=as_(who)).status_code == 204


def test_a_model_name_does_not_reach_another_keys_model(client, owned):
    assert client.get("/v1/models/tiny", headers=as_("bob")).status_code == 404
    response = send(client, "POST", "/v1/models/tiny:predict", "bob")
    assert response.status_code == 404


def ids(response) -> set[str]:
    assert response.status_code == 200, response.get_json()
    return {item["id"] if "id" in item else item["model"] for item in response.get_json()["items"]}


def test_lists_show_a_key_its_own_and_an_admin_all(client, owned):
    bob_upload = client.post("/v1/datasets", json={"arrays": {"x": X, "y": Y}}, headers=as_("bob"))
    bob_dataset = bob_upload.get_json()["id"]
    assert ids(client.get("/v1/datasets", headers=as_("bob"))) == {bob_dataset}
    assert ids(client.get("/v1/datasets", headers=as_("ann"))) == {owned["dataset"]}
    assert ids(client.get("/v1/datasets", headers=as_("ops"))) == {owned["dataset"], bob_dataset}
    assert ids(client.get("/v1/jobs", headers=as_("bob"))) == set()
    assert ids(client.get("/v1/jobs", headers=as_("ops"))) == {owned["job"]}
    assert client.get("/v1/models", headers=as_("bob")).get_json()["items"] == []
    assert len(client.get("/v1/models", headers=as_("ops")).get_json()["items"]) == 1
    assert len(client.get("/v1/models", headers=as_("ann")).get_json()["items"]) == 1


def test_another_keys_dataset_cannot_be_trained_on(client, owned):
    for path in ("/v1/jobs", "/v1/jobs:validate"):
        response = client.post(path, json=job_request(owned["dataset"]), headers=as_("bob"))
        assert response.status_code == 422, path
        assert response.get_json()["errors"][0]["path"] == "/data/dataset"


def test_owners_are_kept_in_the_manifests(owned, settings: Settings):
    data = DataDir(settings.data_dir)
    assert read_json(data.dataset(owned["dataset"]) / "manifest.json")["owner"] == "ann"
    assert read_json(data.job(owned["job"]) / "job.json")["owner"] == "ann"
    assert read_json(data.job(owned["job"]) / "manifest.json")["owner"] == "ann"
