"""The worker registry as the API and the metrics read it: the live workers' heartbeats.

Each worker's heartbeat (worker/heartbeat.py) is one JSON value under `rediskeys.worker_key`,
expiring with the worker: `{"name", "host", "queues", "devices", "job", ...}`.
"""

from __future__ import annotations

import orjson
import redis

from core.queues import train_queue
from core.rediskeys import WORKER_KEYS


def live_workers(client: redis.Redis) -> list[dict]:
    """The heartbeats of the live workers (name, host, queues, devices, job), by name."""
    found = []
    for key in client.scan_iter(WORKER_KEYS, count=100):
        raw = client.get(key)
        if raw is not None:
            found.append(orjson.loads(raw))
    return sorted(found, key=lambda heartbeat: str(heartbeat.get("name", "")))


def queue_workers(client: redis.Redis, queue: str) -> list[dict]:
    """The live workers consuming `queue`: none means a job there waits."""
    return [worker for worker in live_workers(client) if queue in worker.get("queues", ())]


def waiting_message(client: redis.Redis, gpus: int) -> str | None:
    """What a queued job of `gpus` devices waits for, when no live worker can take it; else None.

    For the job's status: a 2-GPU job with no 2-GPU worker says so instead of just `queued`.
    """
    queue = train_queue(gpus)
    if queue_workers(client, queue):
        return None
    if gpus <= 1:
        return f"Waiting for a worker: none is running on queue '{queue}'. Start one."
    return (
        f"Waiting for a worker owning {gpus} GPUs: none is running on queue '{queue}'. Start "
        f"one that owns {gpus} GPUs with `--queues {queue}` (docker-compose.yml's worker-2gpu "
        "service shows one for 2 GPUs)."
    )
