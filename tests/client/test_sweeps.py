"""Sweeps from the client and the `fitserve sweeps` commands, against the API served for real
(no task worker: a sweep stays as submitted, with no trial started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from client import Client
from scripts.stack import ROOT
from tests.service.test_jobs import X, Y
from tests.service.test_sweeps import UNITS, sweep_request


def fitserve(*args: str) -> subprocess.CompletedProcess:
    """`fitserve ...` as `python -m client` from this checkout; FITSERVE_* settings unset."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_")}
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_client_submits_shows_lists_and_cancels_a_sweep(server_url, tmp_path) -> None:
    client = Client(server_url)
    dataset = client.upload_arrays({"x": X, "y": Y})["id"]
    body = sweep_request(dataset)
    sweep = client.sweep(body["base"], body["space"], objective=body["objective"], max_trials=2)
    assert sweep["status"] == "running"
    assert client.get_sweep(sweep["id"])["max_trials"] == 2
    assert [s["id"] for s in client.list_sweeps()] == [sweep["id"]]

    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(body))
    submitted = fitserve("sweeps", "submit", str(path), "--url", server_url)
    assert submitted.returncode == 0, submitted.stderr
    sweep_id = submitted.stdout.strip()
    shown = fitserve("sweeps", "show", sweep_id, "--url", server_url)
    assert shown.returncode == 0, shown.stderr
    assert f"sweep {sweep_id} running: 0/3 trials" in shown.stdout
    assert UNITS in shown.stdout
    cancelled = fitserve("sweeps", "cancel", sweep_id, "--url", server_url)
    assert cancelled.stdout.strip() == f"{sweep_id} cancelling"
    follow = fitserve(
        "sweeps",
        "follow",
        sweep_id,
        "--url",
        server_url,
        "--interval",
        "0.1",
        "--wait-timeout",
        "1",
    )
    assert follow.returncode == 4
    assert "still cancelling" in follow.stderr
