"""Prediction serving: fitserve against four other servers of the same model, under wrk.

    .venv/bin/python bench/predict.py [--seconds 10]

Every server serves DESIGN.md's seed MLP (784 -> 32 relu -> 10 softmax), saved as a succeeded
job's `model.keras`, behind the same nginx config as the service (scripts/proxy.py renders it):
- fitserve, as docker-compose.yml runs it (gunicorn gthread, its worker count), with a Redis of
  its own for the rate limiter;
- naive: one sync gunicorn worker whose Flask view calls `model.predict` per request;
- MLflow's scoring server on the same weights (uvicorn, the service's worker count), when
  `mlflow` (with pandas) is importable; otherwise it is skipped, and the table says why;
- the yardstick: the service's gunicorn shape, a compiled forward function, orjson, no batching;
- the HTTP ceiling: the same shape, the same body parsed into an array, a fixed answer.
wrk (Debian's `apt-get install wrk`) sends single-row POSTs `{"instances": [[784 pixels]]}` with
1, 16 and 64 connections after a warm-up that reaches every worker. The table shows p50, p99 and
req/s of each, non-2xx answers, fitserve's requests per forward pass (from /metrics), and the
ratios against the goals of the serving issue.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.checkpoints import save_model_file  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage import DataDir, new_id, utc_now, write_json  # noqa: E402
from scripts.proxy import local_proxy_command, write_config  # noqa: E402
from scripts.stack import compose_command  # noqa: E402
from tests.support.processes import free_port, redis_server, stop_tree, wait_for  # noqa: E402

START_SECONDS = 240
CLIENTS = (1, 16, 64)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
# The service's gunicorn shape, read from its own files: worker class and threads from its
# config, the worker count from docker-compose.yml's command line.
_GUNICORN = runpy.run_path(str(ROOT / "service" / "gunicorn.conf.py"))
_API_ARGV = compose_command("api")
WORKERS = _API_ARGV[_API_ARGV.index("--workers") + 1]


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


def _rows(body: bytes) -> np.ndarray:
    return np.asarray(orjson.loads(body)["instances"], dtype="float32")


def naive_app():
    """The naive server: a Flask view that calls `model.predict` on each request's rows."""
    import keras
    from flask import Flask, jsonify, request

    model = keras.saving.load_model(os.environ["BENCH_MODEL"], compile=False, safe_mode=True)
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        rows = np.asarray(request.get_json()["instances"], dtype="float32")
        return jsonify({"predictions": model.predict(rows, verbose=0).tolist()})

    return app


