"""The dashboard's pages, its packaged assets, and sign-in: sessions, cookies and CSRF."""

from __future__ import annotations

import hashlib
import re

import pytest
import redis
from flask.testing import FlaskClient

from core.keys import hash_key
from core.settings import Settings

ALICE = "fs_alice-key-for-tests"
BOB = "fs_bob-key-for-tests"
JOB_ID = "0123456789abcdef0123456789abcdef"
DATASET = {"arrays": {"x": [[0.0, 1.0], [1.0, 0.0]], "y": [0, 1]}}


@pytest.fixture
def keyed_settings(settings: Settings) -> Settings:
    return settings.with_overrides(api_keys=f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}:admin")


@pytest.fixture
def keyed(keyed_settings: Settings) -> FlaskClient:
    from service import create_app

    return create_app(keyed_settings).test_client()


def sign_in(client: FlaskClient, key: str = ALICE, **headers: str):
    return client.post("/sign-in", data={"key": key, "next": "/"}, headers=headers)


def csrf_of(client: FlaskClient) -> str:
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="fitserve-csrf" content="([^"]*)"', page).group(1)


def test_pages_and_assets_are_served_without_keys(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/static/dashboard/dashboard.js" in html
    assert "/static/dashboard/vendor/uPlot.iife.min.js" in html
    assert "/static/dashboard/vendor/tus.min.js" in html
    assert "API keys are off" in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    job_page = client.get(f"/jobs/{JOB_ID}")
    assert job_page.status_code == 200
    assert f'data-job-id="{JOB_ID}"' in job_page.get_data(as_text=True)
    for asset in (
        "dashboard/dashboard.js",
        "dashboard/dashboard.css",
        "dashboard/vendor/uPlot.iife.min.js",
        "dashboard/vendor/uPlot.min.css",
        "dashboard/vendor/tus.min.js",
    ):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200, asset
        assert len(response.get_data()) > 1000, asset
        response.close()


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        ("/datasets", 'data-page="datasets"'),
        (f"/compare?jobs={JOB_ID}", 'data-page="compare"'),
        ("/sweeps", 'data-page="sweeps"'),
        (f"/sweeps/{JOB_ID}", f'data-sweep-id="{JOB_ID}"'),
    ],
)
def test_the_other_pages_are_served_with_the_same_headers(
    client: FlaskClient, path: str, marker: str
) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert marker in page.get_data(as_text=True)
    assert (
        page.headers["Content-Security-Policy"]
        == client.get("/").headers["Content-Security-Policy"]
    )
    for link in ('href="/datasets"', 'href="/sweeps"'):
        assert link in page.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/jobs/..%2F..%2Fetc", "/sweeps/not-an-id"])
