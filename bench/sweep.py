"""Sweep overhead: a sweep's trials against the same trials submitted as separate jobs.

    .venv/bin/python bench/sweep.py [--trials 8] [--epochs 4] [--rows 4000]

Starts the stack as the end-to-end tests do (redis-server, two training workers, the CPU task
worker that drives sweeps, gunicorn behind nginx) and uploads `blobs` data. After one warm-up
job on each worker and a one-trial sweep (the task worker's first step loads the job parse):
1. a sweep of the tiny MLP (learning rate and units in the space, random sampler, pruning off,
   2 trials at a time): seconds from submit until it ended;
2. the very points the sweep tried, each as an ordinary job (the base patched at the same
   pointers), all submitted at once to the same two workers: seconds from the first submit until
   the last job ended.
Prints both per trial-epoch and their ratio. Aim: sweep <= 1.1 x the jobs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.sweeps import point_request  # noqa: E402
from tests.support.processes import wait_for  # noqa: E402
from tests.support.stack import Stack, blobs, running_stack, tiny_request  # noqa: E402

AIM_RATIO = 1.1
LR = "/compile/optimizer/config/learning_rate"
UNITS = "/model/layers/0/config/units"
TIMEOUT = 3600


def sweep_request(dataset_id: str, trials: int, epochs: int) -> dict:
    return {
        "name": "bench-sweep",
        "base": tiny_request(dataset_id, epochs=epochs, batch_size=32),
        "space": {LR: {"float": [0.0001, 0.1], "log": True}, UNITS: {"int": [8, 64], "step": 8}},
        "objective": {"metric": "val_loss", "mode": "min"},
        "sampler": "random",
        "pruner": "none",
        "max_trials": trials,
        "max_concurrent": 2,
        "seed": 11,
    }


def run_sweep(stack: Stack, body: dict) -> tuple[float, dict]:
    """Seconds from submit until the sweep ended, and the sweep."""
    started = time.perf_counter()
    response = requests.post(stack.url("/v1/sweeps"), json=body, timeout=120)
    response.raise_for_status()
    sweep_id = response.json()["id"]
    seen: dict = {}

    def ended() -> bool:
        seen.update(requests.get(stack.url(f"/v1/sweeps/{sweep_id}"), timeout=30).json())
        return seen["status"] not in ("running", "cancelling")

    wait_for(ended, TIMEOUT, f"sweep {sweep_id} to end", interval=0.05)
    seconds = time.perf_counter() - started
    assert seen["status"] == "succeeded", seen
    return seconds, seen


def run_jobs(stack: Stack, requests_: list[dict]) -> float:
    """Seconds from the first submit until the last of the jobs ended."""
    started = time.perf_counter()
    jobs = [stack.submit(request) for request in requests_]
    for job in jobs:
        done = stack.wait_finished(job["id"], timeout=TIMEOUT)
        assert done["status"] == "succeeded", done
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rows", type=int, default=4000)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="fitserve-bench-") as tmp,
        running_stack(Path(tmp) / "stack", "bench", tasks=True) as stack,
    ):
        stack.start_worker("bench2")
        dataset = stack.upload(**blobs(rows=args.rows))
        body = sweep_request(dataset, args.trials, args.epochs)
        # Each worker's first job loads the training modules, and the task worker's first sweep
        # step the job parse: not part of either figure.
        run_jobs(stack, [tiny_request(dataset, epochs=1)] * 2)
        run_sweep(stack, {**body, "name": "warm-up", "max_trials": 1})
        sweep_seconds, sweep = run_sweep(stack, body)
        points = [
            point_request(body["base"], trial["params"], sweep["priority"])
            for trial in sweep["trials"]
        ]
        jobs_seconds = run_jobs(stack, points)

    trial_epochs = args.trials * args.epochs
    ratio = sweep_seconds / jobs_seconds
    print(
        f"sweep benchmark: tiny MLP on {args.rows} blobs rows, {args.trials} trials x "
        f"{args.epochs} epochs, 2 at a time on two CPU workers, pruning off"
    )
    rows = [
        ("sweep, submit to ended", f"{sweep_seconds:.2f} s"),
        ("separate jobs, first submit to last ended", f"{jobs_seconds:.2f} s"),
        ("sweep per trial-epoch", f"{1000 * sweep_seconds / trial_epochs:.1f} ms"),
        ("separate jobs per trial-epoch", f"{1000 * jobs_seconds / trial_epochs:.1f} ms"),
        ("ratio sweep / jobs", f"{ratio:.3f}  (aim <= {AIM_RATIO}: {met(ratio <= AIM_RATIO)})"),
    ]
    for label, value in rows:
        print(f"  {label:<45} {value}")
    return 0


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
