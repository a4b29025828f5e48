"""The Celery app of the CPU task worker: `celery --app worker.cpu worker --queues
datasets,sweeps ...` (compose service `tasks`). No TensorFlow at import and no training
heartbeat: it runs the work around jobs that needs no accelerator, such as sweep drivers.
"""

from __future__ import annotations

import logging

from celery import Celery

from core.queues import celery_config
from core.settings import Settings

log = logging.getLogger("fitserve.tasks")

settings = Settings.from_env()
app = Celery("fitserve", include=["worker.sweeps"])
app.conf.update(celery_config(settings))
