"""A sweep end to end: redis, two training workers, the CPU task worker running the driver,
gunicorn behind nginx. One 12-trial sweep of the tiny MLP on blobs (learning rate and units in
the space, 2 at a time, median pruning) survives a training worker's SIGKILL, the task worker's
SIGKILL and an API restart in the middle, and ends with every trial accounted for.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
import requests

from scripts.stack import compose_command
from tests.support.http import expect_status
from tests.support.processes import stop_tree, wait_for
from tests.support.stack import Stack, blobs, running_stack, tiny_request, wait_ready

LR = "/compile/optimizer/config/learning_rate"
UNITS = "/model/layers/0/config/units"
SWEEP_SECONDS = 420
LIVE = ("queued", "running", "cancelling")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("sweeps"), "main", tasks=True) as running:
        running.start_worker("second")
        yield running


@pytest.fixture(scope="module")
def dataset(stack: Stack) -> str:
    return stack.upload(**blobs(rows=600, seed=3))


def sweep_request(dataset: str, **changes: object) -> dict:
    body = {
        "name": "tiny-lr-units",
        "base": tiny_request(dataset, epochs=3, batch_size=32),
        "space": {LR: {"float": [0.0001, 0.3], "log": True}, UNITS: {"int": [8, 64], "step": 8}},
        "objective": {"metric": "val_loss", "mode": "min"},
        "sampler": "tpe",
        "pruner": "median",
        "max_trials": 12,
        "max_concurrent": 2,
        "seed": 1,
    }
    body.update(changes)
    return body


def get_sweep(stack: Stack, sweep_id: str) -> dict:
    return expect_status(requests.get(stack.url(f"/v1/sweeps/{sweep_id}"), timeout=30), 200).json()


def restart_api(stack: Stack) -> None:
    """Stop gunicorn and start it again on the same port behind the same proxy."""
    api = stack.others[0]
    stop_tree(api, timeout=30)
    argv = compose_command("api", bind=stack.upstream.removeprefix("http://"))
    stack.others[0] = stack.spawn(argv, "api")
    wait_ready(stack.api, stack.logs / "api.log")


def restart_tasks(stack: Stack) -> None:
    """SIGKILL the CPU task worker (the driver's step in flight goes with it), start another."""
    tasks = stack.others.pop()  # running_stack starts it last
    tasks.send_signal(signal.SIGKILL)
    stop_tree(tasks, timeout=5)
    stack.start_tasks("tasks2")


def test_a_bad_sweep_is_refused_at_its_pointer(stack: Stack, dataset: str) -> None:
    body = sweep_request(dataset, space={"/model/layers/7/config/units": {"int": [8, 64]}})
    response = requests.post(stack.url("/v1/sweeps"), json=body, timeout=60)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert [e["path"] for e in response.json()["errors"]] == [
        "/space/~1model~1layers~17~1config~1units"
    ]


def test_a_sweep_prunes_survives_kills_and_restarts_and_serves_its_best(
    stack: Stack, dataset: str
) -> None:
    response = requests.post(stack.url("/v1/sweeps"), json=sweep_request(dataset), timeout=120)
    assert response.status_code == 202, response.text
    sweep_id = response.json()["id"]
    assert response.headers["Location"] == f"/v1/sweeps/{sweep_id}"
    delete = requests.delete(stack.url(f"/v1/sweeps/{sweep_id}"), timeout=30)
    assert delete.status_code == 409

    most_live = 0
    faults = ["worker", "tasks", "api"]

    def progressed() -> bool:
        nonlocal most_live
        sweep = get_sweep(stack, sweep_id)
        most_live = max(most_live, sum(t["state"] in LIVE for t in sweep["trials"]))
        running = [t["job"] for t in sweep["trials"] if t["state"] == "running"]
        if faults and running and len(sweep["trials"]) >= 2 + 2 * (3 - len(faults)):
            inject(faults.pop(0), running[0])
        return sweep["status"] not in ("running", "cancelling")

    killed: list[str] = []

    def inject(fault: str, job_id: str) -> None:
        if fault == "worker":
            name = stack.worker_running(job_id)
            stack.kill_child(name)
            killed.append(job_id)
        elif fault == "tasks":
            restart_tasks(stack)
        else:
            restart_api(stack)

    started = time.monotonic()
    try:
        wait_for(progressed, SWEEP_SECONDS, f"sweep {sweep_id} to end", interval=0.5)
    except TimeoutError as error:
        names = [
            n for n in ("tasks", "tasks2", "worker-main") if (stack.logs / f"{n}.log").exists()
        ]
        logs = "\n".join(stack.log_tail(name, 60) for name in names)
        raise AssertionError(f"{error}: {get_sweep(stack, sweep_id)}\n{logs}") from error
    print(f"sweep took {time.monotonic() - started:.0f} s")

    sweep = get_sweep(stack, sweep_id)
    trials = sweep["trials"]
    assert sweep["status"] == "succeeded", sweep
    assert not faults, f"faults not injected: {faults}"
    # Every trial is there once, with its own job, and ran to an end.
    assert [t["number"] for t in trials] == list(range(12))
    assert len({t["job"] for t in trials}) == 12
    assert most_live <= 2
    jobs = {t["job"]: stack.job(t["job"]) for t in trials}
    assert {job["status"] for job in jobs.values()} <= {"succeeded", "cancelled"}
    assert all(job["sweep"] == sweep_id for job in jobs.values())
    # Trial 0 is the base request itself.
    assert trials[0]["params"] == {LR: 0.001, UNITS: 32}
    # The killed trial resumed on a second attempt, never two at once.
    assert killed
    assert jobs[killed[0]]["attempt"] == 2
    _assert_one_attempt_at_a_time(stack, killed[0])
    # At least one trial was pruned at an epoch boundary, its checkpoint kept.
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned, trials
    for trial in pruned:
        job = jobs[trial["job"]]
        assert job["status"] == "cancelled"
        assert job["progress"]["epoch"] < 3
        assert job["checkpoints"]
        assert not job["checkpoints"][-1].get("partial")
    # The best trial is at least as good as the base request's own job (trial 0).
    assert sweep["best_objective"] <= trials[0]["objective"]
    best = next(t for t in trials if t["job"] == sweep["best_job"])
    assert best["state"] == "succeeded"

    # The sweep's id names its best trial's model.
    model = requests.get(stack.url(f"/v1/models/{sweep_id}"), timeout=30)
    assert model.status_code == 200, model.text
    predict = requests.post(
        stack.url(f"/v1/models/{sweep_id}:predict"),
        json={"instances": [[0.0] * 16]},
        timeout=120,
    )
    assert predict.status_code == 200, predict.text
    listed = expect_status(requests.get(stack.url("/v1/sweeps?limit=1"), timeout=30), 200).json()
    assert listed["items"][0]["id"] == sweep_id
    assert requests.delete(stack.url(f"/v1/sweeps/{sweep_id}"), timeout=30).status_code == 204
    assert requests.get(stack.url(f"/v1/sweeps/{sweep_id}"), timeout=30).status_code == 404
    # Its trials stay ordinary jobs.
    assert stack.job(sweep["best_job"])["status"] == "succeeded"


def _assert_one_attempt_at_a_time(stack: Stack, job_id: str) -> None:
    """Each attempt of the job started after the one before it was requeued."""
    kinds = [
        event["kind"]
        for event in stack.events(job_id)
        if event["kind"] in ("attempt_started", "requeued")
    ]
    assert kinds == ["attempt_started", "requeued", "attempt_started"], kinds


def test_cancel_stops_a_sweep_and_its_live_trials(stack: Stack, dataset: str) -> None:
    body = sweep_request(dataset, max_trials=4, pruner="none")
    body["base"]["fit"]["epochs"] = 200
    sweep_id = expect_status(
        requests.post(stack.url("/v1/sweeps"), json=body, timeout=120), 202
    ).json()["id"]
    wait_for(lambda: get_sweep(stack, sweep_id)["trials"], 120, "the first trials", interval=0.2)
    cancel = requests.post(stack.url(f"/v1/sweeps/{sweep_id}:cancel"), timeout=30)
    assert cancel.status_code == 202, cancel.text
    wait_for(
        lambda: get_sweep(stack, sweep_id)["status"] == "cancelled",
        120,
        "the sweep to end cancelled",
        interval=0.2,
    )
    sweep = get_sweep(stack, sweep_id)
    assert len(sweep["trials"]) <= 2
    assert {stack.job(t["job"])["status"] for t in sweep["trials"]} == {"cancelled"}
    again = requests.post(stack.url(f"/v1/sweeps/{sweep_id}:cancel"), timeout=30)
    assert again.status_code == 409
