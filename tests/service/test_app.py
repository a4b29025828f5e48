"""The API skeleton: health, request ids, problem documents, JSON parsing, API keys."""

from __future__ import annotations

import pytest

from core.keys import hash_key
from core.keys import main as keys_main
from core.settings import Settings
from service import create_app


def test_healthz_answers(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_checks_redis_and_data_dir(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["checks"] == {"redis": "ok", "data_dir": "ok"}
    assert body["workers"] == []


def test_readyz_is_503_when_redis_is_down(tmp_path):
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "redis unavailable" in response.get_json()["detail"]


def test_request_id_is_echoed_or_made(client):
    given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id;" * 30})
    assert len(made.headers["X-Request-ID"]) == 32


def test_unknown_route_is_a_problem_document(client):
    response = client.get("/nope", headers={"X-Request-ID": "r1"})
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["type"] == "/problems/not_found"
    assert body["code"] == "not_found"
    assert body["request_id"] == "r1"
    assert body["error"] == body["detail"]


def test_wrong_method_is_405_problem(client):
    response = client.delete("/healthz")
    assert response.status_code == 405
    assert response.get_json()["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


@pytest.fixture
def keyed_client(settings):
    key = "fs_test-key"
    app = create_app(settings.with_overrides(api_keys=f"alice:{hash_key(key)}"))
    return app.test_client(), key


@pytest.mark.parametrize(
    ("header", "detail"),
    [(None, "needs an API key"), ("Bearer wrong", "not valid"), ("Basic abc", "needs an API key")],
)
def test_api_keys_refuse_missing_or_wrong(keyed_client, header, detail):
    client, _ = keyed_client
    headers = {"Authorization": header} if header else {}
    response = client.get("/v1/datasets", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthorized"
    assert detail in response.get_json()["detail"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_api_keys_leave_health_open(keyed_client):
    client, _ = keyed_client
    assert client.get("/healthz").status_code == 200


def test_keys_command_prints_key_and_entry(capsys):
    assert keys_main(["ops", "--admin"]) == 0
    out = capsys.readouterr().out
    key = out.split("key:")[1].split()[0]
    entry = out.split("entry:")[1].split()[0]
    assert entry == f"ops:{hash_key(key)}:admin"
