"""Batch prediction overhead: the seed model scoring a stored dataset through the real stack,
against a bare `model.predict` over the same memory-mapped array in one process.

    .venv/bin/python bench/batch_predict.py [--rows 1000000] [--batch-size 4096]

Starts the stack as the end-to-end tests do (redis-server, a Celery worker, gunicorn, nginx in
front), trains the seed MLP for one epoch on 10 000 rows, and stores `--rows` rows of 784
float32 features as a dataset (written straight into the stack's data folder: the upload is not
what is measured). Then, in this order:
1. the batch prediction: submit to succeeded, seen by a client through nginx (the worker loads
   the model, scores in batches, writes the outputs and makes the result dataset);
2. `model.predict(x, batch_size=...)` on the dataset's own `.npy`, memory-mapped, in this
   process, with the same batch size (the model loaded and warmed first, not timed).
Prints both wall times and their ratio. Aim: the batch prediction <= 1.5 x model.predict.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import datasets  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage import DataDir, new_id  # noqa: E402
from tests.support.seed_model import FEATURES, make_blobs, save_blobs, seed_request  # noqa: E402
from tests.support.stack import Stack, running_stack  # noqa: E402

AIM_RATIO = 1.5
CHUNK_ROWS = 50_000


def write_rows(path: Path, rows: int) -> Path:
    """`rows` x 784 float32 blobs as one `.npy`, written a chunk at a time."""
    array = np.lib.format.open_memmap(path, "w+", np.float32, (rows, FEATURES))
    for low in range(0, rows, CHUNK_ROWS):
        high = min(low + CHUNK_ROWS, rows)
        array[low:high] = make_blobs(high - low, seed=low)[0]
    array.flush()
    del array
    return path


def train_seed_model(stack: Stack, folder: Path) -> str:
    with open(save_blobs(folder / "train.npz", 10_000), "rb") as handle:
        upload = requests.post(
            stack.url("/v1/datasets"), files={"file": ("train.npz", handle)}, timeout=600
        )
    upload.raise_for_status()
    job = stack.submit(seed_request(upload.json()["id"], epochs=1))
    done = stack.wait_finished(job["id"], timeout=1800)
    assert done["status"] == "succeeded", done["error"]
    return job["id"]


def store_dataset(stack: Stack, path: Path) -> str:
    """The rows as a dataset of the stack (the `.npy` moved into place, hashed, described)."""
    settings = Settings.from_env(stack.env)
    dataset_id = new_id()
    datasets.store_upload(
        DataDir(stack.data_dir),
        dataset_id,
        path,
        settings=settings,
        owner=None,
        filename=path.name,
        name="x",
    )
    return dataset_id


def run_batch(stack: Stack, job_id: str, dataset_id: str, batch_size: int) -> dict:
    started = time.perf_counter()
    response = requests.post(
        stack.url("/v1/batch-predictions"),
        json={"model": job_id, "dataset": dataset_id, "batch_size": batch_size},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    url = stack.url(response.headers["Location"])
    while (batch := requests.get(url, timeout=60).json())["status"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    assert batch["status"] == "succeeded", batch
    return {"seconds": seconds, **batch}


def run_predict(stack: Stack, job_id: str, dataset_id: str, batch_size: int) -> float:
    """`model.predict` over the dataset's memory-mapped array: its seconds."""
    import keras

    model = keras.saving.load_model(stack.data_dir / "jobs" / job_id / "model.keras")
    x = datasets.open_array(DataDir(stack.data_dir), dataset_id, "x")
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)
    started = time.perf_counter()
    model.predict(x, batch_size=batch_size, verbose=0)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()

    settings = {
        "FITSERVE_MAX_DATASET_BYTES": str(64 << 30),
        "FITSERVE_MAX_UPLOAD_BYTES": str(64 << 30),
        # The default commit interval, not the small one the fault tests run with.
        "FITSERVE_BATCH_PREDICT_CHUNK_ROWS": "65536",
    }
    with tempfile.TemporaryDirectory(prefix="fitserve-bench-") as tmp:
        folder = Path(tmp)
        rows = write_rows(folder / "rows.npy", args.rows)
        with running_stack(folder / "stack", "bench", settings) as stack:
            job_id = train_seed_model(stack, folder)
            dataset_id = store_dataset(stack, rows)
            batch = run_batch(stack, job_id, dataset_id, args.batch_size)
            predict_seconds = run_predict(stack, job_id, dataset_id, args.batch_size)

    ratio = batch["seconds"] / predict_seconds
    print(
        f"batch prediction benchmark: seed model, {args.rows} rows x {FEATURES} features, "
        f"batch {args.batch_size}, CPU"
    )
    print(f"  {'batch prediction, submit to succeeded':<46} {batch['seconds']:.2f} s")
    print(f"  {'model.predict over the memory-mapped array':<46} {predict_seconds:.2f} s")
    verdict = f"(aim <= {AIM_RATIO}: {'met' if ratio <= AIM_RATIO else 'MISSED'})"
    print(f"  {'ratio batch prediction / model.predict':<46} {ratio:.3f}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
