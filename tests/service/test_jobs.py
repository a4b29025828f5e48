"""`/v1/jobs` through the Flask app, against a real Redis (no worker: jobs stay queued)."""

from __future__ import annotations

import pytest
import redis

from core.queues import broker_lists
from core.storage import new_id

X = [[float(i % 7), float(i % 3), 1.0, 0.5] for i in range(16)]
Y = [i % 2 for i in range(16)]


def broker_messages(url: str, queue: str = "train") -> int:
    """Messages waiting in a Celery queue on Redis (one list per priority step)."""
    client = redis.Redis.from_url(url)
    return sum(client.llen(name) for name in broker_lists(queue))


def job_request(dataset_id: str, **changes: object) -> dict:
    request = {
        "name": "tiny",
        "model": {
            "input_shape": [4],
            "layers": [
                {"class_name": "Dense", "config": {"units": 4, "activation": "relu"}},
                {"class_name": "Dense", "config": {"units": 2, "activation": "softmax"}},
            ],
        },
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy"},
        "fit": {"epochs": 2, "batch_size": 8},
        "data": {"dataset": dataset_id, "x": "x", "y": "y"},
    }
    request.update(changes)
    return request


@pytest.fixture
def dataset_id(client) -> str:
    response = client.post("/v1/datasets", json={"arrays": {"x": X, "y": Y}})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def submit(client, dataset_id: str, **headers: str):
    return client.post("/v1/jobs", json=job_request(dataset_id), headers=headers)


def test_submit_records_and_enqueues(client, dataset_id, settings):
    response = submit(client, dataset_id, **{"X-Request-ID": "req-1"})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["status"] == "queued"
    assert job["attempt"] == 0
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert broker_messages(settings.redis_url) == 1
    assert (settings.data_dir / "jobs" / job["id"] / "job.json").is_file()
    shown = client.get(job["links"]["self"]).get_json()
    assert shown["id"] == job["id"]
    assert shown["progress"]["fraction"] == 0.0
    assert shown["error"] is None
    assert shown["queue"]["name"] == "train"
    assert shown["queue"]["workers"] == 0
    assert "Waiting for a worker" in shown["queue"]["message"]


def test_invalid_request_is_422_and_enqueues_nothing(client, dataset_id, settings):
    body = job_request(dataset_id, fit={"epochs": -1})
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["errors"][0]["path"].startswith("/fit/epochs")
    assert broker_messages(settings.redis_url) == 0
    assert client.get("/v1/jobs").get_json()["items"] == []


def test_unknown_dataset_is_422_at_data_dataset(client, settings):
    response = client.post("/v1/jobs", json=job_request(new_id()))
    assert response.status_code == 422
    assert any(e["path"] == "/data/dataset" for e in response.get_json()["errors"])


