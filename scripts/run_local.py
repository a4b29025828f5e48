"""`make run`: the whole stack without Docker, in the foreground, stopped together by Ctrl-C.

Starts a local redis-server (AOF on) if none answers at FITSERVE_REDIS_URL, then one Celery
worker, the CPU task worker (dataset ingest, sweeps) and gunicorn with the command lines of
docker-compose.yml, gunicorn on a loopback port of its own, and nginx in front of it on
127.0.0.1:8000 (FITSERVE_BIND moves it), configured from the same template as compose's proxy.
It says which Redis it uses and how that Redis keeps its data: one that already answered may be
someone else's, with AOF off.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from core.settings import Settings
from scripts.proxy import local_proxy_command, write_config
from scripts.stack import ROOT, compose_command, free_port


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def describe_redis(url: str) -> str:
    """Which Redis answers at `url` (never its password) and how it persists, in one line."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    server, persistence = client.info("server"), client.info("persistence")
    try:
        snapshots = client.config_get("save").get("save") or "off"
    except redis.ResponseError:  # CONFIG is often renamed or refused on a managed Redis
        snapshots = "unknown (CONFIG refused)"
    where = urlparse(url)
    line = (
        f"Redis {server['redis_version']} at {where.hostname}:{where.port or 6379}{where.path} "
        f"(pid {server['process_id']}): aof_enabled={persistence['aof_enabled']}, "
        f"rdb save={snapshots!r}, rdb_last_bgsave_status={persistence['rdb_last_bgsave_status']}"
    )
    if not persistence["aof_enabled"]:
        line += (
            "\n  warning: AOF is off: a crash loses the jobs and queues written since its last"
            "\n  snapshot, if it takes any. A FITSERVE_REDIS_URL on a free port makes `make run`"
            " start its own Redis, with AOF on."
        )
    return line


def start_redis(url: str, folder: str) -> subprocess.Popen:
    port = str(urlparse(url).port or 6379)
    os.makedirs(folder, exist_ok=True)
    binary = shutil.which("redis-server") or sys.exit("redis-server is missing: run `make deps`")
    argv = [
        binary,
        "--port",
        port,
        "--bind",
        "127.0.0.1",
        "--dir",
        folder,
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
    ]
    return subprocess.Popen(argv, start_new_session=True)


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    # A session of its own: Ctrl-C reaches only this script, which then stops the API, the
    # worker (which saves and requeues its job while Redis still answers) and Redis, in order.
    return subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)


def main() -> int:
    env = dict(os.environ)
    env.setdefault("FITSERVE_DATA_DIR", str(ROOT / "data"))
    url = env.setdefault("FITSERVE_REDIS_URL", "redis://localhost:6379/0")
    bind = env.get("FITSERVE_BIND", "127.0.0.1:8000")
    upstream = f"127.0.0.1:{free_port()}"
    # gunicorn hears every client through nginx, which says who the client was.
    env.setdefault("FITSERVE_TRUSTED_PROXIES", "127.0.0.1")
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")

    processes: list[subprocess.Popen] = []
    if redis_answers(url):
        print("using the Redis that already answers there:", flush=True)
    else:
        folder = os.path.join(env["FITSERVE_DATA_DIR"], "redis")
        print(f"no Redis answers at FITSERVE_REDIS_URL: starting one in {folder}", flush=True)
        processes.append(start_redis(url, folder))
        deadline = time.monotonic() + 10
        while not redis_answers(url) and time.monotonic() < deadline:
            time.sleep(0.1)
    print(describe_redis(url), flush=True)
    processes.append(_start(compose_command("worker"), env))
    processes.append(_start(compose_command("tasks"), env))
    processes.append(_start(compose_command("api", bind=upstream), env))
    run_dir = Path(env["FITSERVE_DATA_DIR"]) / "proxy"
    config = write_config(run_dir, Settings.from_env(env), listen=bind, upstream=upstream)
    processes.append(_start(local_proxy_command(config), env))
    print(f"fitserve on http://{bind} (Ctrl-C stops everything)", flush=True)

    def stop(*_: object) -> None:
        # One at a time, newest first: the worker saves and requeues while Redis still answers.
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while all(process.poll() is None for process in processes):
        time.sleep(0.5)
    print("a process of the stack exited; stopping the others", flush=True)
    stop()
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
