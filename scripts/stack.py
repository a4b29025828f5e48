"""The command lines of docker-compose.yml, so local runs and tests start what containers run."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose_services() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def compose_command(service: str, *, bind: str | None = None) -> list[str]:
    """The service's `command` as an argv; `bind` replaces gunicorn's `--bind` address."""
    argv = list(compose_services()[service]["command"])
    if bind is not None and "--bind" in argv:
        argv[argv.index("--bind") + 1] = bind
    return argv


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
