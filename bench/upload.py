"""Upload throughput: a ~200 MB .npy through the app and through gunicorn, against a plain copy.

    .venv/bin/python bench/upload.py [--megabytes 200]
    .venv/bin/python bench/upload.py --tus [--megabytes 200]
    .venv/bin/python bench/upload.py --hostile [--cpu-limit 900]

The baseline copies the same multipart body to a file on the same filesystem and fsyncs it (what
an upload must do at least once). An upload streams the body to disk, checks it, hashes it,
computes its statistics and moves it into place: once into the Flask app in this process (the
app's own cost), once over HTTP into gunicorn as docker-compose.yml runs it (what a client sees).
Prints the throughputs, their ratios to the baseline, and the API workers' peak RSS growth.

`--tus` instead sends the same file as a resumable upload (tus 1.0) with the fitserve client
(tuspy, its default 16 MiB chunks) through nginx in front of gunicorn, as compose runs them, and
prints its throughput to the last byte on the server beside the plain copy's, and their ratio;
then the time the finished upload takes to become a dataset.

`--hostile` instead measures the CPU seconds that reading each of a set of hostile uploads of
about 600 KB takes (a header of 200,000 repeated names, 300,000 ragged rows, 60,000 rows of bad
cells, a .npy declaring (2**62, 0), 60,000 sorted labels deflated), each in a child process held
to `--cpu-limit` seconds, against a well-formed numeric CSV of the same size.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client import Client  # noqa: E402
from core import datasets, ingest  # noqa: E402
from core.errors import FitserveError  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage import DataDir, new_id  # noqa: E402
from scripts.proxy import local_proxy_command, write_config  # noqa: E402
from scripts.stack import compose_command  # noqa: E402
from service import create_app  # noqa: E402
from tests.support.processes import free_port, redis_server, stop_tree, wait_for  # noqa: E402


def write_array(path: Path, megabytes: int) -> None:
    rows = (megabytes << 20) // (64 * 4)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 64))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 1 << 14):
        stop = min(start + (1 << 14), rows)
        array[start:stop] = rng.random((stop - start, 64), dtype=np.float32)
    array.flush()


def write_multipart(array: Path, body: Path) -> str:
    """The request body on disk, so neither side of the benchmark holds it in memory."""
    boundary = uuid.uuid4().hex
    with open(body, "wb") as out, open(array, "rb") as source:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.npy"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        shutil.copyfileobj(source, out, 1 << 20)
        out.write(f"\r\n--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}"


def copy_baseline(body: Path, target: Path) -> float:
    started = time.perf_counter()
    with open(body, "rb") as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def start_api(data_dir: Path, port: int, redis_url: str | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "FITSERVE_DATA_DIR": str(data_dir),
        "FITSERVE_REDIS_URL": redis_url or f"redis://127.0.0.1:{free_port()}/0",
        "FITSERVE_MAX_UPLOAD_BYTES": str(2 << 30),
    }
    argv = compose_command("api", bind=f"127.0.0.1:{port}")
    argv[0] = str(Path(sys.executable).with_name(argv[0]))
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok, 180, "api")
    return process


def upload_in_process(body: Path, content_type: str, data_dir: Path) -> float:
    """Post the body to the app through the WSGI test client: no sockets, no server."""
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", data_dir=data_dir, max_upload_bytes=2 << 30
    )
    client = create_app(settings).test_client()
    started = time.perf_counter()
    with open(body, "rb") as handle:
        response = client.post(
            "/v1/datasets",
            input_stream=handle,
            content_type=content_type,
            content_length=body.stat().st_size,
        )
    elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise SystemExit(f"upload failed: {response.status_code} {response.text[:500]}")
    return elapsed


def upload(body: Path, content_type: str, port: int, api: subprocess.Popen) -> tuple[float, int]:
    """Post the body; return (seconds, peak RSS growth in bytes of the API's workers)."""
    workers = psutil.Process(api.pid).children()
    baseline = sum(worker.memory_info().rss for worker in workers)
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, sum(worker.memory_info().rss for worker in workers))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    # http.client with 1 MiB blocks: requests sends a file in 8 KiB writes, which would make
    # the client, not the server, the bottleneck on a small machine.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600, blocksize=1 << 20)
    with open(body, "rb") as handle:
        connection.request(
            "POST",
            "/v1/datasets",
            body=handle,
            headers={"Content-Type": content_type, "Content-Length": str(body.stat().st_size)},
        )
        response = connection.getresponse()
        answer = response.read()
    connection.close()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join(5)
    if response.status != 201:
        raise SystemExit(f"upload failed: {response.status} {answer[:500]!r}")
    return elapsed, peak - baseline


