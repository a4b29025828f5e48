"""Training from a dataset larger than memory should hold: the worker's memory and its speed.

    .venv/bin/python bench/data.py [--gb 4] [--source import|upload] [--slice-gb 0.5]

Writes the seed model's data (10 Gaussian blobs, float32 rows of 784 features, int64 labels) of
`--gb` gigabytes to disk as an uncompressed .npz, chunk by chunk, and starts the stack (with its
CPU task worker) as the end-to-end tests do. The dataset arrives by import (`{"import": path}`
under FITSERVE_IMPORT_DIR, the way for data past the upload cap) or, with `--source upload`, as
one .npz upload (the bench's stack then takes uploads of that size). After a tiny warm-up job,
the seed model trains one epoch on it while the worker's memory (RSS over its process tree,
sampled every 50 ms) is watched. Then a bare Keras script fits one epoch in memory on a slice
of `--slice-gb` of the same data.

Prints the worker's peak RSS growth against the dataset's size (aim < 25%) and rows per second
of the job's epoch against the in-memory fit() (aim >= 0.8x).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.train import run_script  # noqa: E402
from core.jobs import parse_time  # noqa: E402
from tests.support.memory import PeakRss  # noqa: E402
from tests.support.seed_model import CLASSES, FEATURES, seed_request  # noqa: E402
from tests.support.stack import Stack, blobs, running_stack, tiny_request  # noqa: E402

AIM_RSS_SHARE = 0.25
AIM_SPEED = 0.8
CHUNK_ROWS = 65_536
ROW_BYTES = FEATURES * 4 + 8


def write_blobs(path: Path, rows: int, seed: int = 0) -> Path:
    """An uncompressed .npz of the seed model's blobs (`x`, `y`), written a chunk at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.2, size=(CLASSES, FEATURES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, size=rows)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(
                member, {"descr": "<f4", "fortran_order": False, "shape": (rows, FEATURES)}
            )
            for start in range(0, rows, CHUNK_ROWS):
                chosen = labels[start : start + CHUNK_ROWS]
                noise = rng.standard_normal((len(chosen), FEATURES), np.float32)
                member.write((centres[chosen] + noise).tobytes())
        with archive.open("y.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, labels.astype(np.int64))
    return path


def upload_dataset(stack: Stack, path: Path) -> str:
    """The .npz as one upload, streamed from disk."""
    with open(path, "rb") as handle:
        response = requests.post(
            stack.url("/v1/datasets"), files={"file": (path.name, handle)}, timeout=3600
        )
    response.raise_for_status()
    return response.json()["id"]


def train_one_epoch(stack: Stack, dataset_id: str) -> dict:
    """The seed model, one epoch; the job, its epoch's seconds and the worker's RSS figures."""
    job = stack.submit(seed_request(dataset_id, epochs=1))
    done = stack.wait_finished(job["id"], timeout=3600)
    if done["status"] != "succeeded":
        raise SystemExit(f"job failed: {done['error']}\n{stack.log_tail('worker-bench')}")
    events = {event["kind"]: parse_time(event["time"]) for event in stack.events(job["id"])}
    epoch_seconds = events["checkpoint"] - events["training_started"]
    return {"job": done, "epoch_seconds": epoch_seconds}


def in_memory_slice(path: Path, rows: int) -> Path:
    """The first `rows` rows as an .npz for the bare script."""
    target = path.parent.parent / "slice.npz"
    with zipfile.ZipFile(path) as archive:
        with archive.open("x.npy") as member:
            np.lib.format.read_magic(member)
            np.lib.format.read_array_header_2_0(member)  # write_blobs writes version 2.0
            x = np.frombuffer(member.read(rows * FEATURES * 4), np.float32).reshape(rows, FEATURES)
        with archive.open("y.npy") as member:
            y = np.lib.format.read_array(member, allow_pickle=False)[:rows]
    np.savez(target, x=x, y=y)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=4.0, help="dataset size in GB (1e9 bytes)")
    parser.add_argument("--source", choices=("import", "upload"), default="import")
    parser.add_argument("--slice-gb", type=float, default=0.5, help="in-memory baseline's size")
    args = parser.parse_args()
    rows = int(args.gb * 1e9 // ROW_BYTES)
    slice_rows = min(rows, int(args.slice_gb * 1e9 // ROW_BYTES))

    with tempfile.TemporaryDirectory(prefix="fitserve-bench-") as tmp:
        folder = Path(tmp)
        data = write_blobs(folder / "imports" / "blobs.npz", rows)
        size = data.stat().st_size
        settings = {
            "FITSERVE_IMPORT_DIR": str(folder / "imports"),
            "FITSERVE_MAX_DATASET_BYTES": str(2 * size),
            "FITSERVE_UPLOAD_CPU_SECONDS": "3600",
        }
        if args.source == "upload":
            settings["FITSERVE_MAX_UPLOAD_BYTES"] = str(2 * size)
        with running_stack(folder / "stack", "bench", settings, tasks=True) as stack:
            started = time.perf_counter()
            if args.source == "import":
                dataset_id = stack.import_dataset(data.name, timeout=3600)
            else:
                dataset_id = upload_dataset(stack, data)
            arrived = time.perf_counter() - started
            warm = stack.submit(tiny_request(stack.upload(**blobs()), epochs=1))
            stack.wait_finished(warm["id"])
            with PeakRss(stack.workers["bench"].pid) as rss:
                trained = train_one_epoch(stack, dataset_id)
        script = run_script(in_memory_slice(data, slice_rows), 1, stack.env)

    growth, before = rss.growth, rss.before
    job_speed = rows / trained["epoch_seconds"]
    bare_speed = slice_rows / script["fit_seconds"]
    share, speed = growth / size, job_speed / bare_speed
    print(
        f"data benchmark: seed model, one epoch, {rows:,} rows x {FEATURES} features "
        f"({size / 1e9:.2f} GB by {args.source}), batch 128, CPU"
    )
    lines = [
        (f"dataset {args.source}ed and ready", f"{arrived:.1f} s"),
        ("worker RSS before the job", f"{before / 1e6:,.0f} MB"),
        ("worker RSS peak growth during the epoch", f"{growth / 1e6:,.0f} MB"),
        (
            "growth / dataset size",
            f"{share:.1%}  (aim < {AIM_RSS_SHARE:.0%}: {met(share < AIM_RSS_SHARE)})",
        ),
        ("job epoch (training_started to its checkpoint)", f"{trained['epoch_seconds']:.1f} s"),
        ("job rows/s", f"{job_speed:,.0f}"),
        (f"in-memory fit() on {slice_rows:,} rows", f"{script['fit_seconds']:.1f} s"),
        ("in-memory fit() rows/s", f"{bare_speed:,.0f}"),
        ("ratio job / in-memory", f"{speed:.2f}  (aim >= {AIM_SPEED}: {met(speed >= AIM_SPEED)})"),
    ]
    for label, value in lines:
        print(f"  {label:<50} {value}")
    return 0


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