def yardstick_app():
    """The yardstick: a compiled forward function per request, orjson both ways, no batching."""
    import keras
    import tensorflow as tf
    from flask import Flask, Response, request

    model = keras.saving.load_model(os.environ["BENCH_MODEL"], compile=False, safe_mode=True)
    spec = tf.TensorSpec((None, 784), "float32")
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    forward = forward.get_concrete_function()
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        outputs = forward(_rows(request.get_data())).numpy()
        body = orjson.dumps({"predictions": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(body, mimetype="application/json")

    return app


def ceiling_app():
    """The HTTP ceiling: the body parsed into an array as the others do, a fixed answer."""
    from flask import Flask, Response, request

    answer = orjson.dumps({"predictions": [[0.1] * 10]})
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        _rows(request.get_data())
        return Response(answer, mimetype="application/json")

    return app


def shaped_gunicorn(app: str, bind: str) -> list[str]:
    """gunicorn in the service's shape (worker class, threads, workers, access log) on `app`."""
    return [
        "gunicorn", "--worker-class", _GUNICORN["worker_class"],
        "--threads", str(_GUNICORN["threads"]), "--workers", WORKERS,
        "--keep-alive", str(_GUNICORN["keepalive"]), "--access-logfile", "-",
        "--bind", bind, app,
    ]  # fmt: skip


def mlflow_argv(folder: Path, bind: str) -> tuple[list[str], dict[str, str]] | str:
    """MLflow's scoring server on the seed model (saved with its TensorFlow flavor), or why not."""
    try:
        import mlflow.tensorflow
        from mlflow.pyfunc import scoring_server
    except ImportError as error:
        return f"mlflow is not importable ({error}); pip install mlflow-skinny pandas"
    path = folder / "mlflow-model"
    mlflow.tensorflow.save_model(seed_model(), str(path))
    host, port = bind.split(":")
    argv = [sys.executable, "-m", "uvicorn", "--host", host, "--port", port]
    argv += ["--workers", WORKERS, "mlflow.pyfunc.scoring_server.app:app"]
    return argv, {scoring_server._SERVER_MODEL_PATH: str(path)}


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def ready(url: str, body: bytes) -> bool:
    headers = {"Content-Type": "application/json"}
    return requests.post(url, data=body, headers=headers, timeout=30).status_code == 200


def wrk(url: str, script: Path, clients: int, seconds: int) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 in ms, and the answers that were not 2xx."""
    # A long timeout: the naive server answers 64 queued clients in seconds, not in wrk's 2 s.
    argv = ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds}s", "--timeout", "60s"]
    argv.append("--latency")
    out = subprocess.run(
        [*argv, "-s", str(script), url], capture_output=True, text=True, check=True
    ).stdout
    latency = {
        int(pct): float(value) * _UNITS[unit]
        for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = int(failed.group(1)) if failed else 0
    bad += sum(int(count) for count in errors.groups()) if errors else 0
    return {"rps": rate, "p50": latency[50], "p99": latency[99], "bad": bad}


def passes_per_request(metrics_url: str) -> Callable[[], tuple[float, float]]:
    """A reader of fitserve's batch-size histogram: (forward passes, requests in them)."""

    def read() -> tuple[float, float]:
        text = requests.get(metrics_url, timeout=30).text
        values = dict(
            re.findall(r"^fitserve_predict_batch_requests_(count|sum) (\S+)$", text, re.M)
        )
        return float(values.get("count", 0)), float(values.get("sum", 0))

    return read


def measure(
    name: str,
    server: tuple[list[str], dict[str, str], str],
    upstream: str,
    folder: Path,
    files: tuple[Path, Path],
    seconds: int,
    histogram: Callable[[], tuple[float, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Start one server (listening on `upstream`) behind nginx, run wrk at each client count,
    stop both; `server` is its argv, environment and predict path."""
    argv, env, path = server
    script, body = files
    listen = f"127.0.0.1:{free_port()}"
    config = write_config(
        folder / f"proxy-{name}", Settings.from_env(env), listen=listen, upstream=upstream
    )
    log = folder / f"{name}.log"
    processes = [start(argv, env, log), start(local_proxy_command(config), env, log)]
    url = f"http://{listen}{path}"
    try:
        wait_for(lambda: ready(url, body.read_bytes()), START_SECONDS, f"{name} (log: {log})")
        wrk(url, script, 16, 3)  # warm-up: reaches every worker and thread
        results = {}
        for clients in CLIENTS:
            ready(url, body.read_bytes())  # answered once the last run's backlog is
            before = histogram() if histogram else None
            results[f"c{clients}"] = wrk(url, script, clients, seconds)
            if histogram and before:
                passes, requests_ = (b - a for a, b in zip(before, histogram(), strict=True))
                results[f"c{clients}"]["per_pass"] = requests_ / passes if passes else 0.0
        return results
    finally:
        for process in reversed(processes):
            stop_tree(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    print(f"before: {uptime()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as folder:
        folder = Path(folder)
        results, skipped = run_all(folder, args.seconds)
    print(f"after: {uptime()}")
    report(results, skipped)
    return 0


def run_all(folder: Path, seconds: int) -> tuple[dict[str, dict], dict[str, str]]:
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
    files = (script, body)
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    with redis_server(folder / "redis") as redis_url:
        env = {
            **os.environ,
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "FITSERVE_DATA_DIR": str(data.root),
            "FITSERVE_REDIS_URL": redis_url,
            "FITSERVE_TRUSTED_PROXIES": "127.0.0.1",
            # The limiter counts every request, as it does by default, but never refuses one:
            # all requests come from one address, past the default 60,000 a minute.
            "FITSERVE_RATE_LIMIT": str(10**9),
            "CUDA_VISIBLE_DEVICES": "-1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "BENCH_MODEL": str(model_file),
        }
        bind = f"127.0.0.1:{free_port()}"
        service = (compose_command("api", bind=bind), env, f"/v1/models/{job_id}:predict")
        metrics = passes_per_request(f"http://{bind}/metrics")
        results["fitserve"] = measure("fitserve", service, bind, folder, files, seconds, metrics)
        naive_argv = ["gunicorn", "--workers", "1", "--worker-class", "sync"]
        naive_argv += ["--bind", bind, "bench.predict:naive_app()"]
        results["naive"] = measure(
            "naive", (naive_argv, env, "/predict"), bind, folder, files, seconds
        )
        mlflow = mlflow_argv(folder, bind)
        if isinstance(mlflow, str):
            skipped["mlflow"] = mlflow
        else:
            server = (mlflow[0], env | mlflow[1], "/invocations")
            results["mlflow"] = measure("mlflow", server, bind, folder, files, seconds)
        for name in ("yardstick", "ceiling"):
            server = (shaped_gunicorn(f"bench.predict:{name}_app()", bind), env, "/predict")
            results[name] = measure(name, server, bind, folder, files, seconds)
    return results, skipped


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def report(results: dict[str, dict[str, Any]], skipped: dict[str, str]) -> None:
    print(f"single-row predictions, seed MLP 784-32-10, {os.cpu_count()} CPUs, behind nginx")
    header = f"{'':11}{'p50 1c':>8}{'p99 1c':>8}"
    header += "".join(f"{f'req/s {c}c':>12}{f'p50 {c}c':>9}" for c in CLIENTS)
    print(header + f"{'non-2xx':>9}{'req/pass 16c/64c':>18}")
    for name, runs in results.items():
        cells = f"{runs['c1']['p50']:8.2f}{runs['c1']['p99']:8.2f}"
        cells += "".join(
            f"{runs[f'c{c}']['rps']:12.1f}{runs[f'c{c}']['p50']:9.2f}" for c in CLIENTS
        )
        cells += f"{sum(runs[f'c{c}']['bad'] for c in CLIENTS):9d}"
        if "per_pass" in runs["c16"]:
            cells += f"{runs['c16']['per_pass']:10.2f}{runs['c64']['per_pass']:8.2f}"
        print(f"{name:11}{cells}")
    for name, why in skipped.items():
        print(f"{name:11}skipped: {why}")
    ours, ceiling, yardstick = results["fitserve"], results["ceiling"], results["yardstick"]
    print("goals (fitserve):")
    goals = [("p50 at 1 client / ceiling's", ours["c1"]["p50"] / ceiling["c1"]["p50"], "<= 1.30")]
    for clients in CLIENTS[1:]:
        key = f"c{clients}"
        goals.append(
            (f"req/s at {clients} / ceiling's", ours[key]["rps"] / ceiling[key]["rps"], ">= 0.70")
        )
        goals.append(
            (
                f"req/s at {clients} / yardstick's",
                ours[key]["rps"] / yardstick[key]["rps"],
                ">= 1.50",
            )
        )
    for name, ratio, goal in goals:
        met = ratio <= 1.3 if goal.startswith("<=") else ratio >= float(goal.split()[1])
        print(f"  {name:32}{ratio:6.2f}  goal {goal}  {'met' if met else 'MISSED'}")
    bad = sum(ours[f"c{c}"]["bad"] for c in CLIENTS)
    print(f"  {'non-2xx answers':32}{bad:6d}  goal 0  {'met' if bad == 0 else 'MISSED'}")


if __name__ == "__main__":
    raise SystemExit(main())
