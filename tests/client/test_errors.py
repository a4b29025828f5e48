"""Problem documents become FitserveError; unreachable servers and refused keys are clear."""

from __future__ import annotations

import pytest

from client import Client, ConnectionFailed, FitserveError, JobFailed
from client.errors import describe_field_error
from tests.client.conftest import API_KEY
from tests.support.processes import free_port


def test_unknown_route_raises_with_the_problem_document(server_url):
    client = Client(server_url)
    with pytest.raises(FitserveError) as caught:
        client.request("GET", "/v1/nothing-here", headers={"X-Request-ID": "req-1"})
    error = caught.value
    assert error.status == 404
    assert error.code == "not_found"
    assert error.request_id == "req-1"
    assert error.problem["type"] == "/problems/not_found"
    assert str(error).startswith("404 not_found: ")


def test_missing_key_is_401_and_the_key_from_the_environment_is_sent(keyed_server_url, monkeypatch):
    monkeypatch.delenv("FITSERVE_API_KEY", raising=False)
    with pytest.raises(FitserveError) as caught:
        Client(keyed_server_url).request("GET", "/v1/jobs")
    assert caught.value.status == 401
    assert caught.value.code == "unauthorized"
    assert "API key" in caught.value.detail

    monkeypatch.setenv("FITSERVE_API_KEY", API_KEY)
    monkeypatch.setenv("FITSERVE_URL", keyed_server_url)
    client = Client()
    assert client.url == keyed_server_url
    assert client.list_datasets() == []


def test_unreachable_server_is_connection_failed():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionFailed) as caught:
        Client(url, timeout=2).ready()
    assert caught.value.status == 0
    assert caught.value.code == "connection_failed"
    assert url in caught.value.detail


def test_field_errors_are_listed_with_path_expected_and_received():
    error = FitserveError(
        422,
        {
            "code": "invalid_request",
            "detail": "The job request has 1 error.",
            "errors": [
                {
                    "path": "/fit/epochs",
                    "message": "epochs is too large",
                    "expected": "an integer 1..1000",
                    "received": 5000,
                }
            ],
        },
    )
    assert error.errors[0]["path"] == "/fit/epochs"
    assert error.describe().splitlines() == [
        "422 invalid_request: The job request has 1 error.",
        "  /fit/epochs: epochs is too large (expected: an integer 1..1000; received: 5000)",
    ]


def test_what_the_message_already_says_is_not_repeated():
    error = {
        "path": "/fit/epochs",
        "message": "fit has epochs=-1. Expected a positive integer. Received: epochs=-1",
        "expected": "a positive integer",
        "received": -1,
    }
    assert describe_field_error(error) == f"/fit/epochs: {error['message']}"


def test_a_failed_job_says_why():
    job = {
        "id": "j1",
        "status": "failed",
        "error": {"reason": "nan_loss", "message": "The loss became NaN at epoch 2."},
    }
    error = JobFailed(job)
    assert error.job is job
    assert error.code == "job_failed"
    assert error.detail == "Job j1 ended failed (nan_loss): The loss became NaN at epoch 2."
    assert JobFailed({"id": "j2", "status": "cancelled"}).detail == "Job j2 ended cancelled."
