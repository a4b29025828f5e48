"""The job store: live records in Redis, mirrored into each job's manifest on the data volume.

Redis keys (prefix `fitserve:`):
- `job:<id>` a hash, every field JSON-encoded; `jobs` (all, by creation time), `jobs:status:<s>`
  and `jobs:owner:<name>` sorted-set indexes;
- `job:<id>:history` one JSON entry per completed epoch, `job:<id>:events` a stream;
- `job:<id>:stop` a stop request ("cancel"), `job:<id>:lease` the worker training it (with a TTL);
- `dataset:<id>:jobs` the live (not finished) jobs using a dataset.

Every status change is checked against TRANSITIONS inside a WATCH/MULTI transaction, then the
job's `manifest.json` is rewritten from the record under a file lock, so the last writer always
writes the newest state and the records can be rebuilt from the volume.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from core.cursors import decode_cursor, encode_cursor
from core.errors import Conflict, NotFound
from core.queues import TRAIN_TASK, train_queue
from core.settings import Settings
from core.storage import DataDir, check_id, new_id, read_json, utc_now, write_json

PREFIX = "fitserve:"
ALL = PREFIX + "jobs"
RECORDS_MARKER = PREFIX + "records"
REBUILT_GRACE = PREFIX + "records:grace"
# Epochs completed by every worker, ever: Prometheus derives epochs per second from it.
EPOCHS_DONE = PREFIX + "epochs"

LIVE = ("queued", "running", "cancelling")
TERMINAL = ("succeeded", "failed", "cancelled")
STATUSES = LIVE + TERMINAL
TRANSITIONS: dict[str, tuple[str, ...]] = {
    # running -> running: a redelivered job picked up again by the worker now holding its lease.
    "queued": ("running", "cancelled", "failed"),
    "running": ("running", "succeeded", "failed", "cancelled", "cancelling", "queued"),
    "cancelling": ("cancelled", "succeeded", "failed"),
    "succeeded": (),
    "failed": (),
    "cancelled": (),
}

MANIFEST_FIELDS = (
    "id",
    "name",
    "owner",
    "status",
    "reason",
    "message",
    "attempt",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "device",
    "worker",
    "epoch",
    "checkpoints",
    "best",
    "final",
    "test_metrics",
    "request_id",
    "priority",
    "gpus",
    "datasets",
    "history",
    "record",
)
EVENTS_MAX = 10_000


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


def dataset_jobs_key(dataset_id: str) -> str:
    """The set of live job ids using a dataset (a dataset in this set cannot be deleted)."""
    return f"{PREFIX}dataset:{dataset_id}:jobs"


def datasets_of(spec: dict) -> list[str]:
    """Every dataset id a normalized spec reads (training, validation, test)."""
    data = spec.get("data") or {}
    found = [data.get("dataset")]
    found += [(data.get(part) or {}).get("dataset") for part in ("validation", "test")]
    return sorted({dataset for dataset in found if dataset})


def provenance(spec: dict, data: DataDir) -> dict:
    """What a model was made from: the canonical spec's sha256, the seed, each dataset's sha256.

    Taken at submit time, while the datasets the spec was checked against are certainly there.
    """
    from core.datasets import load_manifest

    hashes = {}
    for dataset in datasets_of(spec):
        try:
            hashes[dataset] = load_manifest(data, dataset)["source"]["sha256"]
        except NotFound:
            hashes[dataset] = None
    return {
        "spec_sha256": hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest(),
        "seed": spec.get("seed"),
        "datasets": hashes,
    }


def describe_record(job: dict) -> dict:
    """The model's record from a job record or manifest: what it was made from, with which
    TensorFlow, Keras and CUDA on which device, and what it scored."""
    device = job.get("device") or {}
    history = job.get("history") or [{}]
    made_from = job.get("record") or {"spec_sha256": None, "seed": None, "datasets": {}}
    return made_from | {
        "tensorflow": device.get("tensorflow"),
        "keras": device.get("keras"),
        "cuda": device.get("cuda"),
        "cudnn": device.get("cudnn"),
        "device": device or None,
        "final": job.get("final"),
        "metrics": job.get("metrics") or history[-1].get("metrics"),
        "test_metrics": job.get("test_metrics"),
    }


def send_training(producer: Any, job: dict) -> None:
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


_RENEW_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 2
end
return 0
"""