def start_proxy(folder: Path, port: int, upstream: int) -> subprocess.Popen:
    """nginx from the service's template, in front of the API at `upstream`."""
    config = write_config(
        folder / "proxy",
        Settings(max_upload_bytes=2 << 30),
        listen=f"127.0.0.1:{port}",
        upstream=f"127.0.0.1:{upstream}",
    )
    process = subprocess.Popen(
        local_proxy_command(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok, 30, "nginx")
    return process


def measure_tus(megabytes: int) -> None:
    """A resumable upload through nginx against a plain copy of the same bytes."""
    with (
        tempfile.TemporaryDirectory(prefix="fitserve-bench-") as folder,
        contextlib.ExitStack() as stack,
    ):
        root = Path(folder)
        array = root / "big.npy"
        write_array(array, megabytes)
        size_mb = array.stat().st_size / 2**20
        (root / "data").mkdir()
        copy_s = copy_baseline(array, root / "data" / "copy.bin")
        port, upstream = free_port(), free_port()
        # A Redis for the ingest task the finished upload sends.
        redis_url = stack.enter_context(redis_server(root / "redis"))
        api = start_api(root / "data", upstream, redis_url)
        proxy = start_proxy(root, port, upstream)
        try:
            client = Client(f"http://127.0.0.1:{port}", upload_store=root / "urls.json")
            started = time.perf_counter()
            upload_id = client.upload_resumable(array)
            tus_s = time.perf_counter() - started
            started = time.perf_counter()
            manifest = client.send_json("POST", "/v1/datasets", {"upload": upload_id})
            # What the CPU task worker does with it (none runs here), timed in this process.
            settings = Settings(
                redis_url=redis_url, data_dir=root / "data", max_upload_bytes=2 << 30
            )
            outcome = ingest.run_ingest(DataDir(root / "data"), manifest["id"], settings)
            dataset_s = time.perf_counter() - started
            if outcome != "ready":
                raise SystemExit(f"the upload did not become a dataset: {outcome}")
        finally:
            stop_tree(proxy)
            stop_tree(api)
    print(f"file                 {size_mb:8.1f} MiB")
    print(f"baseline copy        {size_mb / copy_s:8.1f} MiB/s  ({copy_s:.2f} s, copy + fsync)")
    print(
        f"tus upload via nginx {size_mb / tus_s:8.1f} MiB/s  ({tus_s:.2f} s, 16 MiB chunks)  "
        f"ratio to baseline {copy_s / tus_s:.2f}"
    )
    print(f"finished upload to dataset: {dataset_s:.2f} s (the 202, then the ingest task's work)")


def hostile_uploads() -> dict[str, bytes]:
    """About 600 KB each, and a well-formed CSV of that size first, the baseline."""
    npy = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**62, 0)}
    np.lib.format.write_array_header_1_0(npy, header)
    labels = io.BytesIO()
    np.savez_compressed(labels, y=np.sort(np.arange(60_000) % 10))
    letters = [chr(97 + i % 26) + chr(97 + i // 26 % 26) for i in range(200_000)]
    return {
        "well-formed CSV": b"a,b,c,label\n" + b"0.25,1.5,-3,1\n" * 43_000,
        "200,000 header names": (",".join(letters) + ",label\n1\n").encode(),
        "300,000 ragged rows": b"a,label\n" + b"1\n" * 300_000,
        "60,000 rows of bad cells": b"a,b,c,d,label\n" + b"x,x,x,x,1\n" * 60_000,
        ".npy of shape (2**62, 0)": npy.getvalue(),
        "60,000 sorted labels (.npz)": labels.getvalue(),
    }


def read_hostile(
    content: bytes, folder: Path, cpu_limit: int, answers: multiprocessing.Queue
) -> None:
    """In a child: store `content`, put (CPU seconds, answer) on `answers`."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, cpu_limit + 5))
    data = DataDir(folder / "data")
    data.ensure()
    source = folder / "upload.bin"
    source.write_bytes(content)
    started = time.process_time()
    try:
        datasets.store_upload(
            data, new_id(), source, settings=Settings(), owner=None, filename="hostile"
        )
        answer = "stored"
    except FitserveError as error:
        answer = f"refused ({type(error).__name__}): {error.detail[:60]}"
    except Exception as error:  # what the API would answer with a 500
        answer = f"UNEXPECTED {type(error).__name__}: {str(error)[:60]}"
    answers.put((time.process_time() - started, answer))


def measure_hostile(cpu_limit: int) -> None:
    context = multiprocessing.get_context("fork")
    baseline = None
    for label, content in hostile_uploads().items():
        answers = context.Queue()
        with tempfile.TemporaryDirectory(prefix="fitserve-hostile-") as folder:
            child = context.Process(
                target=read_hostile, args=(content, Path(folder), cpu_limit, answers)
            )
            child.start()
            child.join()
        if answers.empty():
            seconds, answer = float(cpu_limit), f"stopped past {cpu_limit} s of CPU"
        else:
            seconds, answer = answers.get()
        baseline = baseline or seconds
        print(
            f"{label:<28} {len(content) / 1000:6.0f} KB  {seconds:8.2f} s CPU  "
            f"ratio to well-formed {seconds / baseline:8.1f}  {answer}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--hostile", action="store_true", help="CPU time of hostile uploads")
    parser.add_argument("--tus", action="store_true", help="a resumable upload through nginx")
    parser.add_argument("--cpu-limit", type=int, default=900, help="per hostile upload, seconds")
    args = parser.parse_args()
    if args.hostile:
        measure_hostile(args.cpu_limit)
        return 0
    if args.tus:
        measure_tus(args.megabytes)
        return 0
    with tempfile.TemporaryDirectory(prefix="fitserve-bench-") as folder:
        root = Path(folder)
        array, body = root / "big.npy", root / "body.bin"
        write_array(array, args.megabytes)
        content_type = write_multipart(array, body)
        size_mb = body.stat().st_size / 2**20
        (root / "data").mkdir()
        copy_s = copy_baseline(body, root / "data" / "copy.bin")
        app_s = upload_in_process(body, content_type, root / "app")
        port = free_port()
        api = start_api(root / "data", port)
        try:
            http_s, rss_growth = upload(body, content_type, port, api)
        finally:
            stop_tree(api)
    print(f"body                 {size_mb:8.1f} MiB")
    print(f"baseline copy        {size_mb / copy_s:8.1f} MiB/s  ({copy_s:.2f} s, copy + fsync)")
    for label, seconds in (("upload, app", app_s), ("upload, gunicorn", http_s)):
        print(
            f"{label:<20} {size_mb / seconds:8.1f} MiB/s  ({seconds:.2f} s)  "
            f"ratio to baseline {copy_s / seconds:.2f}"
        )
    print(f"gunicorn workers' peak RSS growth during the upload: {rss_growth / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
