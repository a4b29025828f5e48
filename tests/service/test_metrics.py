"""/metrics in one process: who may read it, and label values that no request can invent."""

from __future__ import annotations

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from core.keys import hash_key
from core.settings import Settings
from service import create_app

KEYS = {"ann": "fs_ann", "root": "fs_root"}


def keyed(settings: Settings) -> FlaskClient:
    entries = f"ann:{hash_key(KEYS['ann'])},root:{hash_key(KEYS['root'])}:admin"
    return create_app(settings.with_overrides(api_keys=entries)).test_client()


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def request_labels(client: FlaskClient) -> set[tuple[str, str]]:
    """(method, route) of every fitserve_http_requests_total series."""
    text = client.get("/metrics").get_data(as_text=True)
    return {
        (sample.labels["method"], sample.labels["route"])
        for family in text_string_to_metric_families(text)
        if family.name == "fitserve_http_requests"
        for sample in family.samples
        if sample.name == "fitserve_http_requests_total"
    }


def test_with_keys_on_metrics_needs_an_admin_key(settings: Settings):
    client = keyed(settings)
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing.mimetype == "application/problem+json"
    wrong = client.get("/metrics", headers={"Authorization": "Bearer fs_nobody"})
    assert wrong.status_code == 401
    forbidden = client.get("/metrics", headers=bearer("ann"))
    assert forbidden.status_code == 403
    assert forbidden.get_json()["code"] == "forbidden"
    allowed = client.get("/metrics", headers=bearer("root"))
    assert allowed.status_code == 200
    assert "fitserve_jobs" in allowed.get_data(as_text=True)


def test_with_keys_off_metrics_is_open(client: FlaskClient):
    assert client.get("/metrics").status_code == 200


def test_unknown_methods_and_paths_mint_no_label_values(client: FlaskClient):
    methods = [f"BREW{n}" for n in range(20)]
    for method in methods:
        client.open("/healthz", method=method)
        client.open(f"/no/such/path/{method}", method="GET")
    labels = request_labels(client)
    assert not [label for label in labels if label[0].startswith("BREW")]
    assert not [label for label in labels if "BREW" in label[1]]
    # A method no route takes is a 405 that matched no rule.
    assert ("other", "unmatched") in labels
    assert ("GET", "unmatched") in labels
