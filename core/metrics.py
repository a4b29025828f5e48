"""Prometheus metrics recorded inside the API processes, and those read from Redis at scrape time.

Counters and histograms live in prometheus-client objects; under gunicorn they are written to
`PROMETHEUS_MULTIPROC_DIR` (set by service/gunicorn.conf.py before any worker imports this), so a
scrape answered by any worker sums every worker. Job, queue, worker and epoch figures are
shared state already, so `RedisCollector` reads them from Redis when scraped instead of counting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from core.jobs import STATUSES
from core.queues import broker_lists, train_queue
from core.rediskeys import EPOCHS_DONE, status_index
from core.workers import live_workers

log = logging.getLogger("fitserve.metrics")

REQUESTS = Counter(
    "fitserve_http_requests", "HTTP requests answered, by route rule and status.",
    ["method", "route", "status"],
)  # fmt: skip
LATENCY = Histogram(
    "fitserve_http_request_duration_seconds",
    "Time to answer (to the first byte of a streamed body), by route rule.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PREDICT_ROWS = Histogram(
    "fitserve_predict_batch_rows",
    "Rows per forward pass of a served model (gathered requests count once).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 10000),
)
MODELS_LOADED = Gauge(
    "fitserve_models_loaded",
    "Model versions held in the API processes' caches.",
    multiprocess_mode="livesum",
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def observe_predict_rows(rows: int) -> None:
    PREDICT_ROWS.observe(rows)


class RedisCollector(Collector):
    """Jobs by status, broker queue depth, live workers and epochs trained, read when scraped."""

    def __init__(self, client: redis.Redis, max_gpus: int) -> None:
        """`max_gpus`: the queues listed are those of jobs of 1 to `max_gpus` devices."""
        self.client = client
        self.queues = sorted({train_queue(gpus) for gpus in range(1, max_gpus + 1)})

    def collect(self) -> Iterator:
        """Redis's figures, or none while Redis is away: the processes' own still answer."""
        try:
            families = list(self._read())
        except redis.RedisError as error:
            log.warning("metrics_redis_unavailable error=%r", str(error))
            families = []
        yield GaugeMetricFamily(
            "fitserve_redis_up", "Whether Redis answered this scrape.", 1 if families else 0
        )
        yield from families

    def _read(self) -> Iterator:
        pipe = self.client.pipeline(transaction=False)
        for status in STATUSES:
            pipe.zcard(status_index(status))
        for queue in self.queues:
            for name in broker_lists(queue):
                pipe.llen(name)
        pipe.get(EPOCHS_DONE)
        found = pipe.execute()
        jobs = GaugeMetricFamily("fitserve_jobs", "Jobs by status.", labels=["status"])
        for status, count in zip(STATUSES, found, strict=False):
            jobs.add_metric([status], count)
        yield jobs
        depth = GaugeMetricFamily(
            "fitserve_queue_depth", "Messages waiting in a training queue.", labels=["queue"]
        )
        lengths = iter(found[len(STATUSES) : -1])
        for queue in self.queues:
            depth.add_metric([queue], sum(next(lengths) for _ in broker_lists(queue)))
        yield depth
        workers = live_workers(self.client)
        yield GaugeMetricFamily(
            "fitserve_workers", "Workers whose heartbeat is live.", len(workers)
        )
        consuming = GaugeMetricFamily(
            "fitserve_queue_workers", "Live workers consuming a queue.", labels=["queue"]
        )
        for queue in self.queues:
            consuming.add_metric([queue], sum(queue in w.get("queues", ()) for w in workers))
        yield consuming
        yield CounterMetricFamily(
            "fitserve_epochs",
            "Epochs completed by every worker; rate() gives epochs per second.",
            int(found[-1] or 0),
        )
