"""The Celery app of the CPU task worker: `celery --app worker.cpu worker --queues datasets,sweeps`.

Work that needs no accelerator and must not wait behind training: dataset ingest (queue
`datasets`) and the sweep drivers (queue `sweeps`). Same broker and serialization settings as the
training workers (core.queues.celery_config), but TensorFlow is never imported at start, in the
parent or the pool children, so the worker starts in a second and its children stay small. A
child that runs a sweep driver's step loads Keras then, once: each trial's point is parsed and
costed by the job grammar, whose shape inference is Keras's.
"""

from __future__ import annotations

from celery import Celery

from core.queues import celery_config
from core.settings import Settings

settings = Settings.from_env()
# Each task module registers its tasks on this app; they are sent by name from service/.
app = Celery("fitserve-tasks", include=["worker.datasets", "worker.sweeps"])
app.conf.update(celery_config(settings))
