"""A job followed live over SSE through gunicorn; its TensorBoard files and its model record."""

from __future__ import annotations

import time

import orjson
import pytest
import requests

from core.jobs import TERMINAL
from tests.support.stack import Stack, tiny_request

EPOCHS = 3
STREAMS = 12


def follow(stack: Stack, job_id: str, last_event_id: str | None = None) -> list[dict]:
    """Read the job's event stream to its end: `[{"id", "event", "data"}]`."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict] = []
    with requests.get(
        stack.url(f"/v1/jobs/{job_id}/events"), headers=headers, stream=True, timeout=120
    ) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        current: dict = {}
        for line in response.iter_lines(decode_unicode=True):
            if line:
                name, _, value = line.partition(": ")
                current[name] = orjson.loads(value) if name == "data" else value
            elif "event" in current:
                events.append(current)
                current = {}
            else:
                current = {}
    return events


def test_a_job_followed_from_submit_to_its_end(stack: Stack, blobs_dataset: str):
    job = stack.submit(tiny_request(blobs_dataset, epochs=EPOCHS))
    events = follow(stack, job["id"])
    kinds = [event["event"] for event in events]
    statuses = [event["data"]["status"] for event in events if event["event"] == "status"]
    assert statuses == ["running", "succeeded"], kinds
    epochs = [event["data"] for event in events if event["event"] == "epoch"]
    assert [epoch["epoch"] for epoch in epochs] == list(range(1, EPOCHS + 1))
    assert all({"loss", "val_loss", "accuracy"} <= set(epoch["metrics"]) for epoch in epochs)
    assert [e["data"]["version"] for e in events if e["event"] == "checkpoint"] == [1, 2, 3]
    assert kinds[-1] == "status"
    assert events[-1]["data"]["status"] in TERMINAL

    # A client that reconnects after the third event gets exactly the rest.
    rest = follow(stack, job["id"], last_event_id=events[2]["id"])
    assert [event["id"] for event in rest] == [event["id"] for event in events[3:]]


@pytest.fixture(scope="module")
def trained(stack: Stack, blobs_dataset: str) -> dict:
    """A job of two epochs, finished."""
    job = stack.submit(tiny_request(blobs_dataset, epochs=2))
    finished = stack.wait_finished(job["id"])
    assert finished["status"] == "succeeded", finished
    return finished


def test_a_finished_job_has_tensorboard_logs_and_a_model_record(
    stack: Stack, blobs_dataset: str, trained: dict
):
    job = finished = trained
    logs = stack.data_dir / "jobs" / job["id"] / "tensorboard"
    written = list(logs.rglob("events.out.tfevents.*"))
    assert {path.parent.name for path in written} >= {"train", "validation"}
    assert all(path.stat().st_size > 0 for path in written)

    record = finished["record"]
    dataset = requests.get(stack.url(f"/v1/datasets/{blobs_dataset}"), timeout=30).json()
    assert record["datasets"] == {blobs_dataset: dataset["source"]["sha256"]}
    assert len(record["spec_sha256"]) == 64
    assert record["seed"] == 1
    assert record["tensorflow"].startswith("2.")
    assert record["keras"].startswith("3.")
    assert record["device"]["devices"]
    assert record["final"]["sha256"] == finished["final"]["sha256"]
    assert set(record["metrics"]) >= {"loss", "val_loss"}
    for path in (f"/v1/models/{job['id']}/metadata", f"/v2/models/{job['id']}"):
        metadata = requests.get(stack.url(path), timeout=60)
        assert metadata.status_code == 200, metadata.text
        assert metadata.json()["record"] == record, path


def test_open_streams_are_capped_and_predictions_still_answer(
    stack: Stack, blobs_dataset: str, trained: dict
):
    # No 2-GPU worker runs, so this job stays queued and its streams stay open.
    waiting = stack.submit(tiny_request(blobs_dataset, epochs=1, resources={"gpus": 2}))
    url = stack.url(f"/v1/jobs/{waiting['id']}/events")
    opened = [requests.get(url, stream=True, timeout=60) for _ in range(STREAMS)]
    try:
        held = [r for r in opened if r.status_code == 200]
        refused = [r for r in opened if r.status_code == 429]
        # Two gunicorn workers, each serving one client (no keys: one address) at most
        # FITSERVE_EVENTS_MAX_STREAMS_PER_KEY (2) streams.
        assert len(held) + len(refused) == STREAMS
        assert 2 <= len(held) <= 4
        assert all(r.headers["Retry-After"] == "5" for r in refused)
        assert all(r.json()["code"] == "rate_limited" for r in refused)
        started = time.monotonic()
        for _ in range(4):
            answer = requests.post(
                stack.url(f"/v1/models/{trained['id']}:predict"),
                json={"instances": [[0.0] * 16]},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < 20
        requests.post(stack.url(f"/v1/jobs/{waiting['id']}:cancel"), timeout=30)
        last = list(held[0].iter_lines(decode_unicode=True))
        assert any('"status":"cancelled"' in line for line in last), last
    finally:
        for response in opened:
            response.close()
