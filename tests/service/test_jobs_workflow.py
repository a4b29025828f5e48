"""The work around a job through the Flask app, against a real Redis (no worker: jobs stay
queued): the raw request kept, clone with a merge patch or setters, tags and their filter,
warm-start checks at submit, and queued jobs' places in the queue."""

from __future__ import annotations

import pytest

from core.jobs import JobStore
from core.storage import read_json
from tests.service.test_jobs import X, Y, job_request

MERGE_PATCH = "application/merge-patch+json"


@pytest.fixture
def dataset_id(client) -> str:
    response = client.post("/v1/datasets", json={"arrays": {"x": X, "y": Y}})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def submit(client, body: dict, **headers: str) -> dict:
    response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def paths(response) -> list[str]:
    assert response.status_code == 422, response.get_json()
    return [error["path"] for error in response.get_json()["errors"]]


# The raw request --------------------------------------------------------------------------


def test_the_raw_request_is_kept_beside_the_normalized_one(client, dataset_id, settings):
    body = job_request(dataset_id, tags={"project": "mnist"})
    job = submit(client, body)
    folder = settings.data_dir / "jobs" / job["id"]
    assert read_json(folder / "request.json") == body
    assert read_json(folder / "job.json")["spec"]["model"]["layers"][0]["name"] == "dense"
    assert job["tags"] == {"project": "mnist"}
    assert job["cloned_from"] is None


def test_a_job_stored_before_requests_were_kept_clones_from_its_normalized_request(
    client, dataset_id, settings
):
    job = submit(client, job_request(dataset_id))
    (settings.data_dir / "jobs" / job["id"] / "request.json").unlink()
    response = client.post(f"/v1/jobs/{job['id']}:clone", json={"fit": {"epochs": 3}})
    assert response.status_code == 202, response.get_json()
    clone = response.get_json()
    spec = read_json(settings.data_dir / "jobs" / clone["id"] / "job.json")["spec"]
    assert spec["fit"]["epochs"] == 3


# Clone ------------------------------------------------------------------------------------


def test_clone_applies_a_merge_patch_to_the_raw_request(client, dataset_id, settings):
    job = submit(client, job_request(dataset_id, tags={"project": "mnist", "owner": "ann"}))
    response = client.post(
        f"/v1/jobs/{job['id']}:clone",
        data=b'{"fit": {"epochs": 5}, "tags": {"owner": null}}',
        content_type=MERGE_PATCH,
    )
    assert response.status_code == 202, response.get_json()
    clone = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{clone['id']}"
    assert clone["cloned_from"] == job["id"]
    assert clone["tags"] == {"project": "mnist"}
    raw = read_json(settings.data_dir / "jobs" / clone["id"] / "request.json")
    assert raw["fit"] == {"epochs": 5, "batch_size": 8}
    assert client.get(f"/v1/jobs/{clone['id']}").get_json()["cloned_from"] == job["id"]


def test_clone_setters_reach_into_arrays_after_the_patch(client, dataset_id, settings):
    job = submit(client, job_request(dataset_id))
    body = {
        "patch": {"fit": {"epochs": 4}},
        "set": {"/model/layers/0/config/units": 9, "/fit/batch_size": 4},
    }
    response = client.post(f"/v1/jobs/{job['id']}:clone", json=body)
    assert response.status_code == 202, response.get_json()
    spec = read_json(settings.data_dir / "jobs" / response.get_json()["id"] / "job.json")["spec"]
    assert spec["model"]["layers"][0]["config"]["units"] == 9
    assert (spec["fit"]["epochs"], spec["fit"]["batch_size"]) == (4, 4)


