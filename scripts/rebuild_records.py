"""Rebuild the job records in Redis from the job manifests on the data volume.

`python -m scripts.rebuild_records` after Redis lost its data (the workers' reconciler does the
same on its own once it notices). Records still in Redis are left alone; queued jobs are sent to
the queue again; running jobs are requeued by the reconciler once their leases are seen expired.
"""

from __future__ import annotations

import argparse

import redis
from celery import Celery

from core.jobs import JobStore
from core.queues import celery_config, send_training
from core.settings import Settings
from core.storage import DataDir


def main(argv: list[str] | None = None) -> int:
    """Rebuild from FITSERVE_DATA_DIR into FITSERVE_REDIS_URL; re-send the queued jobs."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.rebuild_records",
        description="Rebuild the job records in FITSERVE_REDIS_URL from the manifests in "
        "FITSERVE_DATA_DIR and send the queued jobs again.",
    )
    parser.parse_args(argv)
    settings = Settings.from_env()
    print(f"rebuilding {settings.redis_url} from {settings.data_dir}", flush=True)
    store = JobStore(redis.Redis.from_url(settings.redis_url), DataDir(settings.data_dir), settings)
    producer = Celery("fitserve-rebuild", set_as_current=False)
    producer.conf.update(celery_config(settings))
    queued = store.rebuild_records()
    for job in queued:
        send_training(producer, job)
    print(f"records rebuilt from {store.data.jobs}; {len(queued)} queued job(s) sent again")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
