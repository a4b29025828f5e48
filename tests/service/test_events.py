"""GET /v1/jobs/<id>/events in one process: replay, Last-Event-ID, keep-alives, lifetime, cap."""

from __future__ import annotations

import orjson
import pytest
from flask import Flask

from core.errors import preview
from core.jobs import JobStore
from core.keys import hash_key
from core.settings import Settings
from service import create_app

SPEC = {"name": "events", "data": {"dataset": None}, "resources": {"gpus": 1}}


@pytest.fixture
def quick(settings: Settings) -> Flask:
    return create_app(
        settings.with_overrides(
            events_keepalive_seconds=1, events_max_seconds=3, events_max_streams=2
        )
    )


def parse(body: bytes) -> list[dict]:
    """SSE messages as dicts (`id`, `event`, `data`), comments as `{"comment": ...}`."""
    found = []
    for block in body.decode().split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            if name == "":
                fields["comment"] = value
            else:
                fields[name] = orjson.loads(value) if name == "data" else value
        if fields:
            found.append(fields)
    return found


def test_a_finished_job_replays_every_event_then_the_stream_ends(quick: Flask, store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    store.transition(job_id, "running", attempt=1)
    store.add_event(job_id, "epoch", epoch=1, metrics={"loss": 0.5})
    store.transition(job_id, "succeeded")
    response = quick.test_client().get(f"/v1/jobs/{job_id}/events")
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    messages = [m for m in parse(response.data) if "event" in m]
    assert [m["event"] for m in messages] == ["status", "epoch", "status"]
    assert messages[0]["data"]["status"] == "running"
    assert messages[1]["data"]["metrics"] == {"loss": 0.5}
    assert messages[2]["data"]["status"] == "succeeded"

    again = quick.test_client().get(
        f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": messages[0]["id"]}
    )
    assert [m.get("id") for m in parse(again.data) if "event" in m] == [
        m["id"] for m in messages[1:]
    ]
    done = quick.test_client().get(
        f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": messages[-1]["id"]}
    )
    assert (done.status_code, done.data) == (204, b"")


def test_an_idle_stream_sends_keep_alives_and_ends_at_its_lifetime(quick: Flask, store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    response = quick.test_client().get(f"/v1/jobs/{job_id}/events")
    comments = [m["comment"] for m in parse(response.data) if "comment" in m]
    assert comments.count("keep-alive") >= 2
    assert parse(response.data)[0] == {"retry": "2000"}


def test_streams_past_the_cap_are_refused_with_retry_after(quick: Flask, store: JobStore):
    job_id = store.create(SPEC, owner=None)["id"]
    client = quick.test_client()
    held = [client.get(f"/v1/jobs/{job_id}/events", buffered=False) for _ in range(2)]
    assert [r.status_code for r in held] == [200, 200]
    refused = client.get(f"/v1/jobs/{job_id}/events")
    assert refused.status_code == 429
    assert refused.mimetype == "application/problem+json"
    assert refused.headers["Retry-After"] == "5"
    held[0].close()
    assert client.get(f"/v1/jobs/{job_id}/events", buffered=False).status_code == 200


@pytest.mark.parametrize("given", ["abc", "1-", "-1", "1-2-3", "x" * 200])
def test_a_bad_last_event_id_is_a_located_422(client, store: JobStore, given: str):
    job_id = store.create(SPEC, owner=None)["id"]
    response = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": given})
    assert response.status_code == 422
    error = response.json["errors"][0]
    assert error["path"] == "/headers/Last-Event-ID"
    assert error["received"] == preview(given)


def test_an_unknown_job_is_a_404(client):
    response = client.get("/v1/jobs/0123456789abcdef0123456789abcdef/events")
    assert response.status_code == 404


def test_a_key_streams_only_its_own_jobs(settings: Settings, store: JobStore):
    from core.keys import hash_key

    keys = {"ann": "fs_ann", "bob": "fs_bob"}
    entries = ",".join(f"{name}:{hash_key(key)}" for name, key in keys.items())
    client = create_app(settings.with_overrides(api_keys=entries)).test_client()
    job_id = store.create(SPEC, owner="ann")["id"]
    store.transition(job_id, "cancelled")
    url = f"/v1/jobs/{job_id}/events"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer fs_bob"}).status_code == 404
    mine = client.get(url, headers={"Authorization": "Bearer fs_ann"})
    assert mine.status_code == 200
    assert [m["data"]["status"] for m in parse(mine.data) if "event" in m] == ["cancelled"]


def test_one_key_cannot_hold_every_stream(settings: Settings, store: JobStore):
    keys = {"ann": "fs_ann", "bob": "fs_bob"}
    entries = ",".join(f"{name}:{hash_key(key)}" for name, key in keys.items())
    app = create_app(
        settings.with_overrides(
            api_keys=entries, events_max_streams=3, events_max_streams_per_key=2
        )
    )
    job_id = store.create(SPEC, owner="ann")["id"]
    bob_job = store.create(SPEC, owner="bob")["id"]
    client = app.test_client()

    def stream(name: str, job: str):
        auth = {"Authorization": f"Bearer {keys[name]}"}
        return client.get(f"/v1/jobs/{job}/events", headers=auth, buffered=False)

    held = [stream("ann", job_id) for _ in range(2)]
    assert [r.status_code for r in held] == [200, 200]
    refused = stream("ann", job_id)
    assert refused.status_code == 429
    assert "FITSERVE_EVENTS_MAX_STREAMS_PER_KEY" in refused.get_json()["detail"]
    # Bob's own stream still finds a slot.
    bobs = stream("bob", bob_job)
    assert bobs.status_code == 200
    held[0].close()
    assert stream("ann", job_id).status_code == 200
    bobs.close()