_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Fields go only into a record that exists: after Redis lost its data, a worker's progress write
# would otherwise leave a record without a status, which the rebuild then takes for a live one.
_UPDATE_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
  return 1
end
return 0
"""

_STEAL_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


class JobStore:
    """Job records over one Redis connection and the data folder."""

    def __init__(self, client: redis.Redis, data: DataDir, settings: Settings) -> None:
        self.redis = client
        self.data = data
        self.settings = settings
        self._renew = client.register_script(_RENEW_LEASE)
        self._release = client.register_script(_RELEASE_LEASE)
        self._steal = client.register_script(_STEAL_LEASE)
        self._update = client.register_script(_UPDATE_EXISTING)

    # Creating, reading, listing -----------------------------------------------------------

    def create(
        self,
        spec: dict,
        *,
        owner: str | None,
        request_id: str | None = None,
        request_sha256: str | None = None,
    ) -> dict:
        """Record a new queued job: Redis first, then `job.json` and `manifest.json`.

        If the files cannot be written the Redis records are removed again, so a failure leaves
        nothing half recorded.
        """
        job_id = new_id()
        now = utc_now()
        job = {
            "id": job_id,
            "name": spec.get("name"),
            "owner": owner,
            "status": "queued",
            "reason": None,
            "message": None,
            "attempt": 0,
            "created_at": now,
            "updated_at": now,
            "started_at": None,
            "finished_at": None,
            "device": None,
            "worker": None,
            "epoch": 0,
            "checkpoints": [],
            "best": None,
            "final": None,
            "test_metrics": None,
            "request_id": request_id,
            "request_sha256": request_sha256,
            "priority": spec.get("priority", 5),
            "gpus": (spec.get("resources") or {}).get("gpus", 1),
            "datasets": datasets_of(spec),
            "progress": None,
            "metrics": None,
            "record": provenance(spec, self.data),
        }
        self._insert(job, score=time.time())
        try:
            job_dir = self.data.job(job_id)
            write_json(
                job_dir / "job.json",
                {"id": job_id, "owner": owner, "created_at": now, "spec": spec},
            )
            self._write_manifest(job_id)
        except BaseException:
            self._remove_records(job)
            shutil.rmtree(self.data.job(job_id), ignore_errors=True)
            raise
        return job

    def _insert(self, job: dict, *, score: float) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(job_key(job["id"]), mapping=_encode(job))
        pipe.zadd(ALL, {job["id"]: score})
        pipe.zadd(status_index(job["status"]), {job["id"]: score})
        if job["owner"]:
            pipe.zadd(owner_index(job["owner"]), {job["id"]: score})
        if job["status"] in LIVE:
            for dataset in job["datasets"]:
                pipe.sadd(dataset_jobs_key(dataset), job["id"])
        pipe.execute()

    def get(self, job_id: str) -> dict:
        """The job's record; NotFound for an unknown or malformed id."""
        check_id(job_id, "job")
        raw = self.redis.hgetall(job_key(job_id))
        if not raw:
            raise NotFound(f"No job with id {job_id!r}.")
        return _decode(raw)

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(job_key(job_id)))

    def spec(self, job_id: str) -> dict:
        """The normalized spec the job was submitted with (its immutable `job.json`)."""
        return read_json(self.data.job(job_id) / "job.json")["spec"]

    def list(
        self,
        *,
        owner: str | None,
        status: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[dict], str | None]:
        """Jobs newest first; `owner=None` lists everyone's. Returns (items, next cursor)."""
        if owner is not None:
            index = owner_index(owner)
        elif status is not None:
            index = status_index(status)
        else:
            index = ALL
        items: list[dict] = []
        last: tuple[float, str] | None = None
        after = None if cursor is None else decode_cursor(cursor, float, str)
        for job_id, score in self._scan_index(index, after):
            raw = self.redis.hgetall(job_key(job_id))
            if not raw:
                continue
            job = _decode(raw)
            if status is not None and job["status"] != status:
                continue
            if len(items) == limit:
                return items, encode_cursor(*last) if last else None
            items.append(job)
            last = (score, job_id)
        return items, None

    def _scan_index(
        self, index: str, after: tuple[float, str] | None, chunk: int = 200
    ) -> Iterator[tuple[str, float]]:
        """Members newest first, strictly after the cursor `(score, id)`.

        Members with equal scores come in descending id order (Redis's reverse order).
        """
        high: str | float = "+inf" if after is None else after[0]
        offset = 0
        while True:
            rows = self.redis.zrevrangebyscore(
                index, high, "-inf", start=offset, num=chunk, withscores=True
            )
            for member, score in rows:
                job_id = member.decode()
                if after is not None and score == after[0] and job_id >= after[1]:
                    continue
                yield job_id, score
            if len(rows) < chunk:
                return
            offset += chunk

    # State machine ------------------------------------------------------------------------

    def transition(
        self,
        job_id: str,
        status: str,
        *,
        allowed: Callable[[dict], str | None] | None = None,
        **fields: Any,
    ) -> dict:
        """Move the job to `status` atomically, with `fields`; Conflict if not allowed.

        `allowed(job)` may refuse with a message (checked inside the same transaction).
        """
        key = job_key(job_id)
        result: dict = {}

        def apply(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hgetall(key)
            if not raw:
                raise NotFound(f"No job with id {job_id!r}.")
            job = _decode(raw)
            current = job["status"]
            if status not in TRANSITIONS[current]:
                raise Conflict(f"Job {job_id} is {current}; it cannot become {status}.")
            refusal = allowed(job) if allowed else None
            if refusal:
                raise Conflict(refusal)
            changes = {"status": status, "updated_at": utc_now(), **fields}
            if status in TERMINAL:
                changes.setdefault("finished_at", changes["updated_at"])
                changes["progress"] = _final_progress(job)
            score = pipe.zscore(ALL, job_id) or time.time()
            pipe.multi()
            pipe.hset(key, mapping=_encode(changes))
            if status != current:
                pipe.zrem(status_index(current), job_id)
                pipe.zadd(status_index(status), {job_id: score})
            if status in TERMINAL:
                for dataset in job["datasets"]:
                    pipe.srem(dataset_jobs_key(dataset), job_id)
                pipe.delete(stop_key(job_id))
            # In the same transaction, so an event stream reader sees every change in order.
            pipe.xadd(
                events_key(job_id),
                _event_entry(
                    "status", status=status, previous=current, reason=changes.get("reason")
                ),
                maxlen=EVENTS_MAX,
                approximate=True,
            )
            result.update(job, **changes)

        # The lease is watched too: the reconciler's check that none is held stays true.
        self.redis.transaction(apply, key, lease_key(job_id))
        self._write_manifest(job_id)
        return result

    def update(self, job_id: str, *, manifest: bool = True, **fields: Any) -> None:
        """Change fields other than the status (progress, epoch, checkpoints...) of an existing
        record; a record lost with Redis's data stays missing until the rebuild restores it."""
        encoded = _encode({**fields, "updated_at": utc_now()})
        self._update(
            keys=[job_key(job_id)], args=[part for pair in encoded.items() for part in pair]
        )
        if manifest:
            self._write_manifest(job_id)

    def request_cancel(self, job_id: str) -> dict:
        """A queued job is cancelled at once; a running one is asked to stop at batch end."""
        job = self.get(job_id)
        if job["status"] == "queued":
            with contextlib.suppress(Conflict):
                return self.transition(job_id, "cancelled", reason="cancelled", message=_CANCEL)
            job = self.get(job_id)
        if job["status"] == "running":
            self.redis.set(stop_key(job_id), "cancel")
            try:
                return self.transition(job_id, "cancelling")
            except Conflict:
                self.redis.delete(stop_key(job_id))
                job = self.get(job_id)
        if job["status"] in ("cancelling", "cancelled"):
            return job
        raise Conflict(f"Job {job_id} already {job['status']}; only live jobs can be cancelled.")

    def stop_request(self, job_id: str) -> str | None:
        """ "cancel" once a cancel was asked for a running job, else None."""
        value = self.redis.get(stop_key(job_id))
        return value.decode() if value else None

    def delete(self, job_id: str) -> None:
        """Remove a finished job's records and files; Conflict while it is live."""
        job = self.get(job_id)
        if job["status"] not in TERMINAL:
            raise Conflict(f"Job {job_id} is {job['status']}: cancel it before deleting it.")
        job_dir = self.data.job(job_id)
        # Renamed out of the way first, so a crash half-way never leaves a job a rebuild revives.
        trash = job_dir.with_name(f".deleted-{job_id}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(job_dir, trash)
        self._remove_records(job)
        shutil.rmtree(trash, ignore_errors=True)

    def discard(self, job: dict) -> None:
        """Undo a `create` whose submit failed later (enqueueing, a lost idempotency race)."""
        shutil.rmtree(self.data.job(job["id"]), ignore_errors=True)
        self._remove_records(job)

    def _remove_records(self, job: dict) -> None:
        job_id = job["id"]
        pipe = self.redis.pipeline()
        pipe.delete(
            job_key(job_id),
            history_key(job_id),
            events_key(job_id),
            stop_key(job_id),
            lease_key(job_id),
        )
        pipe.zrem(ALL, job_id)
        for status in STATUSES:
            pipe.zrem(status_index(status), job_id)
        if job.get("owner"):
            pipe.zrem(owner_index(job["owner"]), job_id)
        for dataset in job.get("datasets") or []:
            pipe.srem(dataset_jobs_key(dataset), job_id)
        pipe.execute()

    # History, progress, events ------------------------------------------------------------

    def history(self, job_id: str) -> list[dict]:
        """`[{"epoch": 1, "metrics": {...}}, ...]`, one entry per completed epoch."""
        return [orjson.loads(item) for item in self.redis.lrange(history_key(job_id), 0, -1)]

    def record_epoch(self, job_id: str, epoch: int, metrics: dict) -> None:
        """Set history entry `epoch`, dropping any later ones a previous attempt left."""
        pipe = self.redis.pipeline()
        if epoch <= 1:
            pipe.delete(history_key(job_id))
        else:
            pipe.ltrim(history_key(job_id), 0, epoch - 2)
        pipe.rpush(history_key(job_id), orjson.dumps({"epoch": epoch, "metrics": metrics}))
        pipe.incr(EPOCHS_DONE)
        pipe.execute()
        self.update(job_id, epoch=epoch, metrics=metrics)

    def truncate_history(self, job_id: str, epochs: int) -> None:
        """Keep the first `epochs` entries: a resumed attempt starts after its checkpoint."""
        if epochs <= 0:
            self.redis.delete(history_key(job_id))
        else:
            self.redis.ltrim(history_key(job_id), 0, epochs - 1)

    def add_event(self, job_id: str, kind: str, **fields: object) -> None:
        """Append `{"kind", "time", **fields}` to the job's event stream (capped)."""
        self.redis.xadd(
            events_key(job_id), _event_entry(kind, **fields), maxlen=EVENTS_MAX, approximate=True
        )

    def events(self, job_id: str) -> list[dict]:
        """Every event of the job, oldest first: `{"kind", "time", **fields}`."""
        return [decode_event(entry) for _, entry in self.redis.xrange(events_key(job_id))]

    # Leases -------------------------------------------------------------------------------

    def acquire_lease(self, job_id: str, holder: str) -> bool:
        """Take the job's lease for `holder` if nobody holds it."""
        return bool(
            self.redis.set(lease_key(job_id), holder, nx=True, ex=self.settings.lease_seconds)
        )

    def steal_lease(self, job_id: str, dead_holder: str, holder: str) -> bool:
        """Take over a lease from a holder known to be dead (same host, process gone)."""
        return bool(
            self._steal(
                keys=[lease_key(job_id)], args=[dead_holder, holder, self.settings.lease_seconds]
            )
        )

    def renew_lease(self, job_id: str, holder: str) -> bool:
        """Extend our lease (taking it again if it vanished); False if someone else holds it."""
        return bool(
            self._renew(keys=[lease_key(job_id)], args=[holder, self.settings.lease_seconds])
        )

    def release_lease(self, job_id: str, holder: str) -> None:
        """Let go of the lease if `holder` still holds it (never someone else's)."""
        self._release(keys=[lease_key(job_id)], args=[holder])

    def lease_holder(self, job_id: str) -> str | None:
        """`<host>/<pid>/<worker name>` of the process training the job, or None."""
        value = self.redis.get(lease_key(job_id))
        return value.decode() if value else None

    # The volume ---------------------------------------------------------------------------

    def _write_manifest(self, job_id: str) -> None:
        """Rewrite `manifest.json` from the record; the lock orders concurrent writers."""
        job_dir = self.data.job(job_id)
        if not job_dir.is_dir():
            return
        with _locked(job_dir / ".manifest.lock"):
            raw = self.redis.hgetall(job_key(job_id))
            if not raw:
                return
            job = _decode(raw)
            job["history"] = self.history(job_id)
            write_json(job_dir / "manifest.json", {k: job.get(k) for k in MANIFEST_FIELDS})

    def manifest(self, job_id: str) -> dict:
        """The job's `manifest.json` as last written."""
        return read_json(self.data.job(job_id) / "manifest.json")

    def rebuild_records(self) -> list[dict]:
        """Restore missing records from every job manifest on the volume.

        Jobs already in Redis are left alone. Returns the restored queued jobs (the caller
        re-sends them: their broker messages went with Redis's data). Running jobs keep their
        status: their workers take their leases again at the next heartbeat, and the reconciler
        requeues the others once the grace period (one lease) has passed.
        """
        queued = []
        folders = sorted(self.data.jobs.iterdir()) if self.data.jobs.is_dir() else []
        for folder in folders:
            try:
                check_id(folder.name, "job")
                manifest = read_json(folder / "manifest.json")
                created = read_json(folder / "job.json")
            except (NotFound, OSError, orjson.JSONDecodeError):
                continue
            if self.redis.exists(job_key(folder.name)):
                continue
            job = self._restore(manifest, created)
            if job["status"] == "queued":
                queued.append(job)
            elif job["status"] in LIVE:
                self.redis.set(REBUILT_GRACE, "1", ex=self.settings.lease_seconds)
        # Set here only, never at create: a job submitted just after Redis lost its data must
        # not hide that loss from the reconciler.
        self.redis.set(RECORDS_MARKER, "1")
        return queued

    def _restore(self, manifest: dict, created: dict) -> dict:
        spec = created["spec"]
        job = {field: manifest.get(field) for field in MANIFEST_FIELDS if field != "history"}
        job.update(
            datasets=job.get("datasets") or datasets_of(spec),
            priority=job.get("priority", spec.get("priority", 5)),
            gpus=job.get("gpus") or (spec.get("resources") or {}).get("gpus", 1),
            progress=None,
            metrics=(manifest.get("history") or [{}])[-1].get("metrics"),
        )
        self._insert(job, score=parse_time(job["created_at"]))
        history = manifest.get("history") or []
        # Epochs a worker reported between the loss and now are in the manifest's history too.
        self.redis.delete(history_key(job["id"]))
        if history:
            self.redis.rpush(history_key(job["id"]), *(orjson.dumps(h) for h in history))
        return job


_CANCEL = "Cancelled by request before it started."


def _event_entry(kind: str, **fields: object) -> dict[str, bytes | str]:
    return {"kind": kind, "time": utc_now(), "data": orjson.dumps(fields)}


def decode_event(entry: dict[bytes, bytes]) -> dict[str, Any]:
    """One stream entry as `{"kind", "time", **fields}`."""
    head = {"kind": entry[b"kind"].decode(), "time": entry[b"time"].decode()}
    return head | orjson.loads(entry[b"data"])


def _final_progress(job: dict) -> dict | None:
    progress = job.get("progress")
    if not progress:
        return None
    return {**progress, "eta_seconds": 0}


def _encode(fields: dict[str, Any]) -> dict[str, bytes]:
    return {name: orjson.dumps(value) for name, value in fields.items()}


def _decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
    return {name.decode(): orjson.loads(value) for name, value in raw.items()}


def parse_time(rfc3339: str) -> float:
    """Seconds since the epoch of one of our RFC 3339 timestamps."""
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
