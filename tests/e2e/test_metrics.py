"""/metrics scraped from the stack's two gunicorn workers: counters move by what was done."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psutil
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import Stack, tiny_request

REQUESTS = 24


def scrape(stack: Stack) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    response = requests.get(stack.url("/metrics"), timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def workers_with_counters(stack: Stack) -> list[int]:
    """The gunicorn workers that have written counters to a multiprocess folder."""
    master = psutil.Process(stack.others[0].pid)
    return [
        worker.pid
        for worker in master.children()
        if list(Path(tempfile.gettempdir()).glob(f"fitserve-metrics-*/counter_{worker.pid}.db"))
    ]


def test_request_counters_sum_every_gunicorn_worker(stack: Stack):
    before = scrape(stack)
    for _ in range(REQUESTS):
        # A new connection each time, so the requests spread over the workers.
        assert requests.get(stack.url("/healthz"), timeout=10).status_code == 200
    assert requests.get(stack.url("/v1/jobs/" + "0" * 32), timeout=10).status_code == 404
    after = scrape(stack)
    health = {"method": "GET", "route": "/healthz", "status": "200"}
    moved = value(after, "fitserve_http_requests_total", **health) - value(
        before, "fitserve_http_requests_total", **health
    )
    assert moved == REQUESTS
    timed = {"method": "GET", "route": "/healthz"}
    name = "fitserve_http_request_duration_seconds_count"
    assert value(after, name, **timed) - value(before, name, **timed) == REQUESTS
    missing = {"method": "GET", "route": "/v1/jobs/<job_id>", "status": "404"}
    assert value(after, "fitserve_http_requests_total", **missing) >= 1
    assert not [key for key in after if "0" * 32 in str(key)]
    assert len(workers_with_counters(stack)) == 2
    # Any worker answering a scrape shows the same total.
    again = [value(scrape(stack), "fitserve_http_requests_total", **health) for _ in range(4)]
    assert set(again) == {value(after, "fitserve_http_requests_total", **health)}


def test_jobs_epochs_workers_and_predictions(stack: Stack, blobs_dataset: str):
    before = scrape(stack)
    job = stack.submit(tiny_request(blobs_dataset, epochs=2))
    finished = stack.wait_finished(job["id"])
    assert finished["status"] == "succeeded", finished
    rows = [[0.0] * 16]
    for _ in range(3):
        response = requests.post(
            stack.url(f"/v1/models/{job['id']}:predict"), json={"instances": rows}, timeout=60
        )
        assert response.status_code == 200, response.text
    after = scrape(stack)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("fitserve_jobs", status="succeeded") == 1
    assert value(after, "fitserve_jobs", status="queued") == 0
    assert value(after, "fitserve_queue_depth", queue="train") == 0
    assert moved("fitserve_epochs_total") == 2
    assert value(after, "fitserve_workers") >= 1
    assert value(after, "fitserve_queue_workers", queue="train") >= 1
    # Each predict is a pass of one row; loading a model warms it with one more pass.
    assert 3 <= moved("fitserve_predict_batch_rows_count") <= 5
    assert moved("fitserve_predict_batch_rows_bucket", le="1.0") == moved(
        "fitserve_predict_batch_rows_count"
    )
    assert value(after, "fitserve_models_loaded") >= 1
