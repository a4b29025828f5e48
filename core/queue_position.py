"""Where a queued job stands in its queue, and when it may start.

Workers take a queue by priority (9 first: core.queues sends each job on its priority's list),
then in the order jobs were sent; the position follows the same order (priority, then the
job's submit time). The expected start plays the queue forward: each worker frees up when its
running job's ETA says (else after a typical run less the time it has run), then takes the next
job ahead, which runs for a typical time: the median of the last succeeded jobs' running times.
With no worker, or jobs to wait for and no finished job to time them by, it is unknown.

Everything comes from the live records in Redis (one pipelined read of the queued and running
ones), never from manifests on the volume, so a list page costs one round trip more.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypedDict

from core.jobs import Job, parse_time
from core.queues import train_queue


class QueuePlace(TypedDict):
    """`position` counts from 1; `expected_start` RFC 3339 UTC, or None when unknown."""

    position: int
    ahead: int
    expected_start: str | None


def queue_order(job: Job) -> tuple[int, float, str]:
    """The order workers take jobs of one queue in: higher priority first, then oldest."""
    return (-int(job.get("priority", 5)), parse_time(job["created_at"]), job["id"])


def queue_places(
    queued: Iterable[Job],
    running: Iterable[Job],
    workers: dict[str, int],
    durations: list[float],
    now: float,
) -> dict[str, QueuePlace]:
    """The place of every queued job, by job id.

    Args:
        queued: the queued jobs (any queue).
        running: the running and cancelling jobs (they hold workers).
        workers: live workers per queue name.
        durations: running seconds of recently succeeded jobs.
        now: seconds since the epoch.
    """
    typical = statistics.median(durations) if durations else None
    lines: dict[str, list[Job]] = {}
    for job in queued:
        lines.setdefault(train_queue(job.get("gpus") or 1), []).append(job)
    busy: dict[str, list[Job]] = {}
    for job in running:
        busy.setdefault(train_queue(job.get("gpus") or 1), []).append(job)
    places: dict[str, QueuePlace] = {}
    for queue, line in lines.items():
        line.sort(key=queue_order)
        starts = _expected_starts(
            len(line), busy.get(queue, []), workers.get(queue, 0), typical, now
        )
        for index, job in enumerate(line):
            places[job["id"]] = QueuePlace(
                position=index + 1, ahead=index, expected_start=_rfc3339(starts[index])
            )
    return places


def _expected_starts(
    count: int, running: list[Job], workers: int, typical: float | None, now: float
) -> list[float]:
    """When each of the first `count` queued jobs should start, in queue order (inf: unknown)."""
    if workers <= 0:
        return [math.inf] * count
    free_at = [_frees_at(job, typical, now) for job in running[:workers]]
    free_at += [now] * (workers - len(free_at))
    heapq.heapify(free_at)
    starts = []
    for _ in range(count):
        start = heapq.heappop(free_at)
        starts.append(start)
        # Past an unknown time every later start is unknown too (inf + anything stays inf).
        heapq.heappush(free_at, start + (math.inf if typical is None else typical))
    return starts


def _frees_at(job: Job, typical: float | None, now: float) -> float:
    """When a running job should end: its ETA, else a typical run from its start (inf: unknown)."""
    eta = (job.get("progress") or {}).get("eta_seconds")
    if eta is not None:
        return now + float(eta)
    started = job.get("started_at")
    if typical is None or started is None:
        return math.inf
    return max(now, parse_time(started) + typical)


def _rfc3339(seconds: float) -> str | None:
    if math.isinf(seconds):
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
