"""The dataset ingest task: a thin shell over `core.ingest.run_ingest`, on queue `datasets`."""

from __future__ import annotations

import logging

from core.ingest import run_ingest
from core.queues import INGEST_TASK
from core.storage import DataDir
from worker.cpu import app, settings

log = logging.getLogger("fitserve.worker")


@app.task(name=INGEST_TASK, acks_late=True)
def ingest(dataset_id: str) -> str:
    """Turn the `processing` dataset into arrays: `ready` or `failed` (a duplicate delivery
    finds it no longer processing and acks without work)."""
    log.info("ingest_started dataset=%s", dataset_id)
    outcome = run_ingest(DataDir(settings.data_dir), dataset_id, settings)
    log.info("ingest_done dataset=%s outcome=%s", dataset_id, outcome)
    return outcome
