"""Training overhead: the seed model as a job through the real stack, against a bare Keras script.

    .venv/bin/python bench/train.py [--rows 60000] [--epochs 5] [--latency-jobs 5]

Starts redis-server, one Celery worker and gunicorn with docker-compose.yml's command lines, as
the end-to-end tests do, and uploads 10 Gaussian blobs of 784 features. Then, in this order:
1. submit-to-running latency with an idle worker: tiny jobs one after another, the median of the
   server's own `created_at` -> `started_at` and of what a client polling every 2 ms sees (the
   worker's first job, which loads the training modules, is shown apart);
2. the bare script (bench/keras_script.py) on the same data and settings, as a subprocess with the
   stack's environment: its whole run (interpreter start and imports included) and fit() alone;
3. the same model and data as a job: submit to succeeded, seen by the client.
Prints the figures and the ratios. Aims: job <= 1.15 x the whole script and <= 1.05 x fit()
alone (checkpoints are written off the training thread); to running < 100 ms.
`CUDA_VISIBLE_DEVICES` chooses the device for both sides (unset: the CPU, as in the tests).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.seed_model import FEATURES, save_blobs, seed_request  # noqa: E402
from tests.support.stack import Stack, blobs, running_stack, tiny_request  # noqa: E402

AIM_RATIO = 1.15
AIM_FIT_RATIO = 1.05
AIM_LATENCY_MS = 100


def upload_file(stack: Stack, path: Path) -> str:
    with open(path, "rb") as handle:
        response = requests.post(
            stack.url("/v1/datasets"), files={"file": (path.name, handle)}, timeout=600
        )
    response.raise_for_status()
    return response.json()["id"]


def submit_to_running(stack: Stack, dataset_id: str) -> tuple[float, float]:
    """One tiny job on an idle worker: (server seconds, client seconds) from submit to running."""
    started = time.perf_counter()
    job = stack.submit(tiny_request(dataset_id, epochs=1))
    while stack.job(job["id"])["status"] == "queued":
        time.sleep(0.002)
    client = time.perf_counter() - started
    done = stack.wait_finished(job["id"])
    assert done["status"] == "succeeded", done["error"]
    return done["timings"]["queued_seconds"], client


def run_script(data: Path, epochs: int, env: dict[str, str]) -> dict:
    """The bare Keras script as a subprocess: its wall time seen from here, and its own figures."""
    started = time.perf_counter()
    output = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "keras_script.py"), str(data), str(epochs)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {"wall_seconds": time.perf_counter() - started, **json.loads(output.splitlines()[-1])}


def run_job(stack: Stack, dataset_id: str, epochs: int) -> dict:
    """The seed model as a job: seconds from submit to succeeded, seen by the client."""
    started = time.perf_counter()
    job = stack.submit(seed_request(dataset_id, epochs=epochs))
    done = stack.wait_finished(job["id"], timeout=3600)
    seconds = time.perf_counter() - started
    assert done["status"] == "succeeded", done["error"]
    return {"seconds": seconds, **done}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--latency-jobs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fitserve-bench-") as tmp:
        folder = Path(tmp)
        data = save_blobs(folder / "blobs.npz", args.rows)
        with running_stack(folder / "stack", "bench") as stack:
            seed_dataset = upload_file(stack, data)
            tiny_dataset = stack.upload(**blobs())
            first = submit_to_running(stack, tiny_dataset)
            latencies = [submit_to_running(stack, tiny_dataset) for _ in range(args.latency_jobs)]
            script = run_script(data, args.epochs, stack.env)
            job = run_job(stack, seed_dataset, args.epochs)

    server_ms = 1000 * statistics.median(server for server, _ in latencies)
    client_ms = 1000 * statistics.median(client for _, client in latencies)
    ratio = job["seconds"] / script["wall_seconds"]
    fit_ratio = job["seconds"] / script["fit_seconds"]
    device = ", ".join(str(gpu) for gpu in job["device"].get("gpus") or []) or "CPU"
    rows = [
        ("bare Keras script, whole run (imports included)", f"{script['wall_seconds']:.2f} s"),
        ("bare Keras script, fit() alone", f"{script['fit_seconds']:.2f} s"),
        ("job, submit to succeeded", f"{job['seconds']:.2f} s"),
        ("  of which the worker ran it", f"{job['timings']['running_seconds']:.2f} s"),
        (
            "ratio job / whole script",
            f"{ratio:.3f}  (aim <= {AIM_RATIO}: {met(ratio <= AIM_RATIO)})",
        ),
        (
            "ratio job / fit() alone",
            f"{fit_ratio:.3f}  (aim <= {AIM_FIT_RATIO}: {met(fit_ratio <= AIM_FIT_RATIO)})",
        ),
        (
            "submit to running, the worker's first job",
            f"{1000 * first[0]:.1f} ms server, {1000 * first[1]:.1f} ms client",
        ),
        (
            f"submit to running, idle worker (median of {len(latencies)} more)",
            f"{server_ms:.1f} ms server, {client_ms:.1f} ms client  "
            f"(aim < {AIM_LATENCY_MS} ms: {met(server_ms < AIM_LATENCY_MS)})",
        ),
        (
            "val_accuracy, script / job",
            f"{script['val_accuracy']:.4f} / {job['metrics']['last']['val_accuracy']:.4f}",
        ),
    ]
    print(
        f"training benchmark: seed model, {args.rows} rows x {FEATURES} features, "
        f"{args.epochs} epochs, batch 128, device {device}"
    )
    for label, value in rows:
        print(f"  {label:<52} {value}")
    return 0


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
