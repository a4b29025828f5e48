"""The Celery app of the training workers: `celery --app worker.app worker ...`."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_process_init

from core.queues import celery_config
from core.settings import Settings

log = logging.getLogger("fitserve.worker")

settings = Settings.from_env()
app = Celery("fitserve")
app.conf.update(celery_config(settings))


@worker_process_init.connect
def import_tensorflow(**_: object) -> None:
    """The pool child imports TensorFlow once, before its first task; the parent never does."""
    import tensorflow as tf

    from core.devices import configure_devices

    configure_devices(settings)

    log.info("tensorflow %s imported devices=%s", tf.__version__, tf.config.list_logical_devices())
