"""Names and settings shared by the producer (service) and the consumers (worker).

Plain data: no Celery import here, so the service can enqueue by name without importing worker/.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from core.settings import Settings

TRAIN_TASK = "fitserve.train"
# Batch predictions run on the training workers, queued like a one-device job.
BATCH_TASK = "fitserve.batch_predict"
INGEST_TASK = "fitserve.ingest"
# One step of a sweep's driver.
SWEEP_TASK = "fitserve.sweep"
# The CPU task worker's queues (worker.cpu): dataset ingest, and the sweep drivers.
DATASETS_QUEUE = "datasets"
SWEEPS_QUEUE = "sweeps"
# Kombu's Redis transport keeps a list per priority step: `<queue>` for step 0, then
# `<queue>:<step>`.
PRIORITY_STEPS = tuple(range(10))
PRIORITY_SEP = ":"


def train_queue(gpus: int) -> str:
    """`train` for one device, `train.gpu<k>` for jobs that need a worker owning k GPUs."""
    return "train" if gpus <= 1 else f"train.gpu{gpus}"


class Producer(Protocol):
    """What enqueueing needs of a Celery app: `send_task` by name."""

    def send_task(self, name: str, *args: Any, **options: Any) -> Any: ...


def send_training(producer: Producer, job: Mapping[str, Any]) -> None:
    """Enqueue a job by task name, with the job id as task id, on its GPU-count queue.

    `producer` is a Celery app (the service's producer-only app or the worker's own). Our
    priorities run 0..9 with 9 the most urgent; Celery's Redis transport serves 0 first.
    """
    producer.send_task(
        TRAIN_TASK,
        args=[job["id"]],
        task_id=job["id"],
        queue=train_queue(job.get("gpus") or 1),
        priority=9 - int(job.get("priority", 5)),
    )


def send_sweep_step(
    producer: Producer, sweep_id: str, task_id: str, *, countdown: float = 0.0
) -> None:
    """Enqueue one step of a sweep's driver; `task_id` is the step `core.sweeps.claim_driver`
    lets act (any other is a stale duplicate and does nothing)."""
    producer.send_task(
        SWEEP_TASK, args=[sweep_id], task_id=task_id, queue=SWEEPS_QUEUE, countdown=countdown
    )


def send_batch(producer: Producer, batch: Mapping[str, Any]) -> None:
    """Enqueue a batch prediction by task name, its id as task id, on the one-device queue."""
    producer.send_task(BATCH_TASK, args=[batch["id"]], task_id=batch["id"], queue=train_queue(1))


def send_ingest(producer: Producer, dataset_id: str) -> None:
    """Enqueue a `processing` dataset's ingest on the CPU task worker's queue; the dataset id
    is the task id (a duplicate delivery finds the dataset no longer processing)."""
    producer.send_task(INGEST_TASK, args=[dataset_id], task_id=dataset_id, queue=DATASETS_QUEUE)


def broker_lists(queue: str) -> list[str]:
    """The Redis lists Celery's transport keeps for a queue: one per priority step."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings of DESIGN.md, identical for whoever sends and whoever consumes."""
    return {
        "broker_url": settings.redis_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry_on_startup": True,
        # A worker whose Redis restarts reconnects for as long as it takes (Celery gives up
        # after 100 tries by default and the process exits), then consumes again.
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "task_default_queue": "train",
        "broker_transport_options": {
            # Longer than the longest allowed job: redelivery after a lost worker is the
            # reconciler's job (within seconds), not this timeout's.
            "visibility_timeout": settings.max_job_seconds + 3600,
            "priority_steps": list(PRIORITY_STEPS),
            "sep": PRIORITY_SEP,
            "queue_order_strategy": "priority",
        },
    }
