"""Usage, the byte quota and pinning through the Flask app, against a real Redis."""

from __future__ import annotations

import numpy as np
import pytest

from core.settings import Settings
from service import create_app
from tests.conftest import ReadingClient
from tests.service.test_jobs import job_request
from tests.support.datasets import upload_npz

ARRAYS = {"x": np.ones((16, 4), "float32"), "y": np.arange(16) % 2}


def test_usage_counts_what_the_key_stores(client) -> None:
    empty = client.get("/v1/usage").get_json()
    assert empty["bytes"] == 0
    assert empty["job_ttl_seconds"] is None
    dataset_id = upload_npz(client, ARRAYS)
    assert client.post("/v1/jobs", json=job_request(dataset_id)).status_code == 202
    usage = client.get("/v1/usage").get_json()
    assert usage["datasets"]["count"] == 1
    assert usage["jobs"]["count"] == 1
    assert usage["checkpoints"] == {"count": 0, "bytes": 0}
    kinds = ("datasets", "jobs", "checkpoints", "exports")
    assert usage["bytes"] == sum(usage[kind]["bytes"] for kind in kinds) > 0


def test_pin_and_unpin_change_the_jobs_retention(client) -> None:
    job = client.post("/v1/jobs", json=job_request(upload_npz(client, ARRAYS))).get_json()
    assert job["retention"] == {"pinned": False, "expires_at": None}
    pinned = client.post(f"/v1/jobs/{job['id']}:pin")
    assert pinned.status_code == 200
    assert pinned.get_json()["retention"]["pinned"] is True
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["retention"]["pinned"] is True
    unpinned = client.post(f"/v1/jobs/{job['id']}:unpin").get_json()
    assert unpinned["retention"]["pinned"] is False
    assert client.post(f"/v1/jobs/{'0' * 32}:pin").status_code == 404


@pytest.fixture
def tight(settings: Settings):
    """An app whose byte quota one small dataset nearly fills."""
    app = create_app(settings.with_overrides(storage_quota_bytes=4096))
    app.test_client_class = ReadingClient
    return app.test_client()


def test_a_job_past_the_byte_quota_is_a_507(tight) -> None:
    dataset_id = upload_npz(tight, ARRAYS)
    # Each job's records take their bytes too, until none is left.
    for _ in range(100):
        if tight.get("/v1/usage").get_json()["bytes"] >= 4096:
            break
        response = tight.post("/v1/jobs", json=job_request(dataset_id))
        assert response.status_code == 202, response.get_json()
    refused = tight.post("/v1/jobs", json=job_request(dataset_id))
    assert refused.status_code == 507
    assert refused.mimetype == "application/problem+json"
    problem = refused.get_json()
    assert problem["code"] == "insufficient_storage"
    assert "FITSERVE_STORAGE_QUOTA_BYTES" in problem["detail"]
    assert "GET /v1/usage" in problem["detail"]
