"""Files through the client: streamed from disk, resumable (tus) above the threshold, resumed
after an interruption; the CLI's progress bar and its memory, against the API over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from client import Client, FitserveError
from client.progress import TransferDisplay, render_transfer
from core.ingest import run_ingest
from core.settings import Settings
from core.storage import DataDir, read_json
from tests.client.conftest import serve


class Interrupted(Exception):
    """Stands for a client killed partway through an upload."""


@pytest.fixture(autouse=True)
def ingesting(settings: Settings) -> Iterator[None]:
    """What the CPU task worker does, in a thread: every dataset recorded `processing` (a
    finished resumable upload) is ingested, so the client's wait for it ends."""
    data = DataDir(settings.data_dir)
    stop = threading.Event()

    def ingest_processing() -> None:
        while not stop.wait(0.05):
            for folder in data.datasets.iterdir() if data.datasets.is_dir() else ():
                manifest = folder / "manifest.json"
                if manifest.exists() and read_json(manifest).get("status") == "processing":
                    run_ingest(data, folder.name, settings)

    thread = threading.Thread(target=ingest_processing, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)


@pytest.fixture
def api(server_url, tmp_path) -> Client:
    # Every file above 1 KiB is resumable here, in chunks of 1 KiB.
    return Client(
        server_url, resumable_threshold=1024, chunk_bytes=1024, upload_store=tmp_path / "urls.json"
    )


def npz_file(path, rows: int = 200):
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    np.savez(path, x=x, y=np.arange(rows, dtype=np.int64) % 2)
    return path


def test_a_large_file_goes_up_resumable_in_chunks(api, tmp_path):
    path = npz_file(tmp_path / "data.npz")
    seen = []
    manifest = api.upload_file(path, progress=lambda done, total: seen.append((done, total)))
    size = path.stat().st_size
    assert manifest["rows"] == 200
    assert manifest["source"]["filename"] == "data.npz"
    assert manifest["source"]["bytes"] == size
    assert seen[0] == (0, size)
    assert seen[-1] == (size, size)
    assert len(seen) == -(-size // 1024) + 1


def test_an_interrupted_upload_resumes_from_the_servers_offset(api, tmp_path):
    path = npz_file(tmp_path / "data.npz")
    size = path.stat().st_size

    def stop_after_three_chunks(done: int, total: int) -> None:
        if done >= 3 * 1024:
            raise Interrupted

    with pytest.raises(Interrupted):
        api.upload_file(path, progress=stop_after_three_chunks)
    seen = []
    manifest = api.upload_file(path, progress=lambda done, total: seen.append(done))
    assert seen[0] == 3 * 1024
    assert seen[-1] == size
    assert manifest["rows"] == 200


def test_a_changed_file_starts_over(api, tmp_path):
    path = npz_file(tmp_path / "data.npz")
    with pytest.raises(Interrupted):
        api.upload_file(path, progress=lambda done, total: _raise_past(done, 2048))
    npz_file(path, rows=300)
    seen = []
    assert api.upload_file(path, progress=lambda d, t: seen.append(d))["rows"] == 300
    assert seen[0] == 0


def _raise_past(done: int, limit: int) -> None:
    if done >= limit:
        raise Interrupted


def test_checksummed_chunks_upload(api, tmp_path):
    path = npz_file(tmp_path / "data.npz")
    upload_id = api.upload_resumable(path, checksum=True)
    manifest = api.send_json("POST", "/v1/datasets", {"upload": upload_id})
    assert manifest["status"] == "processing"
    assert api.wait_dataset(manifest["id"], timeout=60)["rows"] == 200


def test_a_refused_resumable_upload_raises_the_servers_problem(settings: Settings, tmp_path):
    path = npz_file(tmp_path / "data.npz")
    with serve(settings.with_overrides(max_dataset_bytes=1000)) as url:
        client = Client(url, resumable_threshold=0, upload_store=tmp_path / "urls.json")
        with pytest.raises(FitserveError) as caught:
            client.upload_file(path)
    assert caught.value.status == 413
    assert "FITSERVE_MAX_DATASET_BYTES" in caught.value.detail


def test_a_plain_upload_over_the_cap_says_how_to_send_it(settings: Settings, tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, np.zeros((1 << 20) // 4 + 1000, np.float32))
    with serve(settings.with_overrides(max_upload_bytes=1 << 20)) as url:
        client = Client(url, upload_store=tmp_path / "urls.json")
        with pytest.raises(FitserveError) as caught:
            client.upload_file(path)
    assert caught.value.status == 413
    assert "1 MiB in one request (FITSERVE_MAX_UPLOAD_BYTES)" in caught.value.detail
    assert "POST /v1/uploads" in caught.value.detail


def test_render_transfer_shows_bar_rate_and_eta():
    line = render_transfer(40_000_000, 100_000_000, 20_000_000, 2.0)
    assert line.startswith("uploading  [#########...............]  40%")
    assert "40.0 MB/100.0 MB" in line
    assert "10.0 MB/s" in line
    assert "ETA 6s" in line


def test_transfer_display_off_a_terminal_prints_tenths_and_a_resume(tmp_path):
    with open(tmp_path / "log.txt", "w+") as stream:
        display = TransferDisplay(stream)
        for done in (300, 350, 600, 1000):
            display(done, 1000)
        display.close()
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines[0] == "resuming at 300 B of 1.0 kB"
    assert [line.split()[2] for line in lines[1:]] == ["30%", "60%", "100%"]


def test_the_cli_shows_progress_and_resumes(server_url, tmp_path):
    path = npz_file(tmp_path / "data.npz", rows=2000)
    env = {"FITSERVE_URL": server_url, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "client", "datasets", "upload", str(path), "--resumable-above=99"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "uploading" in done.stderr
    assert "100%" in done.stderr
    assert "2000 rows" in done.stdout


def cli_peak_rss(server_url: str, path, *options: str) -> int:
    """The CLI's peak RSS in bytes, uploading `path` in a process of its own (which remembers
    its resumable uploads beside the file, not in the user's cache)."""
    probe = (
        "import resource, sys; from client.cli import main; code = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
        "sys.exit(code)"
    )
    argv = [sys.executable, "-c", probe, "datasets", "upload", str(path), "--url", server_url]
    env = {**os.environ, "XDG_CACHE_HOME": str(path.parent / "cache")}
    done = subprocess.run([*argv, *options], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stderr.strip().splitlines()[-1]) * 1024


@pytest.mark.parametrize(
    ("how", "options"),
    [("plain", ("--resumable-above", str(1 << 30))), ("resumable", ())],
)
def test_the_cli_streams_a_file_without_reading_it_whole(server_url, tmp_path, how, options):
    """96 MiB sent plain or resumable (16 MiB chunks): the CLI grows by less than half the
    file over what a tiny upload costs it (reading it whole took twice the file)."""
    small = tmp_path / "small.npy"
    np.save(small, np.zeros(16, np.float32))
    big = tmp_path / "big.npy"
    array = np.lib.format.open_memmap(big, mode="w+", dtype=np.float32, shape=(96 << 18,))
    array[::1024] = 1.0
    array.flush()
    del array
    baseline = cli_peak_rss(server_url, small)
    growth = cli_peak_rss(server_url, big, *options) - baseline
    assert growth < (96 << 20) // 2, f"{how}: {growth >> 20} MiB more for a 96 MiB file"
