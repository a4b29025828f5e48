"""Every Redis key fitserve writes: nothing else spells the prefix.

Jobs (written by `core.jobs.JobStore`, the only reader and writer of these):
- `job:<id>` a hash, every field JSON-encoded; `jobs` (all, by creation time), `jobs:status:<s>`
  and `jobs:owner:<name>` sorted-set indexes;
- `job:<id>:history` one JSON entry per completed epoch, `job:<id>:events` a stream;
- `job:<id>:stop` a stop request ("cancel"), `job:<id>:lease` the worker training it (with a TTL);
- `dataset:<id>:jobs` the live (not finished) jobs using a dataset;
- `jobs:tag:<sha256 of key and value>` the jobs carrying one tag (a sorted set like the others),
  `jobs:durations` the running seconds of the last succeeded jobs (queue position estimates);
- `records` set once the records were (re)built, `records:grace` one lease after a rebuild,
  `epochs` the epochs completed by every worker, ever.

Batch predictions (written by `core.batch.BatchStore`): `batch:<id>` a hash like a job's,
`batches` and `batches:status:<s>`, `batches:owner:<name>` sorted-set indexes, `batch:<id>:stop`
and `batch:<id>:lease`; a live one is in `dataset:<id>:jobs` too, so its dataset is kept.

Workers: `worker:<name>` a heartbeat, `consumer:<name>` a consumer beat, `shutdown:<name>` a
SIGTERM flag, and the reconciler's locks. The API: `session:<sha256>`, `ratelimit:<who>:<window>`,
`authfail:<address>`, `idempotency:<kind>:<owner>:<sha256 of the key>` what a request with that
`Idempotency-Key` made (core.idempotency).

Sweeps (written by `core.sweeps.SweepStore`): `sweep:<id>` the sweep's record (one JSON value),
`sweeps` and `sweeps:owner:<name>` sorted-set indexes, `sweeps:live` the sweeps not finished,
`sweep:<id>:driver` the task id of the one driver step allowed to run next (with a TTL),
`sweep:<id>:cancel` a cancel request; `study:<id>` is the prefix of the Optuna journal that
holds the sweep's study. Celery's own queues are named by Celery
(core.queues).
"""

from __future__ import annotations

import hashlib

PREFIX = "fitserve:"

ALL_JOBS = PREFIX + "jobs"
RECORDS_MARKER = PREFIX + "records"
REBUILT_GRACE = PREFIX + "records:grace"
# Epochs completed by every worker, ever: Prometheus derives epochs per second from it.
EPOCHS_DONE = PREFIX + "epochs"
RECONCILER_LOCK = PREFIX + "reconciler:lock"
ORPHAN_LOCK = PREFIX + "reconciler:orphans"
ALL_SWEEPS = PREFIX + "sweeps"
LIVE_SWEEPS = PREFIX + "sweeps:live"
EXPIRY_LOCK = PREFIX + "reconciler:expiry"


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def history_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:history"


def events_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:events"


def stop_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:stop"


def lease_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:lease"


def status_index(status: str) -> str:
    return f"{PREFIX}jobs:status:{status}"


def owner_index(owner: str) -> str:
    return f"{PREFIX}jobs:owner:{owner}"


# The running seconds of recently succeeded jobs, newest first: the queue's expected waits.
RECENT_DURATIONS = PREFIX + "jobs:durations"


def tag_index(key: str, value: str) -> str:
    """The jobs carrying the tag `key: value`, by creation time (the tag hashed: it is user
    text)."""
    digest = hashlib.sha256(f"{key}\x00{value}".encode()).hexdigest()
    return f"{PREFIX}jobs:tag:{digest}"


def dataset_jobs_key(dataset_id: str) -> str:
    """The set of live job and batch prediction ids using a dataset (a dataset in this set
    cannot be deleted)."""
    return f"{PREFIX}dataset:{dataset_id}:jobs"


def idempotency_key(kind: str, owner: str | None, key: str) -> str:
    """What a request with this `Idempotency-Key` made, for `jobs` or `datasets` (the key
    hashed: it is client text)."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{PREFIX}idempotency:{kind}:{owner or '-'}:{digest}"


def worker_key(name: str) -> str:
    """A worker's heartbeat: one JSON value, expiring with the worker, listing its queues."""
    return f"{PREFIX}worker:{name}"


WORKER_KEYS = worker_key("*")


def consumer_key(name: str) -> str:
    """A worker's consumer beat: its main process's `time.monotonic()`, renewed by its event
    loop and read by its pool child (outside WORKER_KEYS: it is no worker record)."""
    return f"{PREFIX}consumer:{name}"


def shutdown_key(worker_name: str) -> str:
    """Set by a worker's parent process on SIGTERM: its running job saves and is requeued."""
    return f"{PREFIX}shutdown:{worker_name}"


def session_record_key(token: str) -> str:
    """A dashboard session, under its token's sha256: a look at Redis (or its AOF file) does
    not hand out live cookies."""
    return f"{PREFIX}session:" + hashlib.sha256(token.encode()).hexdigest()


def rate_limit_key(identity: str, window: int) -> str:
    """The request count of one client in one fixed window."""
    return f"{PREFIX}ratelimit:{identity}:{window}"


def auth_failures_key(address: str) -> str:
    """The wrong API keys one client address sent in the last minute."""
    return f"{PREFIX}authfail:{address}"


def sweep_key(sweep_id: str) -> str:
    """A sweep's record: its settings, status and trials table, as one JSON value."""
    return f"{PREFIX}sweep:{sweep_id}"


def sweep_owner_index(owner: str) -> str:
    return f"{PREFIX}sweeps:owner:{owner}"


def sweep_driver_key(sweep_id: str) -> str:
    """The task id of the one driver step of a sweep allowed to run next; it expires when the
    driver's chain is lost, and the reconciler starts another."""
    return f"{PREFIX}sweep:{sweep_id}:driver"


def sweep_cancel_key(sweep_id: str) -> str:
    return f"{PREFIX}sweep:{sweep_id}:cancel"


def study_prefix(sweep_id: str) -> str:
    """The prefix of the Redis keys of the Optuna journal holding a sweep's study (one journal
    per sweep, so replaying it reads that sweep's trials only)."""
    return f"{PREFIX}study:{sweep_id}"


ALL_BATCHES = PREFIX + "batches"


def batch_key(batch_id: str) -> str:
    """A batch prediction's record: a hash, every field JSON-encoded."""
    return f"{PREFIX}batch:{batch_id}"


def batch_stop_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:stop"


def batch_lease_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:lease"


def batch_status_index(status: str) -> str:
    return f"{PREFIX}batches:status:{status}"


def batch_owner_index(owner: str) -> str:
    return f"{PREFIX}batches:owner:{owner}"
