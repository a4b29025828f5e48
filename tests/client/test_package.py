"""The client installs alone: its wheel needs only requests, numpy and tuspy and imports no
server code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import client

CLIENT_DIR = Path(client.__file__).resolve().parent
SERVER_MODULES = ("tensorflow", "keras", "core", "service", "worker", "flask", "celery")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client's wheel, built from a copy so no build leftovers land in the checkout."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "client-src"
    shutil.copytree(CLIENT_DIR, source, ignore=shutil.ignore_patterns("__pycache__"))
    wheel_dir = tmp_path / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-q", "--wheel-dir", str(wheel_dir), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = wheel_dir.glob("fitserve_client-*.whl")
    return built


def test_wheel_needs_only_requests_numpy_and_tuspy_and_provides_the_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith("/entry_points.txt")))
    required = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert sorted(r.split(">")[0] for r in required) == ["numpy", "requests", "tuspy"]
    assert "client/api.py" in names
    assert "client/cli.py" in names
    assert b"fitserve = client.cli:main" in entry_points


def test_installed_wheel_runs_without_server_code(wheel, tmp_path):
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    probe = (
        "import sys, client, client.cli, client.api; "
        "from client.cli import main; "
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_MODULES!r}); "
        "print(client.__file__); print(loaded); main(['keys', 'create', 'ops', '--json'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    module_file, loaded, *key_lines = result.stdout.splitlines()
    assert module_file.startswith(str(target))
    assert loaded == "[]"
    assert json.loads("\n".join(key_lines))["entry"].startswith("ops:")