def test_a_page_for_a_malformed_id_is_a_404(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404


def test_sign_in_without_keys_needs_nothing(client: FlaskClient) -> None:
    assert "nothing to sign in to" in client.get("/sign-in").get_data(as_text=True)
    response = client.post("/sign-in", data={"key": "anything"})
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert client.get_cookie("fitserve_session") is None


def test_pages_redirect_to_sign_in_when_keys_are_on(keyed: FlaskClient) -> None:
    response = keyed.get(f"/jobs/{JOB_ID}")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/sign-in?next=/jobs/{JOB_ID}"
    form = keyed.get(f"/sign-in?next=/jobs/{JOB_ID}").get_data(as_text=True)
    assert 'type="password"' in form
    assert f'value="/jobs/{JOB_ID}"' in form
    for page in ("/datasets", "/compare", "/sweeps", f"/sweeps/{JOB_ID}"):
        response = keyed.get(page)
        assert response.status_code == 303
        assert response.headers["Location"] == f"/sign-in?next={page}"
        form = keyed.get(response.headers["Location"]).get_data(as_text=True)
        assert f'value="{page}"' in form


def test_a_wrong_key_is_refused_and_sets_no_cookie(keyed: FlaskClient) -> None:
    response = sign_in(keyed, "fs_not-a-key")
    assert response.status_code == 401
    assert "not valid" in response.get_data(as_text=True)
    assert "Set-Cookie" not in response.headers
    assert keyed.get("/").status_code == 303


def test_sign_in_sets_a_strict_http_only_cookie_that_is_not_the_key(
    keyed: FlaskClient, keyed_settings: Settings
) -> None:
    response = sign_in(keyed)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("fitserve_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie
    assert f"Max-Age={keyed_settings.session_seconds}" in cookie
    token = keyed.get_cookie("fitserve_session").value
    assert ALICE not in cookie
    assert hash_key(ALICE) not in cookie
    # Redis keeps the session under the token's hash, never the token itself.
    store = redis.Redis.from_url(keyed_settings.redis_url)
    record_key = "fitserve:session:" + hashlib.sha256(token.encode()).hexdigest()
    assert 0 < store.ttl(record_key) <= keyed_settings.session_seconds
    assert not store.keys(f"*{token}*")
    page = keyed.get("/")
    assert page.status_code == 200
    assert "Signed in as <strong>alice</strong>" in page.get_data(as_text=True)


def test_signing_in_again_replaces_the_session(keyed: FlaskClient) -> None:
    sign_in(keyed)
    first = keyed.get_cookie("fitserve_session").value
    sign_in(keyed, BOB)
    assert keyed.get_cookie("fitserve_session").value != first
    assert "Signed in as <strong>bob</strong>" in keyed.get("/").get_data(as_text=True)
    keyed.set_cookie("fitserve_session", first)
    assert keyed.get("/v1/jobs").status_code == 401


def test_the_cookie_is_secure_behind_a_tls_proxy(keyed_settings: Settings) -> None:
    from service import create_app

    # The test client's requests come from 127.0.0.1: here that is the trusted proxy.
    behind = create_app(keyed_settings.with_overrides(trusted_proxies="127.0.0.1")).test_client()
    response = sign_in(behind, **{"X-Forwarded-Proto": "https"})
    assert "Secure" in response.headers["Set-Cookie"]
    # From any other peer the header is not believed.
    spoofed = behind.post(
        "/sign-in",
        data={"key": ALICE, "next": "/"},
        headers={"X-Forwarded-Proto": "https"},
        environ_base={"REMOTE_ADDR": "10.1.2.3"},
    )
    assert "Secure" not in spoofed.headers["Set-Cookie"]


def test_the_session_authorizes_the_api_as_its_key(keyed: FlaskClient) -> None:
    assert keyed.get("/v1/jobs").status_code == 401
    sign_in(keyed)
    assert keyed.get("/v1/jobs").status_code == 200
    created = keyed.post("/v1/datasets", json=DATASET, headers={"X-Fitserve-CSRF": csrf_of(keyed)})
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["owner"] == "alice"
    assert keyed.get(f"/v1/datasets/{created.get_json()['id']}").status_code == 200


def test_state_changes_by_cookie_need_the_csrf_token(keyed: FlaskClient) -> None:
    sign_in(keyed)
    for headers in ({}, {"X-Fitserve-CSRF": "forged"}):
        response = keyed.post("/v1/datasets", json=DATASET, headers=headers)
        assert response.status_code == 401
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["code"] == "csrf_failed"
        assert "X-Fitserve-CSRF" in response.get_json()["detail"]
    assert keyed.delete(f"/v1/jobs/{JOB_ID}").get_json()["code"] == "csrf_failed"


def test_bearer_requests_ignore_the_cookie_and_need_no_csrf(keyed: FlaskClient) -> None:
    sign_in(keyed)
    response = keyed.post("/v1/datasets", json=DATASET, headers={"Authorization": f"Bearer {BOB}"})
    assert response.status_code == 201
    assert response.get_json()["owner"] == "bob"


def test_sign_out_ends_the_session_even_for_a_replayed_cookie(keyed: FlaskClient) -> None:
    sign_in(keyed)
    token = keyed.get_cookie("fitserve_session").value
    refused = keyed.post("/sign-out", data={"csrf": "forged"})
    assert refused.status_code == 401
    assert keyed.get("/v1/jobs").status_code == 200
    response = keyed.post("/sign-out", data={"csrf": csrf_of(keyed)})
    assert response.status_code == 303
    assert response.headers["Location"] == "/sign-in"
    assert keyed.get_cookie("fitserve_session") is None
    keyed.set_cookie("fitserve_session", token)
    replayed = keyed.get("/v1/jobs")
    assert replayed.status_code == 401
    assert "sign in again" in replayed.get_json()["detail"]
    assert keyed.get("/").status_code == 303


def test_a_key_removed_from_the_settings_ends_its_sessions(
    keyed: FlaskClient, keyed_settings: Settings
) -> None:
    from service import create_app

    sign_in(keyed)
    token = keyed.get_cookie("fitserve_session").value
    without_alice = create_app(keyed_settings.with_overrides(api_keys=f"bob:{hash_key(BOB)}"))
    other = without_alice.test_client()
    other.set_cookie("fitserve_session", token)
    assert other.get("/v1/jobs").status_code == 401
    assert other.get("/").status_code == 303


def test_sign_in_from_another_origin_is_refused(keyed: FlaskClient) -> None:
    response = sign_in(keyed, Origin="https://evil.example")
    assert response.status_code == 403
    assert "Set-Cookie" not in response.headers
    assert sign_in(keyed, Origin="http://localhost").status_code == 303


@pytest.mark.parametrize(
    "next_page", ["https://evil.example/", "//evil.example", "/jobs/../../x", "/v1/jobs"]
)
def test_sign_in_only_returns_to_dashboard_pages(keyed: FlaskClient, next_page: str) -> None:
    response = keyed.post("/sign-in", data={"key": ALICE, "next": next_page})
    assert response.status_code == 303
    assert response.headers["Location"] == "/"


def test_an_unknown_session_cookie_is_a_401_not_a_500(keyed: FlaskClient) -> None:
    keyed.set_cookie("fitserve_session", "x" * 500)
    assert keyed.get("/v1/jobs").status_code == 401
    keyed.set_cookie("fitserve_session", "made-up")
    assert keyed.get("/v1/jobs").get_json()["code"] == "unauthorized"
