"""`/v1/sweeps` through the Flask app, against a real Redis (no task worker: the driver's first
step waits in its queue, so the sweep stays as submitted)."""

from __future__ import annotations

import redis

from core.queues import SWEEPS_QUEUE, broker_lists
from tests.service.test_jobs import job_request

X = [[float(i % 7), float(i % 3), 1.0, 0.5] for i in range(16)]
Y = [i % 2 for i in range(16)]
UNITS = "/model/layers/0/config/units"


def sweep_request(dataset_id: str, **changes: object) -> dict:
    body = {
        "base": job_request(dataset_id),
        "space": {UNITS: {"int": [2, 8], "step": 2}},
        "objective": {"metric": "loss", "mode": "min"},
        "max_trials": 3,
    }
    body.update(changes)
    return body


def dataset(client) -> str:
    response = client.post("/v1/datasets", json={"arrays": {"x": X, "y": Y}})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def test_a_sweep_is_recorded_its_driver_enqueued_and_listed(client, settings) -> None:
    response = client.post("/v1/sweeps", json=sweep_request(dataset(client)))
    assert response.status_code == 202, response.get_json()
    sweep = response.get_json()
    assert response.headers["Location"] == f"/v1/sweeps/{sweep['id']}"
    assert sweep["status"] == "running"
    assert sweep["trials"] == []
    assert sweep["max_concurrent"] == 2
    waiting = redis.Redis.from_url(settings.redis_url)
    assert sum(waiting.llen(name) for name in broker_lists(SWEEPS_QUEUE)) == 1
    assert (settings.data_dir / "sweeps" / sweep["id"] / "sweep.json").is_file()
    assert client.get(f"/v1/sweeps/{sweep['id']}").get_json()["id"] == sweep["id"]
    listed = client.get("/v1/sweeps?limit=1").get_json()
    assert [item["id"] for item in listed["items"]] == [sweep["id"]]
    assert client.delete(f"/v1/sweeps/{sweep['id']}").status_code == 409


def test_a_bad_sweep_is_a_problem_with_pointers(client) -> None:
    body = sweep_request(dataset(client), space={UNITS: {"int": [2, 10**9]}}, sampler="bayes")
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 422
    assert response.content_type.startswith("application/problem+json")
    assert [e["path"] for e in response.get_json()["errors"]] == ["/sampler"]
    body["sampler"] = "grid"
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 422
    assert [e["path"] for e in response.get_json()["errors"]] == [
        "/space/~1model~1layers~10~1config~1units"
    ]


def test_an_unknown_sweep_is_a_404_and_a_bad_cursor_a_422(client) -> None:
    assert client.get("/v1/sweeps/" + "0" * 32).status_code == 404
    assert client.post("/v1/sweeps/../x:cancel").status_code == 404
    response = client.get("/v1/sweeps?cursor=nope")
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["path"] == "/cursor"
