"""Path-traversal forms in every id of every route: a 404 or a 422, never a 500, nothing touched.

The routes are read from the app's url_map, so a new route is covered without anyone adding it.
Beside the data folder lie sentinel files shaped like our own (a job folder with a manifest, a
dataset manifest, a plain secret): no answer may carry their contents and the whole tree must be
byte-for-byte the same afterwards.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings
from core.storage import DataDir, write_json
from service import create_app
from tests.support.models import SINGLE, copy_job, write_trained_job

SECRET = "sentinel-secret-7f3a"
TRAVERSALS = (
    "..",
    "../x",
    "../../evil",
    "..%2f..%2fevil",
    "%2e%2e",
    "%2e%2e%2f",
    "%2e%2e%2fevil",
    "..%2f..%2fetc%2fpasswd",
    "%2fetc%2fpasswd",
    "/etc/passwd",
    "%252e%252e%252f",
    "..%5c..%5cevil",
    "....//....//evil",
    "%00",
    "abc%00def",
    "..%00",
    "%c0%ae%c0%ae%2f",
    "\u2025",
    "\u2024\u2024/evil",
    "\uff0e\uff0e%2fevil",
    "%e2%80%a5",
    "a" * 10_240,
)
ALLOWED = {404, 422}
_VARIABLE = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")
BODIES = {
    ":predict": {"instances": [[0.0, 1.0, 2.0, 3.0]]},
    ":classify": {"instances": [[0.0, 1.0, 2.0, 3.0]]},
    ":regress": {"instances": [[0.0, 1.0, 2.0, 3.0]]},
    "/infer": {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}]},
}


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataDir, str]:
    data = DataDir(tmp_path_factory.mktemp("traversal-model"))
    return data, write_trained_job(data, SINGLE, epochs=1, name="tiny")


@pytest.fixture
def world(tmp_path: Path, settings: Settings, trained) -> dict[str, str]:
    """A real model in the data folder and sentinels beside it; the values of valid ids."""
    source, model = trained
    copy_job(source, DataDir(settings.data_dir), model)
    (tmp_path / "secret.txt").write_text(SECRET)
    evil = tmp_path / "evil"
    write_json(evil / "manifest.json", {"id": "evil", "owner": None, "secret": SECRET})
    write_json(evil / "job.json", {"id": "evil", "owner": None, "spec": {"name": SECRET}})
    (evil / "model.keras").write_text(SECRET)
    (evil / "train.log").write_text(SECRET)
    return {"model": model, "job_id": model, "dataset_id": model, "label": "latest"}


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` with a digest of its bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def attempts(app, valid: dict[str, str]) -> Iterator[tuple[str, str]]:
    """(method, path) for every route variable replaced by every traversal form."""
    for rule in app.url_map.iter_rules():
        names = _VARIABLE.findall(rule.rule)
        for target in names:
            for form in TRAVERSALS:
                path = _VARIABLE.sub(
                    lambda m, target=target, form=form: (
                        form if m.group(1) == target else valid.get(m.group(1), "1")
                    ),
                    rule.rule,
                )
                for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                    yield method, path


def answer(client, method: str, path: str):
    """The answer, after werkzeug's redirect of a doubled slash (to a path of this server)."""
    body = next((b for end, b in BODIES.items() if path.endswith(end)), None)
    # The tus routes answer 412 to a request without their protocol version, before any lookup.
    headers = {"Tus-Resumable": "1.0.0"}
    response = client.open(path, method=method, json=body, headers=headers, buffered=False)
    if response.status_code == 308:
        target = response.headers["Location"]
        assert target.startswith("http://localhost/"), target
        response.close()
        response = client.open(target, method=method, json=body, headers=headers, buffered=False)
    return response


def test_every_id_refuses_traversal_and_touches_nothing(app, client, world, tmp_path):
    before = tree(tmp_path)
    repo_before = sorted(p.name for p in Path.cwd().iterdir())
    tried = 0
    for method, path in attempts(app, world):
        response = answer(client, method, path)
        try:
            text = response.get_data(as_text=True)
            assert response.status_code in ALLOWED, (method, path[:200], text[:300])
            assert SECRET not in text, (method, path[:200])
            assert "root:x:0:0" not in text, (method, path[:200])
            if path.startswith(("/v1/", "/v2/")):
                assert response.mimetype == "application/problem+json", (method, path[:200])
        finally:
            response.close()
        tried += 1
    assert tried > 500
    assert tree(tmp_path) == before
    assert sorted(p.name for p in Path.cwd().iterdir()) == repo_before


def test_traversal_is_refused_with_keys_on_too(settings: Settings, world):
    from core.keys import hash_key

    app = create_app(settings.with_overrides(api_keys=f"ops:{hash_key('fs_ops')}:admin"))
    client = app.test_client()
    headers = {"Authorization": "Bearer fs_ops"}
    for form in ("..%2f..%2fevil", "../../evil", "%00", "a" * 10_240):
        for path in (f"/v1/jobs/{form}", f"/v1/models/{form}/download", f"/v1/datasets/{form}"):
            assert client.get(path, headers=headers).status_code in ALLOWED, path[:100]
