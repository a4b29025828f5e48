"""Start and stop the real processes tests talk to: redis-server, Celery workers, gunicorn."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import redis
import requests

from scripts.stack import free_port

# What a wait retries: the check's own assertion (the condition does not hold yet) and a process
# that does not listen yet. Anything else fails the wait at once.
NOT_YET = (
    AssertionError,
    ConnectionError,
    requests.ConnectionError,
    requests.Timeout,
    redis.ConnectionError,
    redis.TimeoutError,
)


def wait_for(
    check: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll `check` until it returns something true, for at most `timeout` seconds.

    A false result or one of NOT_YET means "not yet"; any other error (an UnexpectedStatus such
    as a 500, a KeyError) propagates at once instead of spinning until the deadline. At the
    deadline the TimeoutError names the last error seen and is raised from it.
    """
    deadline = time.monotonic() + timeout
    while True:
        last: Exception | None = None
        try:
            if check():
                return
        except NOT_YET as error:
            last = error
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    seen = f"; last error: {type(last).__name__}: {last}" if last else ""
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}{seen}") from last


def stop_tree(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM a process and its children, then SIGKILL whatever is left."""
    if process.poll() is not None:
        return
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@contextlib.contextmanager
def redis_server(folder: Path, *args: str) -> Iterator[str]:
    """A private redis-server on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run `make deps` (or .ci/run)")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        wait_for(client.ping, 10, f"redis-server on port {port}")
        yield url
    finally:
        stop_tree(process)
