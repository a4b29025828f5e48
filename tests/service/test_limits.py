"""Rate limits and job quotas per API key, counted in the real Redis the tests start."""

from __future__ import annotations

import logging
import time

from prometheus_client import REGISTRY

from core.keys import hash_key
from core.settings import Settings
from service import create_app
from service.limits import WINDOW_SECONDS
from tests.service.test_jobs import X, Y, job_request

KEYS = {"ann": "fs_ann", "bob": "fs_bob"}


def keyed(settings: Settings, **changes: object):
    entries = ",".join(f"{name}:{hash_key(key)}" for name, key in KEYS.items())
    return create_app(settings.with_overrides(api_keys=entries, **changes)).test_client()


def as_(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def inside_one_window() -> None:
    """Wait out the last seconds of a counting window so a test's requests share one."""
    left = WINDOW_SECONDS - time.time() % WINDOW_SECONDS
    if left < 3:
        time.sleep(left + 0.1)


def assert_rate_limited(response) -> None:
    assert response.status_code == 429, response.get_json()
    assert response.mimetype == "application/problem+json"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    problem = response.get_json()
    assert problem["code"] == "rate_limited"
    assert "3 requests per minute" in problem["detail"]


def test_a_key_past_its_rate_is_429_and_others_go_on(settings):
    inside_one_window()
    client = keyed(settings, rate_limit=3)
    for _ in range(3):
        assert client.get("/v1/jobs", headers=as_("ann")).status_code == 200
    assert_rate_limited(client.get("/v1/jobs", headers=as_("ann")))
    assert client.get("/v1/jobs", headers=as_("bob")).status_code == 200
    # Health checks are never counted.
    assert client.get("/healthz").status_code == 200


def test_the_count_is_shared_by_every_api_process(settings):
    inside_one_window()
    # Two apps stand for two gunicorn workers: they share only Redis.
    first, second = keyed(settings, rate_limit=3), keyed(settings, rate_limit=3)
    assert first.get("/v1/jobs", headers=as_("ann")).status_code == 200
    assert second.get("/v1/jobs", headers=as_("ann")).status_code == 200
    assert first.get("/v1/datasets", headers=as_("ann")).status_code == 200
    assert_rate_limited(second.get("/v1/datasets", headers=as_("ann")))


def test_without_keys_clients_are_counted_by_address(settings):
    inside_one_window()
    client = create_app(settings.with_overrides(rate_limit=3)).test_client()
    one, other = {"REMOTE_ADDR": "10.0.0.1"}, {"REMOTE_ADDR": "10.0.0.2"}
    for _ in range(3):
        assert client.get("/v1/jobs", environ_base=one).status_code == 200
    assert_rate_limited(client.get("/v1/jobs", environ_base=one))
    assert client.get("/v1/jobs", environ_base=other).status_code == 200


def test_zero_turns_the_rate_limit_off(settings):
    client = create_app(settings.with_overrides(rate_limit=0)).test_client()
    assert all(client.get("/v1/jobs").status_code == 200 for _ in range(20))


def fail_open_count() -> float:
    return REGISTRY.get_sample_value("fitserve_rate_limit_fail_open_total") or 0.0


def test_the_limiter_fails_open_when_redis_is_down(settings, caplog):
    client = keyed(settings, rate_limit=1, redis_url="redis://127.0.0.1:1/0")
    before = fail_open_count()
    with caplog.at_level(logging.WARNING, logger="fitserve.service"):
        # Datasets are read from the volume, so the request itself does not need Redis.
        for _ in range(3):
            assert client.get("/v1/datasets", headers=as_("ann")).status_code == 200
    assert fail_open_count() == before + 3
    assert "rate_limit_fail_open" in caplog.text


def upload(client, name: str) -> str:
    response = client.post("/v1/datasets", json={"arrays": {"x": X, "y": Y}}, headers=as_(name))
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def test_a_key_at_its_job_quota_is_429_naming_it(settings):
    client = keyed(settings, max_active_jobs_per_key=2)
    ann_data, bob_data = upload(client, "ann"), upload(client, "bob")
    first = client.post(
        "/v1/jobs", json=job_request(ann_data), headers={**as_("ann"), "Idempotency-Key": "k1"}
    )
    second = client.post("/v1/jobs", json=job_request(ann_data), headers=as_("ann"))
    assert (first.status_code, second.status_code) == (202, 202)

    refused = client.post("/v1/jobs", json=job_request(ann_data), headers=as_("ann"))
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "30"
    problem = refused.get_json()
    assert problem["code"] == "quota_exceeded"
    assert "FITSERVE_MAX_ACTIVE_JOBS_PER_KEY" in problem["detail"]
    assert "2 are live" in problem["detail"]
    assert len(list((settings.data_dir / "jobs").iterdir())) == 2

    # A repeated submit of an existing job is not a new job: it still answers.
    replay = client.post(
        "/v1/jobs", json=job_request(ann_data), headers={**as_("ann"), "Idempotency-Key": "k1"}
    )
    assert replay.status_code == 200
    # Another key has its own quota.
    assert (
        client.post("/v1/jobs", json=job_request(bob_data), headers=as_("bob")).status_code == 202
    )
    # A job that ends frees its slot.
    job_id = first.get_json()["id"]
    assert client.post(f"/v1/jobs/{job_id}:cancel", headers=as_("ann")).status_code == 202
    assert (
        client.post("/v1/jobs", json=job_request(ann_data), headers=as_("ann")).status_code == 202
    )
