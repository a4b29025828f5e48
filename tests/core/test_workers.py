"""The worker registry read from real heartbeat records in Redis."""

from __future__ import annotations

import orjson
import redis

from core.rediskeys import worker_key
from core.workers import queue_workers, waiting_message


def test_queue_workers_reads_the_heartbeats(clean_redis: str) -> None:
    client = redis.Redis.from_url(clean_redis)
    for name, queues in [
        ("w1", ["train"]),
        ("w2", ["train.gpu2"]),
        ("w3", ["train", "train.gpu2"]),
    ]:
        heartbeat = {"name": name, "queues": queues}
        client.set(worker_key(name), orjson.dumps(heartbeat), ex=30)
    assert [w["name"] for w in queue_workers(client, "train.gpu2")] == ["w2", "w3"]
    assert [w["name"] for w in queue_workers(client, "train")] == ["w1", "w3"]
    assert queue_workers(client, "train.gpu4") == []


def test_waiting_message_names_the_missing_worker_size(clean_redis: str) -> None:
    client = redis.Redis.from_url(clean_redis)
    assert "none is running on queue 'train'" in waiting_message(client, 1)
    client.set(worker_key("w1"), orjson.dumps({"name": "w1", "queues": ["train"]}), ex=30)
    assert waiting_message(client, 1) is None
    message = waiting_message(client, 2)
    assert message.startswith("Waiting for a worker owning 2 GPUs")
    assert "`--queues train.gpu2`" in message
