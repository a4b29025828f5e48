"""Queue positions in the order workers take jobs, and the expected start played forward."""

from __future__ import annotations

from typing import Any

from core.jobs import parse_time
from core.queue_position import queue_places

NOW = parse_time("2026-01-01T12:00:00Z")


def job(job_id: str, minute: int, *, priority: int = 5, gpus: int = 1, **fields: Any) -> Any:
    return {
        "id": job_id,
        "created_at": f"2026-01-01T11:{minute:02d}:00Z",
        "priority": priority,
        "gpus": gpus,
        **fields,
    }


def test_priority_first_then_submit_time_per_queue() -> None:
    queued = [
        job("old", 1),
        job("urgent", 5, priority=9),
        job("new", 3),
        job("big", 0, gpus=2),
        job("low", 0, priority=0),
    ]
    places = queue_places(queued, [], {"train": 1, "train.gpu2": 1}, [], NOW)
    order = sorted((p["position"], i) for i, p in places.items() if i != "big")
    assert [i for _, i in order] == ["urgent", "old", "new", "low"]
    assert places["big"]["position"] == 1
    assert places["low"]["ahead"] == 3


def test_expected_start_plays_the_queue_forward_on_each_worker() -> None:
    running = [job("busy", 0, started_at="2026-01-01T11:59:00Z", progress={"eta_seconds": 30})]
    queued = [job("a", 1), job("b", 2), job("c", 3)]
    places = queue_places(queued, running, {"train": 2}, [100.0, 60.0, 80.0], NOW)
    # One worker is idle now, the other frees in 30 s; each job runs the median 80 s.
    assert places["a"]["expected_start"] == "2026-01-01T12:00:00Z"
    assert places["b"]["expected_start"] == "2026-01-01T12:00:30Z"
    assert places["c"]["expected_start"] == "2026-01-01T12:01:20Z"


def test_a_running_job_without_an_eta_frees_after_a_typical_run() -> None:
    running = [job("busy", 0, started_at="2026-01-01T11:59:30Z")]
    places = queue_places([job("a", 1)], running, {"train": 1}, [60.0], NOW)
    assert places["a"]["expected_start"] == "2026-01-01T12:00:30Z"


def test_unknown_without_workers_or_without_any_finished_job_to_time_by() -> None:
    queued = [job("a", 1), job("b", 2)]
    assert queue_places(queued, [], {}, [60.0], NOW)["a"]["expected_start"] is None
    places = queue_places(queued, [], {"train": 1}, [], NOW)
    # The first starts now on the idle worker; how long it runs is unknown.
    assert places["a"]["expected_start"] == "2026-01-01T12:00:00Z"
    assert places["b"]["expected_start"] is None
