"""Prediction serving: fitserve against a naive Flask + `model.predict` baseline, under wrk.

    .venv/bin/python bench/predict.py [--seconds 10]

Both serve the same file, DESIGN.md's seed MLP (784 -> 32 relu -> 10 softmax) saved as a
succeeded job's `model.keras`. fitserve runs as docker-compose.yml runs it (gunicorn gthread, its
worker count); the baseline is one sync gunicorn worker whose Flask view calls `model.predict`
per request. wrk sends single-row POSTs `{"instances": [[784 pixels]]}` after a warm-up run that
reaches every worker. Prints the p50 and p99 latency with one client, the throughput with 1 and
16 clients, batching on against off (`FITSERVE_PREDICT_MAX_BATCH_ROWS=1`) at 16 clients, and the
ratios. wrk comes from Debian's package (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.checkpoints import save_model_file  # noqa: E402
from core.storage import DataDir, new_id, utc_now, write_json  # noqa: E402
from scripts.stack import compose_command  # noqa: E402
from tests.support.processes import free_port, stop_tree, wait_for  # noqa: E402

START_SECONDS = 240
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def seed_model():
    import keras

    keras.utils.set_random_seed(42)
    return keras.Sequential(
        [
            keras.Input((784,), name="input"),
            keras.layers.Dense(32, kernel_initializer="he_normal", name="dense"),
            keras.layers.Activation("relu", name="activation"),
            keras.layers.Dense(10, name="dense_1"),
            keras.layers.Activation("softmax", name="output"),
        ]
    )


def write_job(data: DataDir) -> tuple[str, Path]:
    """A succeeded job whose final model is the seed MLP; its id and model file."""
    job_id = new_id()
    job_dir = data.job(job_id)
    saved = save_model_file(seed_model(), job_dir / "model.keras")
    now = utc_now()
    write_json(job_dir / "job.json", {"id": job_id, "owner": None, "created_at": now, "spec": {}})
    write_json(
        job_dir / "manifest.json",
        {
            "id": job_id,
            "name": "seed-mlp",
            "owner": None,
            "status": "succeeded",
            "created_at": now,
            "updated_at": now,
            "finished_at": now,
            "epoch": 1,
            "checkpoints": [],
            "best": None,
            "final": {"file": "model.keras", **saved, "version": 1},
        },
    )
    return job_id, job_dir / "model.keras"


def naive_app():
    """The baseline: a Flask view that calls `model.predict` on each request's rows."""
    import keras
    from flask import Flask, jsonify, request

    model = keras.saving.load_model(os.environ["BENCH_MODEL"], compile=False, safe_mode=True)
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        rows = np.asarray(request.get_json()["instances"], dtype="float32")
        return jsonify({"predictions": model.predict(rows, verbose=0).tolist()})

    return app


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def ready(url: str, body: bytes) -> bool:
    headers = {"Content-Type": "application/json"}
    return requests.post(url, data=body, headers=headers, timeout=30).status_code == 200


def wrk(url: str, script: Path, clients: int, seconds: int) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 in ms; fails on any non-2xx answer."""
    # A long timeout: the baseline answers 16 queued clients in seconds, not in wrk's 2 s.
    argv = ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds}s", "--timeout", "60s"]
    argv.append("--latency")
    out = subprocess.run(
        [*argv, "-s", str(script), url], capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw error answers:\n{out}")
    latency = {
        int(pct): float(value) * _UNITS[unit]
        for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"rps": rate, "p50": latency[50], "p99": latency[99]}


def measure(
    name: str,
    argv: list[str],
    env: dict[str, str],
    url: str,
    files: tuple[Path, Path, Path],
    seconds: int,
    single: bool,
) -> dict[str, dict[str, float]]:
    script, body, log = files
    process = start(argv, env, log)
    try:
        wait_for(lambda: ready(url, body.read_bytes()), START_SECONDS, f"{name} (log: {log})")
        wrk(url, script, 16, 3)  # warm-up: reaches every worker and thread
        results = {}
        if single:
            ready(url, body.read_bytes())  # answered once the warm-up's backlog is
            results["c1"] = wrk(url, script, 1, seconds)
        ready(url, body.read_bytes())
        results["c16"] = wrk(url, script, 16, seconds)
        return results
    finally:
        stop_tree(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as folder:
        folder = Path(folder)
        data = DataDir(folder / "data")
        job_id, model_file = write_job(data)
        pixels = np.random.default_rng(0).integers(0, 256, size=(1, 784)).tolist()
        body = folder / "body.json"
        body.write_bytes(orjson.dumps({"instances": pixels}))
        script = folder / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f'local f = io.open("{body}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
        )
        env = {
            **os.environ,
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "FITSERVE_DATA_DIR": str(data.root),
            "FITSERVE_REDIS_URL": "redis://127.0.0.1:1/0",  # predictions never touch Redis
            "CUDA_VISIBLE_DEVICES": "-1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "BENCH_MODEL": str(model_file),
        }
        port = free_port()
        service_url = f"http://127.0.0.1:{port}/v1/models/{job_id}:predict"
        service = compose_command("api", bind=f"127.0.0.1:{port}")
        files = (script, body, folder / "api.log")
        on = measure("fitserve", service, env, service_url, files, args.seconds, single=True)
        off_env = {**env, "FITSERVE_PREDICT_MAX_BATCH_ROWS": "1"}
        off = measure(
            "fitserve, no batching", service, off_env, service_url, files, args.seconds, False
        )
        naive_argv = [
            "gunicorn", "--workers", "1", "--worker-class", "sync",
            "--bind", f"127.0.0.1:{port}", "bench.predict:naive_app()",
        ]  # fmt: skip
        naive_url = f"http://127.0.0.1:{port}/predict"
        files = (script, body, folder / "naive.log")
        naive = measure("baseline", naive_argv, env, naive_url, files, args.seconds, single=True)
    report(on, off, naive)
    return 0


def report(on: dict, off: dict, naive: dict) -> None:
    load = os.getloadavg()[0]
    print(f"single-row predictions, seed MLP 784-32-10, {os.cpu_count()} CPUs, load {load:.1f}")
    print(f"{'':28}{'p50 ms':>9}{'p99 ms':>9}{'req/s 1c':>11}{'req/s 16c':>11}")
    for name, runs in (
        ("fitserve (batching on)", on),
        ("fitserve (batching off)", off),
        ("baseline (model.predict)", naive),
    ):
        one = runs.get("c1")
        cells = f"{one['p50']:9.2f}{one['p99']:9.2f}{one['rps']:11.1f}" if one else " " * 29
        print(f"{name:28}{cells}{runs['c16']['rps']:11.1f}")
    ratios = (
        ("throughput at 16 clients, fitserve / baseline", on["c16"]["rps"] / naive["c16"]["rps"]),
        ("throughput at 1 client, fitserve / baseline", on["c1"]["rps"] / naive["c1"]["rps"]),
        ("p50 at 1 client, baseline / fitserve", naive["c1"]["p50"] / on["c1"]["p50"]),
        ("batching on / off at 16 clients", on["c16"]["rps"] / off["c16"]["rps"]),
    )
    for name, ratio in ratios:
        print(f"{name + ':':48}{ratio:7.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