def test_idempotency_key_returns_the_same_job(client, dataset_id, settings):
    first = submit(client, dataset_id, **{"Idempotency-Key": "k-1"})
    again = submit(client, dataset_id, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert broker_messages(settings.redis_url) == 1
    other = client.post(
        "/v1/jobs",
        json=job_request(dataset_id, name="other"),
        headers={"Idempotency-Key": "k-1"},
    )
    assert other.status_code == 409
    bad = submit(client, dataset_id, **{"Idempotency-Key": "with space"})
    assert bad.status_code == 422
    assert bad.get_json()["errors"][0]["path"] == "/headers/Idempotency-Key"


def test_list_filters_by_status_and_pages(client, dataset_id, store):
    ids = [submit(client, dataset_id).get_json()["id"] for _ in range(3)]
    store.transition(ids[0], "running")
    page = client.get("/v1/jobs?limit=2").get_json()
    rest = client.get(f"/v1/jobs?limit=2&cursor={page['next_cursor']}").get_json()
    assert [j["id"] for j in page["items"] + rest["items"]] == ids[::-1]
    assert rest["next_cursor"] is None
    running = client.get("/v1/jobs?status=running").get_json()["items"]
    assert [j["id"] for j in running] == [ids[0]]
    bad = client.get("/v1/jobs?status=sleeping")
    assert bad.status_code == 422
    assert bad.get_json()["errors"][0]["received"] == "sleeping"


def test_cancel_and_delete(client, dataset_id, store, settings):
    queued = submit(client, dataset_id).get_json()["id"]
    assert client.delete(f"/v1/jobs/{queued}").status_code == 409
    cancelled = client.post(f"/v1/jobs/{queued}:cancel")
    assert cancelled.status_code == 202
    assert cancelled.get_json()["status"] == "cancelled"
    running = submit(client, dataset_id).get_json()["id"]
    store.transition(running, "running")
    assert client.post(f"/v1/jobs/{running}:cancel").get_json()["status"] == "cancelling"
    store.transition(running, "failed", reason="internal", message="boom")
    assert client.post(f"/v1/jobs/{running}:cancel").status_code == 409
    assert client.get(f"/v1/jobs/{running}").get_json()["error"] == {
        "reason": "internal",
        "message": "boom",
    }
    assert client.delete(f"/v1/jobs/{queued}").status_code == 204
    assert client.get(f"/v1/jobs/{queued}").status_code == 404
    assert not (settings.data_dir / "jobs" / queued).exists()


def test_metrics_and_logs(client, dataset_id, store, settings):
    job_id = submit(client, dataset_id).get_json()["id"]
    store.record_epoch(job_id, 1, {"loss": 0.9})
    store.record_epoch(job_id, 2, {"loss": 0.5, "accuracy": 0.7})
    metrics = client.get(f"/v1/jobs/{job_id}/metrics").get_json()
    assert metrics == {"epochs": [1, 2], "history": {"accuracy": [None, 0.7], "loss": [0.9, 0.5]}}
    assert client.get(f"/v1/jobs/{job_id}/logs").get_json() == {"lines": []}
    (settings.data_dir / "jobs" / job_id / "train.log").write_text("a\nb\nc\n")
    assert client.get(f"/v1/jobs/{job_id}/logs?tail=2").get_json() == {"lines": ["b", "c"]}
    assert client.get(f"/v1/jobs/{job_id}/logs?tail=0").status_code == 422


def test_unknown_and_malformed_ids_are_404(client):
    for path in (f"/v1/jobs/{new_id()}", "/v1/jobs/..%2Fetc", f"/v1/jobs/{new_id()}/metrics"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.mimetype == "application/problem+json"
    assert client.post(f"/v1/jobs/{new_id()}:cancel").status_code == 404


def test_redis_down_is_503_with_nothing_recorded(tmp_path, client, dataset_id, settings):
    from service import create_app

    down = create_app(settings.with_overrides(redis_url="redis://127.0.0.1:1/0"))
    # The dataset lives on the shared data folder; only Redis is away.
    response = down.test_client().post("/v1/jobs", json=job_request(dataset_id))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert response.mimetype == "application/problem+json"
    assert list((settings.data_dir / "jobs").iterdir()) == []


def test_keys_see_their_own_jobs_and_admins_see_all(settings):
    from core.keys import hash_key
    from service import create_app

    keys = {"ann": "fs_ann", "bob": "fs_bob", "ops": "fs_ops"}
    entries = [f"{name}:{hash_key(key)}" for name, key in keys.items()]
    app = create_app(settings.with_overrides(api_keys=",".join(entries) + ":admin"))
    client = app.test_client()

    def as_(name: str) -> dict:
        return {"Authorization": f"Bearer {keys[name]}"}

    upload = client.post("/v1/datasets", json={"arrays": {"x": X, "y": Y}}, headers=as_("ann"))
    dataset_id = upload.get_json()["id"]
    job = client.post("/v1/jobs", json=job_request(dataset_id), headers=as_("ann")).get_json()
    assert job["owner"] == "ann"
    refused = client.post("/v1/jobs", json=job_request(dataset_id), headers=as_("bob"))
    assert refused.status_code == 422
    assert client.get(f"/v1/jobs/{job['id']}", headers=as_("bob")).status_code == 404
    assert client.post(f"/v1/jobs/{job['id']}:cancel", headers=as_("bob")).status_code == 404
    assert client.get("/v1/jobs", headers=as_("bob")).get_json()["items"] == []
    assert [j["id"] for j in client.get("/v1/jobs", headers=as_("ann")).get_json()["items"]] == [
        job["id"]
    ]
    assert len(client.get("/v1/jobs", headers=as_("ops")).get_json()["items"]) == 1
    assert client.get("/v1/jobs").status_code == 401


def succeed_one_epoch(job_dir, spec, data, settings, control, *, resume) -> dict:
    """What core.training.train_job tells the store over one epoch, with a final model."""
    metrics = {"loss": 0.5, "accuracy": 0.75}
    control.report_progress(
        {
            "epoch": 1,
            "epochs": 1,
            "step": 2,
            "steps": 2,
            "fraction": 1.0,
            "eta_seconds": 0.0,
            "metrics": metrics,
        }
    )
    control.report_epoch(1, metrics)
    entry = {"version": 1, "file": "checkpoints/epoch-0001.keras", "sha256": "0" * 64}
    control.record_checkpoints(
        [entry | {"bytes": 10, "partial": False}], {"version": 1, "monitor": "loss", "value": 0.5}
    )
    final = {"file": "model.keras", "sha256": "1" * 64, "bytes": 10, "version": 1}
    return {"status": "succeeded", "epoch": 1, "metrics": metrics, "final": final}


def test_job_views_match_the_generated_schema(client, dataset_id, store):
    """Queued, trained and failed jobs as the API shows them, against /openapi.json's Job."""
    from core.runs import WorkerIdentity, run_job
    from core.training import TrainingFailed
    from tests.service.test_openapi import validator

    document = client.get("/openapi.json").get_json()
    job_schema, page_schema = validator(document, "Job"), validator(document, "JobPage")
    queued = submit(client, dataset_id).get_json()
    job_schema.validate(queued)
    job_schema.validate(client.get(queued["links"]["self"]).get_json())

    def diverge(*args: object, **kwargs: object) -> dict:
        raise TrainingFailed("nan_loss", "The loss became NaN at epoch 1.")

    device = {"devices": ["/device:CPU:0"], "gpus": [], "tensorflow": "2.21.0", "cuda": None}
    for train in (succeed_one_epoch, diverge):
        job_id = submit(client, dataset_id).get_json()["id"]
        run_job(
            store,
            store.get(job_id),
            WorkerIdentity("w1@test"),
            train=train,
            send=lambda job: None,
            devices=lambda: device,
        )
        shown = client.get(f"/v1/jobs/{job_id}").get_json()
        job_schema.validate(shown)
    listed = client.get("/v1/jobs").get_json()
    page_schema.validate(listed)
    trained, failed = listed["items"][1], listed["items"][0]
    assert (trained["status"], failed["status"]) == ("succeeded", "failed")
    assert trained["checkpoints"][0]["version"] == trained["final"]["version"] == 1
    assert trained["worker"] == "w1@test"
    assert trained["record"]["tensorflow"] == "2.21.0"
    assert trained["timings"]["running_seconds"] >= 0
    assert failed["error"] == {"reason": "nan_loss", "message": "The loss became NaN at epoch 1."}