def test_an_empty_body_clones_the_request_unchanged(client, dataset_id, settings):
    job = submit(client, job_request(dataset_id))
    response = client.post(f"/v1/jobs/{job['id']}:clone")
    assert response.status_code == 202, response.get_json()
    clone = response.get_json()
    folder = settings.data_dir / "jobs"
    assert read_json(folder / clone["id"] / "request.json") == read_json(
        folder / job["id"] / "request.json"
    )


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"set": {"/model/layers/7/config/units": 3}}, "/set/~1model~1layers~17~1config~1units"),
        ({"set": {"fit.epochs": 3}}, "/set/fit.epochs"),
        ({"set": {"/fit/epochs": -1}}, "/set/~1fit~1epochs"),
        ({"patch": {"fit": {"epochs": 0}}}, "/patch/fit/epochs"),
        ({"fit": {"epochs": 0}}, "/fit/epochs"),
        ({"patch": [1]}, "/patch"),
        ({"set": [1]}, "/set"),
        ({"set": {}, "other": 1}, "/other"),
        ([1, 2], "/"),
    ],
)
def test_clone_errors_point_into_the_patch(client, dataset_id, body, path):
    job = submit(client, job_request(dataset_id))
    assert path in paths(client.post(f"/v1/jobs/{job['id']}:clone", json=body))


def test_a_merge_patch_body_is_always_the_patch(client, dataset_id):
    """With merge-patch+json, a `set` key is a request key, which the grammar refuses."""
    job = submit(client, job_request(dataset_id))
    response = client.post(
        f"/v1/jobs/{job['id']}:clone", data=b'{"set": {"/fit/epochs": 3}}', content_type=MERGE_PATCH
    )
    assert paths(response) == ["/set"]


