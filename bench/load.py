"""Throughput and errors under load: many tiny jobs through one worker, predictions meanwhile.

    .venv/bin/python bench/load.py [--jobs 50] [--rows 64] [--clients 16] [--seconds 10]

Starts redis-server, one Celery worker and gunicorn with docker-compose.yml's command lines, as
the end-to-end tests do. Then:
1. `--jobs` one-epoch jobs of the e2e tests' tiny classifier on `--rows` rows, submitted at once
   from 8 threads: jobs per minute from the first submit to the last job's end;
2. the baseline: the same fits back to back in one plain Python process (this file with
   `--baseline`, imports not timed, each fit saving its model once as a job's final model is);
3. `--clients` threads predicting without pause for `--seconds` against a finished job while
   the worker trains a longer job: requests answered, and every answer that was not a 200.
Prints the figures and the ratio of the two throughputs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.stack import Stack, blobs, running_stack, tiny_request  # noqa: E402

FEATURES = 16


def run_baseline(data: Path, fits: int, folder: Path) -> dict:
    """`fits` one-epoch fits of the job's model in this process; seconds after the imports."""
    import keras

    arrays = np.load(data, allow_pickle=False)
    x, y = arrays["x"], arrays["y"]
    started = time.perf_counter()
    for index in range(fits):
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((FEATURES,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(0.001),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        model.fit(x, y, epochs=1, batch_size=32, validation_split=0.1, verbose=0)
        model.save(folder / f"model-{index}.keras")
    return {"seconds": time.perf_counter() - started}


def baseline(data: Path, fits: int, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="fitserve-baseline-") as folder:
        output = subprocess.run(
            [sys.executable, __file__, "--baseline", str(data), str(fits), folder],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return json.loads(output.splitlines()[-1])


def run_jobs(stack: Stack, dataset_id: str, count: int) -> dict:
    """Submit `count` tiny jobs at once; wait for all; seconds and statuses."""
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        jobs = list(
            pool.map(lambda _: stack.submit(tiny_request(dataset_id, epochs=1)), range(count))
        )
    finished = [stack.wait_finished(job["id"], timeout=60 + 10 * count) for job in jobs]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "jobs": finished}


def predict_under_load(stack: Stack, model: str, clients: int, seconds: float) -> dict:
    """`clients` threads predicting without pause; counts of answers by status."""
    import requests

    url = stack.url(f"/v1/models/{model}:predict")
    body = {"instances": np.zeros((4, FEATURES)).tolist()}
    counts: dict[int | str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                try:
                    status: int | str = session.post(url, json=body, timeout=30).status_code
                except requests.RequestException as error:
                    status = type(error).__name__
                with lock:
                    counts[status] = counts.get(status, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fitserve-bench-") as tmp:
        folder = Path(tmp)
        arrays = {**blobs(rows=args.rows, features=FEATURES)}
        data = folder / "tiny.npz"
        np.savez(data, **arrays)
        with running_stack(folder / "stack", "load") as stack:
            dataset_id = stack.upload(**arrays)
            # The worker's first job loads the training modules: keep it out of the figure.
            warm = stack.wait_finished(stack.submit(tiny_request(dataset_id, epochs=1))["id"])
            jobs = run_jobs(stack, dataset_id, args.jobs)
            plain = baseline(data, args.jobs, stack.env)
            long_job = stack.submit(tiny_request(dataset_id, epochs=2000))
            counts = predict_under_load(stack, warm["id"], args.clients, args.seconds)
            requests_post_cancel(stack, long_job["id"])

    statuses = [job["status"] for job in jobs["jobs"]]
    attempts = [job["attempt"] for job in jobs["jobs"]]
    per_minute = 60 * args.jobs / jobs["seconds"]
    plain_per_minute = 60 * args.jobs / plain["seconds"]
    answered = sum(counts.values())
    errors = answered - counts.get(200, 0)
    print(f"load benchmark: {args.jobs} one-epoch jobs of {args.rows} rows, one worker")
    rows = [
        ("jobs through one worker", f"{per_minute:.1f} jobs/min ({jobs['seconds']:.1f} s)"),
        (
            "  succeeded / attempts > 1",
            f"{statuses.count('succeeded')} / {sum(a > 1 for a in attempts)}",
        ),
        (
            "same fits in one plain process",
            f"{plain_per_minute:.1f} fits/min ({plain['seconds']:.1f} s)",
        ),
        ("ratio service / plain", f"{per_minute / plain_per_minute:.3f}"),
        (
            f"predictions, {args.clients} clients for {args.seconds:.0f} s during training",
            f"{answered} answered ({answered / args.seconds:.0f}/s), {errors} errors {counts}",
        ),
    ]
    for label, value in rows:
        print(f"  {label:<56} {value}")
    return 0


def requests_post_cancel(stack: Stack, job_id: str) -> None:
    import requests

    requests.post(stack.url(f"/v1/jobs/{job_id}:cancel"), timeout=30)
    stack.wait_finished(job_id)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--baseline"]:
        data, fits, folder = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
        print(json.dumps(run_baseline(Path(data), fits, folder)))
        sys.exit(0)
    sys.exit(main())
