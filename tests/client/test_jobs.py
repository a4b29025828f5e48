"""Jobs through the client and the CLI over real HTTP, with no worker: they stay queued.

Training itself is driven end to end in tests/e2e/test_client.py.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from client import Client, FitserveError, JobFailed
from tests.client.conftest import fitserve, serve
from tests.support.processes import free_port, wait_for


@pytest.fixture
def api(server_url) -> Client:
    return Client(server_url)


@pytest.fixture
def spec(api) -> dict:
    return small_request(api)


def small_request(api: Client) -> dict:
    """A small valid request in the short Sequential form, on a freshly uploaded dataset."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    dataset = api.upload_arrays({"x": x, "y": y})
    return {
        "name": "small",
        "model": {
            "input_shape": [8],
            "layers": [
                {"class_name": "Dense", "config": {"units": 4, "activation": "relu"}},
                {"class_name": "Dense", "config": {"units": 3, "activation": "softmax"}},
            ],
        },
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy"},
        "fit": {"epochs": 1, "batch_size": 8},
        "data": {"dataset": dataset["id"], "x": "x", "y": "y"},
    }


def test_submit_show_list_cancel_and_delete(api, spec):
    job = api.submit(spec)
    assert job["status"] == "queued"
    assert api.get_job(job["id"])["name"] == "small"
    assert [j["id"] for j in api.list_jobs()] == [job["id"]]
    assert [j["id"] for j in api.list_jobs(status="queued")] == [job["id"]]
    assert api.list_jobs(status="running") == []

    assert api.cancel_job(job["id"])["status"] == "cancelled"
    with pytest.raises(JobFailed) as caught:
        api.wait(job["id"], progress=False, timeout=10)
    assert caught.value.job["status"] == "cancelled"
    assert api.job_logs(job["id"]) == []
    assert api.job_metrics(job["id"]) == {}

    api.delete_job(job["id"])
    with pytest.raises(FitserveError) as missing:
        api.get_job(job["id"])
    assert missing.value.status == 404


def test_following_rides_out_a_server_restart(settings):
    port = free_port()
    with serve(settings, port) as url:
        api = Client(url, timeout=2)
        job = api.submit(small_request(api))
        seen: list[dict] = []

        def follow() -> None:
            for record in api.follow(job["id"], interval=0.05, retries=8):
                seen.append(record)

        follower = threading.Thread(target=follow)
        follower.start()
        wait_for(lambda: len(seen) >= 2, 10, "the follower's first polls")
    # The server is gone for a moment (several polls' worth): the follower keeps asking.
    time.sleep(0.5)
    assert follower.is_alive()
    with serve(settings, port):
        api.cancel_job(job["id"])
        follower.join(20)
    assert not follower.is_alive()
    assert seen[0]["status"] == "queued"
    assert seen[-1]["status"] == "cancelled"


def test_deleting_a_live_job_is_a_409(api, spec):
    job = api.submit(spec)
    with pytest.raises(FitserveError) as caught:
        api.delete_job(job["id"])
    assert caught.value.status == 409
    assert caught.value.code == "conflict"


def test_an_idempotency_key_returns_the_same_job(api, spec):
    first = api.submit(spec, idempotency_key="nightly-1")
    again = api.submit(spec, idempotency_key="nightly-1")
    assert again["id"] == first["id"]
    assert len(api.list_jobs()) == 1


def test_validate_returns_the_summary_or_every_error(api, spec):
    summary = api.validate(spec)
    assert summary["total_params"] == 8 * 4 + 4 + 4 * 3 + 3
    spec["fit"]["epochs"] = 0
    spec["data"]["x"] = "nope"
    with pytest.raises(FitserveError) as caught:
        api.validate(spec)
    assert caught.value.status == 422
    paths = {error["path"] for error in caught.value.errors}
    assert {"/fit/epochs", "/data/x"} <= paths
    assert api.list_jobs() == []


def test_nan_in_a_request_is_refused_before_sending(api, spec):
    spec["compile"] = {"optimizer": {"class_name": "Adam", "config": {"learning_rate": np.nan}}}
    with pytest.raises(ValueError, match="NaN"):
        api.submit(spec)


def test_cli_submit_show_list_follow_cancel_rm(server_url, spec, tmp_path):
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(spec))
    url = ["--url", server_url]

    submitted = fitserve("jobs", "submit", str(spec_file), *url, "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]

    listed = fitserve("jobs", "list", *url)
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "EPOCH", "QUEUE", "TAGS", "CREATED"]
    assert row.split()[:5] == [job_id, "small", "queued", "0", "1"]
    assert json.loads(fitserve("jobs", "show", job_id, *url, "--json").stdout)["status"] == "queued"
    shown = [line.split() for line in fitserve("jobs", "show", job_id, *url).stdout.splitlines()]
    assert ["id", job_id] in shown
    assert ["queue", "1", "(0", "ahead)"] in shown

    cancelled = fitserve("jobs", "cancel", job_id, *url)
    assert cancelled.stdout.split() == [job_id, "cancelled"]
    followed = fitserve("jobs", "follow", job_id, *url, "--json")
    assert followed.returncode == 4
    assert json.loads(followed.stdout)["status"] == "cancelled"
    assert f"Job {job_id} ended cancelled" in followed.stderr

    assert fitserve("jobs", "logs", job_id, *url, "--json").stdout.strip() == '{\n  "lines": []\n}'
    assert fitserve("jobs", "rm", job_id, *url).stdout.strip() == f"deleted job {job_id}"


def test_cli_shows_each_field_error_of_a_refused_request(server_url, spec, tmp_path):
    spec["fit"]["epochs"] = 0
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(spec))
    result = fitserve("jobs", "validate", str(spec_file), "--url", server_url)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: 422 invalid_request: ")
    assert any(line.startswith("  /fit/epochs: ") for line in lines)
    assert lines[-1].startswith("  request id: ")