def test_clone_honours_the_idempotency_key(client, dataset_id):
    job = submit(client, job_request(dataset_id))
    url = f"/v1/jobs/{job['id']}:clone"
    first = client.post(url, json={"fit": {"epochs": 3}}, headers={"Idempotency-Key": "k1"})
    again = client.post(url, json={"fit": {"epochs": 3}}, headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    other = client.post(url, json={"fit": {"epochs": 4}}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409


def test_cloning_an_unknown_job_is_404(client):
    assert client.post(f"/v1/jobs/{'0' * 32}:clone", json={}).status_code == 404


# Tags -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "path"),
    [
        (["project"], "/tags"),
        ({"bad key": "x"}, "/tags/bad key"),
        ({"a:b": "x"}, "/tags/a:b"),
        ({"k": 3}, "/tags/k"),
        ({"k": "x" * 257}, "/tags/k"),
        ({f"k{i}": "v" for i in range(21)}, "/tags"),
    ],
)
def test_bad_tags_are_refused_where_they_are(client, dataset_id, tags, path):
    response = client.post("/v1/jobs", json=job_request(dataset_id, tags=tags))
    assert path in paths(response)


def test_the_tag_filter_keeps_jobs_with_every_tag_across_pages(client, dataset_id):
    made = []
    for index in range(7):
        tags = {"project": "mnist" if index % 2 == 0 else "cifar", "run": str(index % 3)}
        made.append((submit(client, job_request(dataset_id, tags=tags))["id"], tags))
    wanted = [job_id for job_id, tags in reversed(made) if tags["project"] == "mnist"]
    seen, cursor = [], None
    while True:
        query = {"tag": "project:mnist", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", query_string=query).get_json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == wanted
    both = client.get("/v1/jobs", query_string=[("tag", "project:mnist"), ("tag", "run:0")])
    assert [item["id"] for item in both.get_json()["items"]] == [
        job_id for job_id, tags in reversed(made) if tags == {"project": "mnist", "run": "0"}
    ]
    assert client.get("/v1/jobs?tag=project:none").get_json()["items"] == []


@pytest.mark.parametrize("query", ["tag=project", "tag=:x", "tag=a:1&tag=a:2"])
def test_a_malformed_tag_filter_is_422_at_tag(client, query):
    assert paths(client.get(f"/v1/jobs?{query}")) == ["/tag"]


def test_a_deleted_job_leaves_its_tag_index(client, dataset_id, store: JobStore):
    job = submit(client, job_request(dataset_id, tags={"project": "gone"}))
    assert client.post(f"/v1/jobs/{job['id']}:cancel").status_code == 202
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert client.get("/v1/jobs?tag=project:gone").get_json()["items"] == []


# Warm start at submit ---------------------------------------------------------------------


def with_checkpoints(store: JobStore, job_id: str, *versions: int) -> None:
    """Pretend the job wrote these checkpoints (submit reads only the manifest's entries)."""
    entries = [{"version": v, "file": f"checkpoints/epoch-{v:04d}.keras"} for v in versions]
    best = {"version": versions[0], "monitor": "loss", "value": 0.1}
    store.update(job_id, checkpoints=entries, best=best)


def test_a_warm_start_is_resolved_to_a_job_id_and_version(client, dataset_id, store, settings):
    source = submit(client, job_request(dataset_id, name="base"))
    with_checkpoints(store, source["id"], 1, 2)
    body = job_request(dataset_id, warm_start={"job": source["id"], "version": "latest"})
    job = submit(client, body)
    assert job["warm_start"] == {
        "job": source["id"],
        "version": 2,
        "strict": False,
        "loaded": None,
        "skipped": None,
    }
    spec = read_json(settings.data_dir / "jobs" / job["id"] / "job.json")["spec"]
    assert spec["warm_start"] == {"job": source["id"], "version": 2, "strict": False}
    by_default = submit(client, job_request(dataset_id, warm_start={"job": source["id"]}))
    assert by_default["warm_start"]["version"] == 1  # best


@pytest.mark.parametrize("version", [3, "final"])
def test_a_version_the_source_lacks_is_422_at_warm_start_version(
    client, dataset_id, store, version
):
    source = submit(client, job_request(dataset_id))
    with_checkpoints(store, source["id"], 1, 2)
    body = job_request(dataset_id, warm_start={"job": source["id"], "version": version})
    assert paths(client.post("/v1/jobs", json=body)) == ["/warm_start/version"]


def test_a_source_without_checkpoints_is_422_at_warm_start_version(client, dataset_id):
    source = submit(client, job_request(dataset_id))
    body = job_request(dataset_id, warm_start={"job": source["id"]})
    assert paths(client.post("/v1/jobs", json=body)) == ["/warm_start/version"]


def test_an_unknown_source_is_404(client, dataset_id):
    body = job_request(dataset_id, warm_start={"job": "0" * 32})
    assert client.post("/v1/jobs", json=body).status_code == 404


def test_a_strict_warm_start_names_the_layers_that_cannot_load(client, dataset_id, store):
    source = submit(client, job_request(dataset_id))
    with_checkpoints(store, source["id"], 1)
    layers = [
        {"class_name": "Dense", "config": {"units": 4, "activation": "relu"}},
        {"class_name": "Dense", "config": {"units": 8, "activation": "relu"}},
        {"class_name": "Dense", "config": {"units": 2, "activation": "softmax"}},
    ]
    body = job_request(
        dataset_id,
        model={"input_shape": [4], "layers": layers},
        warm_start={"job": source["id"], "strict": True},
    )
    response = client.post("/v1/jobs", json=body)
    assert paths(response) == ["/warm_start/strict"]
    message = response.get_json()["errors"][0]["message"]
    assert message.endswith("these do not: dense_1, output.")
    body["warm_start"]["strict"] = False
    assert client.post("/v1/jobs", json=body).status_code == 202


def test_validate_checks_the_warm_start_too(client, dataset_id):
    body = job_request(dataset_id, warm_start={"job": "0" * 32})
    assert client.post("/v1/jobs:validate", json=body).status_code == 404


# Queue position ---------------------------------------------------------------------------


def test_queued_jobs_count_their_place_by_priority_then_age(client, dataset_id):
    low = submit(client, job_request(dataset_id, priority=2))
    first = submit(client, job_request(dataset_id))
    second = submit(client, job_request(dataset_id))
    urgent = submit(client, job_request(dataset_id, priority=9))
    order = [urgent, first, second, low]
    for position, job in enumerate(order, start=1):
        queue = client.get(f"/v1/jobs/{job['id']}").get_json()["queue"]
        assert (queue["position"], queue["ahead"]) == (position, position - 1)
        # No worker consumes the queue: nobody can say when it starts.
        assert queue["expected_start"] is None
    listed = {
        item["id"]: item["queue"]["position"] for item in client.get("/v1/jobs").get_json()["items"]
    }
    assert listed == {job["id"]: position for position, job in enumerate(order, start=1)}
    assert client.post(f"/v1/jobs/{urgent['id']}:cancel").status_code == 202
    assert client.get(f"/v1/jobs/{low['id']}").get_json()["queue"]["position"] == 3
    assert "queue" not in client.get(f"/v1/jobs/{urgent['id']}").get_json()
