"""Many models: small models served round-robin under load stay within the cache's bounds.

    .venv/bin/python bench/models.py [--models 50] [--clients 16] [--seconds 20]

Writes `--models` succeeded jobs of the seed MLP, starts gunicorn as docker-compose.yml runs it
(with a Redis of its own), and has `--clients` threads predict one row each from the models in
turn for `--seconds`, while /metrics is read twice a second. Prints the answers by status and the
most models the workers held at once against the bound (workers x FITSERVE_MODEL_CACHE_SIZE);
exits 1 on any answer that was not a 200 or a bound that was passed.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.predict import WORKERS, start, write_job  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage import DataDir  # noqa: E402
from scripts.stack import compose_command  # noqa: E402
from tests.support.processes import free_port, redis_server, stop_tree  # noqa: E402
from tests.support.stack import wait_ready  # noqa: E402

ROW = {"instances": [[0.5] * 784]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    bound = int(WORKERS) * Settings.from_env().model_cache_size
    with tempfile.TemporaryDirectory(prefix="bench-models-") as folder:
        folder = Path(folder)
        data = DataDir(folder / "data")
        ids = [write_job(data)[0] for _ in range(args.models)]
        with redis_server(folder / "redis") as redis_url:
            statuses, most = serve_round_robin(folder, data, redis_url, ids, args)
    print(f"{args.models} models, {args.clients} clients, {args.seconds} s")
    print(f"answers by status: {dict(statuses)}")
    print(f"most models held at once: {most:.0f} (bound: {WORKERS} workers x cache size = {bound})")
    ok = set(statuses) == {200} and most <= bound
    print("within bounds, no error" if ok else "FAILED")
    return 0 if ok else 1


def serve_round_robin(
    folder: Path, data: DataDir, redis_url: str, ids: list[str], args: argparse.Namespace
) -> tuple[collections.Counter, float]:
    """Predict from every model in turn under load: the statuses seen, the most models held."""
    bind = f"127.0.0.1:{free_port()}"
    url = f"http://{bind}"
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "FITSERVE_DATA_DIR": str(data.root),
        "FITSERVE_REDIS_URL": redis_url,
        "CUDA_VISIBLE_DEVICES": "-1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    process = start(compose_command("api", bind=bind), env, folder / "api.log")
    statuses: collections.Counter = collections.Counter()
    most = 0.0
    turns = itertools.cycle(ids)
    lock = threading.Lock()
    try:
        wait_ready(url, folder / "api.log")
        deadline = time.monotonic() + args.seconds

        def client() -> None:
            with requests.Session() as session:
                while time.monotonic() < deadline:
                    with lock:
                        model = next(turns)
                    path = f"{url}/v1/models/{model}:predict"
                    status = session.post(path, json=ROW, timeout=60).status_code
                    with lock:
                        statuses[status] += 1

        with ThreadPoolExecutor(args.clients) as pool:
            futures = [pool.submit(client) for _ in range(args.clients)]
            while not all(future.done() for future in futures):
                most = max(most, models_loaded(url))
                time.sleep(0.5)
            for future in futures:
                future.result()
        most = max(most, models_loaded(url))
    finally:
        stop_tree(process)
    return statuses, most


def models_loaded(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=30).text
    found = re.search(r"^fitserve_models_loaded (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


if __name__ == "__main__":
    raise SystemExit(main())
