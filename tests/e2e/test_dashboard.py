"""The dashboard in headless Chromium against the real stack, with API keys on.

A second gunicorn with `FITSERVE_API_KEYS` set serves the session stack's Redis and data folder,
so the stack's worker trains what the browser submits. The browser signs in with a key, uploads
a dataset (the request editor fits itself to it and suggests from the schema), validates and
submits a job, watches its curve grow, pins it, downloads a checkpoint and predicts with the
session cookie, cancels the job (which says why it stopped), clones it with changes onto named
classes and predicts class names, filters the list by tag, compares jobs, finds, downloads,
uploads and deletes datasets on the datasets page, and reads a small sweep's page. Screenshots
go to tests/artifacts/ (docs/dashboard.png, which the README shows, is a copy of one: a test
run never rewrites a tracked file).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from core.keys import hash_key
from scripts.stack import ROOT, compose_command
from tests.support.processes import free_port, stop_tree
from tests.support.stack import Stack, blobs, tiny_request, wait_ready

pytestmark = pytest.mark.e2e

KEY = "fs_dashboard-e2e-key"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 120_000  # an epoch on a busy shared CPU; the happy path takes a few seconds
SCREENSHOT = ROOT / "tests" / "artifacts" / "dashboard.png"
PETS_CSV = "weight,height,label\n4.0,25,cat\n30.5,60,dog\n5.2,23,cat\n"
DENSE_2 = {"class_name": "Dense", "config": {"units": 2, "activation": "softmax"}}


@pytest.fixture(scope="module")
def keyed_api(stack: Stack) -> Iterator[str]:
    """A one-worker gunicorn with API keys on, over the stack's Redis and data; its URL."""
    port = free_port()
    argv = compose_command("api", bind=f"127.0.0.1:{port}")
    argv[argv.index("--workers") + 1] = "1"
    process = stack.spawn(argv, "api-keyed", {"FITSERVE_API_KEYS": f"dashboard:{hash_key(KEY)}"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, stack.logs / "api-keyed.log")
        yield url
    finally:
        stop_tree(process, timeout=30)


@pytest.fixture
def browser_page() -> Iterator:
    """A fresh page in Debian's headless Chromium, closed with its browser afterwards."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-chromium (make deps does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def more_points_than(count: int) -> str:
    """A selector for the charts once they hold more than `count` epochs."""
    return "#charts" + "".join(f':not([data-points="{n}"])' for n in range(count + 1))


def test_sign_in_submit_watch_predict_cancel(
    keyed_api: str, browser_page, tmp_path: Path, stack: Stack
) -> None:
    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(f"{keyed_api}/")
    assert page.url == f"{keyed_api}/sign-in?next=/"
    page.fill("#key", "fs_wrong")
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text("#sign-in-error")
    page.fill("#key", KEY)
    page.click("button[type=submit]")
    page.wait_for_url(f"{keyed_api}/")
    assert "Signed in as dashboard" in page.inner_text("header")
    # From here on nothing should fail to load or run (the wrong key's 401 page is behind us).
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    streams: list[int] = []
    page.on(
        "response", lambda answer: answer.url.endswith("/events") and streams.append(answer.status)
    )

    data = blobs(rows=3000)
    # Some labels shuffled, so the curves keep moving for a while (and the screenshot says so).
    noisy = np.random.default_rng(0).random(len(data["y"])) < 0.2
    data["y"][noisy] = np.random.default_rng(1).integers(0, 3, int(noisy.sum()))
    dataset_file = tmp_path / "blobs.npz"
    buffer = io.BytesIO()
    np.savez(buffer, **data)
    dataset_file.write_bytes(buffer.getvalue())
    page.set_input_files("#dataset-file", str(dataset_file))
    page.click("#upload-form button[type=submit]")
    dataset_id = page.get_attribute("#dataset-id", "data-id")
    assert len(dataset_id) == 32
    fitted = json.loads(page.input_value("#job-spec"))
    assert fitted["data"]["dataset"] == dataset_id
    assert fitted["model"]["input_shape"] == [16]
    assert fitted["model"]["layers"][-1]["config"]["units"] == 3
    assert "Used" in page.inner_text("#usage")

    # The editor suggests from the JSON schema at the cursor (the end of the text here).
    page.fill("#job-spec", '{"compile": {"optimizer": "ad')
    page.locator("#spec-suggestions").get_by_role("button", name='"adamw"', exact=True).click()
    assert page.input_value("#job-spec") == '{"compile": {"optimizer": "adamw"'
    # A Keras to_json() file becomes the request's model.
    keras_json = {"class_name": "Sequential", "config": {"name": "from-file", "layers": []}}
    model_file = tmp_path / "model.json"
    model_file.write_text(json.dumps(keras_json))
    page.fill("#job-spec", json.dumps(fitted))
    page.set_input_files("#model-file", str(model_file))
    page.wait_for_selector("#model-loaded")
    assert json.loads(page.input_value("#job-spec"))["model"] == keras_json

    # Many epochs, so the job is still running when the test cancels it.
    request = tiny_request(dataset_id, epochs=200, batch_size=16, name="dashboard-e2e")
    page.fill("#job-spec", json.dumps(request, indent=2))
    page.click("#validate-button")
    assert "can run" in page.inner_text("#validate-result")
    page.click("#submit-form button[type=submit]")
    page.wait_for_url(f"{keyed_api}/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]

    # Selectors, not JavaScript strings: the page's CSP rightly forbids eval, Playwright's too.
    page.wait_for_selector(more_points_than(1), timeout=WAIT_MS)
    seen = int(page.get_attribute("#charts", "data-points"))
    page.wait_for_selector(more_points_than(seen), timeout=WAIT_MS)
    assert page.locator("#loss-chart canvas").count() == 1
    assert "running" in page.inner_text("#job-status")
    assert streams[:1] == [200], "the session cookie opens the job's event stream"

    link = page.locator("#checkpoints a").first
    download = page.context.request.get(keyed_api + link.get_attribute("href"))
    assert download.status == 200
    assert download.body()[:2] == b"PK"  # a .keras file is a zip

    page.fill("#predict-instances", json.dumps(data["x"][:2].tolist()))
    page.click("#predict-form button[type=submit]")
    page.wait_for_selector("#predictions-table", timeout=WAIT_MS)
    assert page.locator("#predictions-table tbody tr").count() == 2
    predictions = json.loads(page.text_content("#predictions"))
    assert np.asarray(predictions).shape == (2, 3)
    assert np.allclose(np.sum(predictions, axis=1), 1.0, atol=1e-4)

    page.click("#pin-button")
    page.wait_for_selector("#unpin-button:visible")
    assert "pinned" in page.inner_text("#job-retention")

    page.click("#cancel-button")
    page.wait_for_selector("#job-status.status-cancelled", timeout=WAIT_MS)
    page.wait_for_selector("#cancel-button", state="hidden")
    page.wait_for_selector("#job-stop:has-text('cancelled at epoch')")
    job = requests.get(
        f"{keyed_api}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ).json()
    assert job["status"] == "cancelled"
    assert job["owner"] == "dashboard"
    assert job["retention"]["pinned"] is True
    page.wait_for_timeout(300)  # the last refresh redraws the charts
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000

    # Clone with changes: a merge patch over the request, here onto a CSV with named classes;
    # the clone says where it came from, and its predictions come back as class names.
    pets = requests.post(
        f"{keyed_api}/v1/datasets",
        files={"file": ("pets.csv", PETS_CSV)},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert pets.status_code == 201, pets.text
    patch = {
        "model": {"input_shape": [2], "layers": [DENSE_2]},
        "fit": {"epochs": 1, "validation_split": 0},
        "data": {"dataset": pets.json()["id"]},
        "tags": {"project": "e2e"},
    }
    page.fill("#clone-patch", json.dumps(patch))
    with page.expect_navigation():
        page.click("#clone-form button[type=submit]")
    clone_id = page.url.rsplit("/", 1)[1]
    assert clone_id != job_id
    page.wait_for_selector(f'#job-cloned-from a[href="/jobs/{job_id}"]')
    assert page.inner_text("#job-tags") == "project:e2e"
    page.wait_for_selector("#job-status.status-succeeded", timeout=WAIT_MS)
    page.fill("#predict-instances", "[[4.0, 25], [30.5, 60]]")
    page.click("#predict-form button[type=submit]")
    page.wait_for_selector("#predictions-table", timeout=WAIT_MS)
    assert page.locator("#predictions-table th").all_inner_texts()[1] == "Class"
    for cell in page.locator("#predictions-table tbody td:nth-child(2)").all_inner_texts():
        assert cell in ("cat", "dog")
    page.goto(f"{keyed_api}/?tag=project:e2e")
    page.wait_for_selector(f'tr[data-job-id="{clone_id}"]')
    assert page.locator("#jobs tbody tr").count() == 1
    assert "project:e2e" in page.inner_text(f'tr[data-job-id="{clone_id}"]')

    page.goto(f"{keyed_api}/")
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    assert "cancelled" in row.inner_text()
    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-jobs.png")), full_page=True)
    row.locator("input[type=checkbox]").check()
    page.click("#compare-button")
    page.wait_for_url(f"{keyed_api}/compare?jobs={job_id}")
    page.wait_for_selector('#compare-charts[data-series="1"]')
    assert page.input_value("#compare-metric") == "val_loss"
    assert page.locator("#compare-chart canvas").count() == 1
    assert "dashboard-e2e" in page.inner_text("#compare-jobs")

    page.click("nav >> text=Datasets")
    dataset_row = page.locator(f'tr[data-dataset-id="{dataset_id}"]')
    assert "ready" in dataset_row.inner_text()
    assert "x [3000, 16] float32" in dataset_row.inner_text()
    dataset_row.locator("button.link").click()
    assert "Distinct values" in page.inner_text("#dataset-stats")
    npz = page.locator('#dataset-details-body a:text-is("npz")').get_attribute("href")
    assert npz == f"/v1/datasets/{dataset_id}/download?format=npz"
    archive = np.load(io.BytesIO(page.context.request.get(keyed_api + npz).body()))
    assert np.array_equal(archive["y"], data["y"])
    # Upload from the datasets page: a CSV's string labels become named classes; then delete it.
    csv_file = tmp_path / "pets.csv"
    csv_file.write_text(PETS_CSV)
    page.set_input_files("#dataset-file", str(csv_file))
    page.click("#upload-form button[type=submit]")
    pets_id = page.get_attribute("#dataset-id", "data-id")
    pets_row = page.locator(f'tr[data-dataset-id="{pets_id}"]')
    assert "y: 2 (cat, dog)" in pets_row.inner_text()
    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-datasets.png")), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())
    pets_row.locator("button:text-is('Delete')").click()
    pets_row.wait_for(state="detached")
    assert page.locator(f'tr[data-dataset-id="{dataset_id}"]').count() == 1
    # A two-trial sweep (the task worker drives it): its page draws every view of the trials.
    sweep = {
        "name": "dashboard-sweep",
        "base": tiny_request(dataset_id, epochs=2, batch_size=64),
        "space": {
            "/compile/optimizer/config/learning_rate": {"float": [0.0001, 0.1], "log": True},
            "/model/layers/0/config/units": {"choice": [16, 32]},
        },
        "objective": {"metric": "val_loss", "mode": "min"},
        "sampler": "random",
        "pruner": "none",
        "max_trials": 2,
        "max_concurrent": 1,
    }
    created = requests.post(
        f"{keyed_api}/v1/sweeps", json=sweep, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    )
    assert created.status_code == 202, created.text
    sweep_id = created.json()["id"]
    page.click("nav >> text=Sweeps")
    page.click(f'tr[data-sweep-id="{sweep_id}"] a')
    page.wait_for_url(f"{keyed_api}/sweeps/{sweep_id}")
    page.wait_for_selector("#sweep-status.status-succeeded", timeout=WAIT_MS)
    page.wait_for_selector('#trial-curves[data-series="2"]')
    assert page.locator("#trials tbody tr").count() == 2
    assert page.locator(".param-scatter").count() == 2
    assert page.locator(".param-scatter .trial-point").count() == 4
    assert page.locator("#parallel-plot .trial-line").count() == 2
    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-sweep.png")), full_page=True)
    page.click("#trials tbody tr:first-child td:last-child a")
    page.wait_for_selector(f'#job-sweep a[href="/sweeps/{sweep_id}"]')
    page.click("text=Sign out")
    page.wait_for_url(f"{keyed_api}/sign-in")
    page.goto(f"{keyed_api}/jobs/{job_id}")
    assert page.url.startswith(f"{keyed_api}/sign-in")
    assert errors == [], errors
