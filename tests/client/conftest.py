"""The API served for real over HTTP (werkzeug in a thread, on a free port) for the client."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from core.keys import hash_key
from core.settings import Settings
from service import create_app
from tests.support.processes import free_port

API_KEY = "fs_client-test-key"


@contextlib.contextmanager
def serve(settings: Settings, port: int | None = None) -> Iterator[str]:
    """Serve the app built from `settings` until the test ends; yields its base URL."""
    port = port or free_port()
    server = make_server("127.0.0.1", port, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture
def server_url(settings: Settings) -> Iterator[str]:
    with serve(settings) as url:
        yield url


@pytest.fixture
def keyed_server_url(settings: Settings) -> Iterator[str]:
    """A server that needs `API_KEY` on every /v1 route."""
    with serve(settings.with_overrides(api_keys=f"alice:{hash_key(API_KEY)}")) as url:
        yield url


FITSERVE = Path(sys.executable).parent / "fitserve"
ROOT = Path(__file__).resolve().parents[2]


def fitserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed `fitserve` command; FITSERVE_* come only from `env`."""
    if not FITSERVE.exists():
        pytest.fail("the fitserve command is not installed: run `pip install -e .`")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_")}
    # The command runs this checkout's code, wherever the package was installed from.
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    return subprocess.run(
        [str(FITSERVE), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
