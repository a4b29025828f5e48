"""The job record (`Job`), its manifest and API view, and the store of the live records.

A job's record is a Redis hash (keys in core.rediskeys), mirrored into the job's `manifest.json`
on the data volume. Every status change is checked against TRANSITIONS inside a WATCH/MULTI
transaction, then the manifest is rewritten from the record under a file lock, so the last
writer always writes the newest state and the records can be rebuilt from the volume.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypedDict, cast, get_args

import orjson
import redis
from redis.typing import EncodableT, FieldT, StreamRangeResponse, ZSetRangeResponse

from core.cursors import decode_cursor, encode_cursor
from core.errors import Conflict, NotFound
from core.grammar.requests import request_from_spec
from core.leases import Leases
from core.rediskeys import (
    ALL_JOBS,
    EPOCHS_DONE,
    REBUILT_GRACE,
    RECENT_DURATIONS,
    RECORDS_MARKER,
    dataset_jobs_key,
    events_key,
    history_key,
    job_key,
    lease_key,
    owner_index,
    status_index,
    stop_key,
    tag_index,
)
from core.settings import Settings
from core.storage import DataDir, check_id, new_id, read_json, utc_now, utc_time, write_json

Status = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = get_args(Status)
LIVE: tuple[Status, ...] = ("queued", "running", "cancelling")
TERMINAL: tuple[Status, ...] = tuple(status for status in STATUSES if status not in LIVE)
TRANSITIONS: dict[str, tuple[str, ...]] = {
    # running -> running: a redelivered job picked up again by the worker now holding its lease.
    "queued": ("running", "cancelled", "failed"),
    "running": ("running", "succeeded", "failed", "cancelled", "cancelling", "queued"),
    "cancelling": ("cancelled", "succeeded", "failed"),
    "succeeded": (),
    "failed": (),
    "cancelled": (),
}
EVENTS_MAX = 10_000
# Succeeded jobs whose running time the queue's expected start is estimated from.
DURATIONS_KEPT = 20
REQUEST_FILE = "request.json"

Metrics = dict[str, Any]


class Provenance(TypedDict):
    """What a model was made from: the canonical request's sha256, the seed, each dataset's
    sha256 (null for a dataset gone before the submit finished)."""

    spec_sha256: str | None
    seed: int | None
    datasets: dict[str, str | None]


class Job(TypedDict):
    """A job's record: the Redis hash (each field JSON-encoded) and, less LIVE_ONLY, its manifest.

    Epochs count from 1; `checkpoints` are `{"version", "file", "sha256", "bytes", ...}` entries,
    `best` is `{"version", "monitor", "value"}`, `final` the final model's entry (with the
    `epoch` whose weights it holds and that epoch's `metrics`), `stop` why training ended:
    `{"reason": "completed" | "early_stopping" | "cancelled" | "pruned" | "time_limit", "epoch",
    "best_epoch", "monitor"}`. `tags` are the
    request's; `cloned_from` the job this one was cloned from; `warm_start` the source the
    weights came from, `{"job", "version", "strict", "loaded", "skipped"}` (layer names, null
    until the worker loaded them).
    """

    id: str
    name: str | None
    owner: str | None
    status: Status
    reason: str | None
    message: str | None
    attempt: int
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    device: dict[str, Any] | None
    worker: str | None
    epoch: int
    checkpoints: list[dict[str, Any]]
    best: dict[str, Any] | None
    final: dict[str, Any] | None
    stop: dict[str, Any] | None
    test_metrics: Metrics | None
    request_id: str | None
    request_sha256: str | None
    priority: int
    gpus: int
    datasets: list[str]
    resume_from: int | None
    record: Provenance | None
    progress: dict[str, Any] | None
    metrics: Metrics | None
    # A sweep's trial: the sweep's id and the trial's number in it (0 is the sweep's base).
    sweep: str | None
    trial: int | None
    tags: dict[str, str]
    cloned_from: str | None
    warm_start: dict[str, Any] | None
    # Kept past FITSERVE_JOB_TTL_SECONDS (POST :pin / :unpin).
    pinned: bool


JOB_FIELDS = tuple(Job.__annotations__)
# Written many times a second, or derived from the history: Redis only, never the manifest.
LIVE_ONLY = ("progress", "metrics")


def queued_job(
    job_id: str,
    spec: Mapping[str, Any],
    *,
    owner: str | None,
    created_at: str,
    request_id: str | None = None,
    request_sha256: str | None = None,
    record: Provenance | None = None,
    cloned_from: str | None = None,
    sweep: str | None = None,
    trial: int | None = None,
) -> Job:
    """The record of a job just submitted with the normalized request `spec` (`sweep` and
    `trial` for a sweep's trial)."""
    warm_start = spec.get("warm_start")
    return Job(
        id=job_id,
        name=spec.get("name"),
        owner=owner,
        status="queued",
        reason=None,
        message=None,
        attempt=0,
        created_at=created_at,
        updated_at=created_at,
        started_at=None,
        finished_at=None,
        device=None,
        worker=None,
        epoch=0,
        checkpoints=[],
        best=None,
        final=None,
        stop=None,
        test_metrics=None,
        request_id=request_id,
        request_sha256=request_sha256,
        priority=spec.get("priority", 5),
        gpus=(spec.get("resources") or {}).get("gpus", 1),
        datasets=datasets_of(spec),
        resume_from=None,
        pinned=False,
        record=record,
        progress=None,
        metrics=None,
        sweep=sweep,
        trial=trial,
        tags=spec.get("tags") or {},
        cloned_from=cloned_from,
        warm_start=None if not warm_start else {**warm_start, "loaded": None, "skipped": None},
    )


def job_manifest(job: Job, history: list[dict]) -> dict[str, Any]:
    """What `manifest.json` holds: the record less LIVE_ONLY, and the epochs' history."""
    return {name: job.get(name) for name in JOB_FIELDS if name not in LIVE_ONLY} | {
        "history": history
    }


def restore_job(manifest: Mapping[str, Any], spec: Mapping[str, Any]) -> Job:
    """The record a manifest describes; a field an older manifest lacks takes its value at submit
    (what the request says, else the queued default)."""
    job = queued_job(
        manifest["id"], spec, owner=manifest.get("owner"), created_at=manifest["created_at"]
    )
    stored = {
        name: manifest[name]
        for name in JOB_FIELDS
        if name not in LIVE_ONLY and manifest.get(name) is not None
    }
    job.update(cast(Job, stored))
    job["metrics"] = last_metrics(manifest.get("history"))
    return job


def last_metrics(history: list[dict] | None) -> Metrics | None:
    """The metrics of the last completed epoch, None before the first."""
    return history[-1].get("metrics") if history else None


def datasets_of(spec: Mapping[str, Any]) -> list[str]:
    """Every dataset id a normalized spec reads (training, validation, test)."""
    data = spec.get("data") or {}
    found = [data.get("dataset")]
    found += [(data.get(part) or {}).get("dataset") for part in ("validation", "test")]
    return sorted({dataset for dataset in found if dataset})


def provenance(spec: Mapping[str, Any], manifests: Mapping[str, Mapping[str, Any]]) -> Provenance:
    """What a model is made from: the canonical spec's sha256, the seed, each dataset's sha256.

    `manifests` are the dataset manifests the request was checked against, read once at parse.
    """
    hashes = {
        dataset: (manifests[dataset]["source"]["sha256"] if dataset in manifests else None)
        for dataset in datasets_of(spec)
    }
    return Provenance(
        spec_sha256=hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest(),
        seed=spec.get("seed"),
        datasets=hashes,
    )


class Labels(TypedDict):
    """What the model's numbers stand for, copied from the training dataset at submit: the names
    of the class ids of a single output's labels (CSV strings, image folders) and the column
    names of a single input's CSV features; null where the data had none."""

    classes: list[str] | None
    features: list[str] | None


NO_LABELS = Labels(classes=None, features=None)


def dataset_labels(spec: Mapping[str, Any], manifests: Mapping[str, Mapping[str, Any]]) -> Labels:
    """The labels a job keeps, from the manifest of its training dataset (`data.dataset`).

    Only a single output's class names and a single input's feature names: with several, no one
    list says what the model answers.
    """
    data = spec.get("data") or {}
    manifest = manifests.get(data.get("dataset") or "") or {}
    return Labels(
        classes=_single_array_names(data.get("y"), manifest.get("classes")),
        features=_single_array_names(data.get("x"), manifest.get("features")),
    )


def _single_array_names(mapping: Any, names_by_array: Any) -> list[str] | None:
    if not isinstance(mapping, dict) or len(mapping) != 1 or not isinstance(names_by_array, dict):
        return None
    return names_by_array.get(next(iter(mapping.values())))


def job_labels(data: DataDir, job_id: str) -> Labels:
    """The class and feature names a job keeps in `job.json`; all null for a job submitted before
    jobs kept them. NotFound for an unknown job."""
    try:
        document = read_json(data.job(check_id(job_id, "job")) / "job.json")
    except FileNotFoundError:
        raise NotFound(f"No job with id {job_id!r}.") from None
    return stored_labels(document)


def stored_labels(job_document: Mapping[str, Any]) -> Labels:
    """The names a `job.json` document keeps (all null in one written before jobs kept them)."""
    stored = job_document.get("labels") if isinstance(job_document, Mapping) else None
    return Labels(**(NO_LABELS | (stored if isinstance(stored, dict) else {})))  # type: ignore[typeddict-item]


# The API view ---------------------------------------------------------------------------------


class ModelRecord(TypedDict):
    """What the model was made from and on, and what it scored."""

    spec_sha256: str | None
    seed: int | None
    datasets: dict[str, str | None]
    tensorflow: str | None
    keras: str | None
    cuda: str | None
    cudnn: str | None
    device: dict[str, Any] | None
    final: dict[str, Any] | None
    metrics: Metrics | None
    test_metrics: Metrics | None


class Progress(TypedDict):
    """Where training is: epochs count from 1 (`epoch` the one in progress or just ended,
    `completed` those ended); `fraction` of the work done, 0 to 1; `eta_seconds` from the measured
    epoch time (None before an epoch ended); `metrics` the last ended epoch's."""

    epoch: int
    epochs: int | None
    completed: int
    step: int | None
    steps: int | None
    fraction: float
    eta_seconds: float | None
    metrics: Metrics | None


class Timings(TypedDict):
    """Seconds spent waiting for a worker and training (so far, while it runs)."""

    queued_seconds: float | None
    running_seconds: float | None


class Retention(TypedDict):
    """Whether a finished job is kept: `pinned`, else removed at `expires_at` (null: kept)."""

    pinned: bool
    expires_at: str | None


class MetricsView(TypedDict):
    """The last completed epoch's metrics and the best checkpoint."""

    last: Metrics | None
    best: dict[str, Any] | None


class JobError(TypedDict):
    """Why a failed job failed (`reason` a code such as `nan_loss` or `worker_lost`) and what to
    do about it."""

    reason: str | None
    message: str | None


class JobLinks(TypedDict):
    self: str
    metrics: str
    logs: str
    cancel: str
    events: str
    model: str


class QueueState(TypedDict, total=False):
    """A queued job's queue and the live workers consuming it; `message` when none does.

    `position` counts from 1 in the order workers take the queue (priority, then submit time),
    `ahead` the queued jobs before it, `expected_start` an RFC 3339 estimate (null when unknown).
    """

    name: str
    workers: int
    message: str
    position: int
    ahead: int
    expected_start: str | None


class _JobViewFields(TypedDict):
    id: str
    name: str | None
    owner: str | None
    status: Status
    attempt: int
    priority: int | None
    created_at: str
    updated_at: str | None
    started_at: str | None
    finished_at: str | None
    timings: Timings
    device: dict[str, Any] | None
    worker: str | None
    progress: Progress
    metrics: MetricsView
    test_metrics: Metrics | None
    record: ModelRecord
    checkpoints: list[dict[str, Any]]
    final: dict[str, Any] | None
    stop: dict[str, Any] | None
    error: JobError | None
    sweep: str | None
    trial: int | None
    tags: dict[str, str]
    cloned_from: str | None
    warm_start: dict[str, Any] | None
    retention: Retention
    links: JobLinks


class JobView(_JobViewFields, total=False):
    """A job as the API shows it; a queued one also says how its queue stands (`queue`)."""

    queue: QueueState


def view_job(job: Job, *, now: float | None = None, ttl_seconds: int = 0) -> JobView:
    """The job as the API shows it; `now` (seconds since the epoch) times a running job,
    `ttl_seconds` (FITSERVE_JOB_TTL_SECONDS) dates a finished job's removal."""
    job_id = job["id"]
    progress = job.get("progress") or {}
    return JobView(
        id=job_id,
        name=job.get("name"),
        owner=job.get("owner"),
        status=job["status"],
        attempt=job.get("attempt", 0),
        priority=job.get("priority"),
        created_at=job["created_at"],
        updated_at=job.get("updated_at"),
        started_at=job.get("started_at"),
        finished_at=job.get("finished_at"),
        timings=_timings(job, time.time() if now is None else now),
        device=job.get("device"),
        worker=job.get("worker"),
        progress=Progress(
            epoch=progress.get("epoch", job.get("epoch") or 0),
            epochs=progress.get("epochs"),
            completed=progress.get("completed", job.get("epoch") or 0),
            step=progress.get("step"),
            steps=progress.get("steps"),
            fraction=progress.get("fraction", 1.0 if job["status"] == "succeeded" else 0.0),
            eta_seconds=progress.get("eta_seconds"),
            metrics=progress.get("metrics"),
        ),
        metrics=MetricsView(last=job.get("metrics"), best=job.get("best")),
        test_metrics=job.get("test_metrics"),
        record=describe_record(job),
        checkpoints=job.get("checkpoints") or [],
        final=job.get("final"),
        stop=job.get("stop"),
        error=(
            JobError(reason=job.get("reason"), message=job.get("message"))
            if job["status"] == "failed"
            else None
        ),
        sweep=job.get("sweep"),
        trial=job.get("trial"),
        tags=job.get("tags") or {},
        cloned_from=job.get("cloned_from"),
        warm_start=job.get("warm_start"),
        retention=Retention(
            pinned=bool(job.get("pinned")), expires_at=expiry_time(job, ttl_seconds)
        ),
        links=JobLinks(
            self=f"/v1/jobs/{job_id}",
            metrics=f"/v1/jobs/{job_id}/metrics",
            logs=f"/v1/jobs/{job_id}/logs",
            cancel=f"/v1/jobs/{job_id}:cancel",
            events=f"/v1/jobs/{job_id}/events",
            model=f"/v1/models/{job_id}",
        ),
    )


def _timings(job: Job, now: float) -> Timings:
    started = _seconds(job.get("started_at"))
    if started is None:
        return Timings(queued_seconds=None, running_seconds=None)
    finished = _seconds(job.get("finished_at"))
    return Timings(
        queued_seconds=round(started - parse_time(job["created_at"]), 3),
        running_seconds=round((finished or now) - started, 3),
    )


def _seconds(value: str | None) -> float | None:
    return None if value is None else parse_time(value)


def describe_record(job: Mapping[str, Any]) -> ModelRecord:
    """The model's record from a job record or manifest: what it was made from, with which
    TensorFlow, Keras and CUDA on which device, and what it scored."""
    device = job.get("device") or {}
    made_from = job.get("record") or {"spec_sha256": None, "seed": None, "datasets": {}}
    return ModelRecord(
        spec_sha256=made_from["spec_sha256"],
        seed=made_from["seed"],
        datasets=made_from["datasets"],
        tensorflow=device.get("tensorflow"),
        keras=device.get("keras"),
        cuda=device.get("cuda"),
        cudnn=device.get("cudnn"),
        device=device or None,
        final=job.get("final"),
        metrics=job.get("metrics") or last_metrics(job.get("history")),
        test_metrics=job.get("test_metrics"),
    )


# Fields go only into a record that exists: after Redis lost its data, a worker's progress write
# would otherwise leave a record without a status, which the rebuild then takes for a live one.
_UPDATE_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
  return 1
end
return 0
"""


# `builtins.list` in the annotations below: the `list` method shadows the builtin in the class.
class JobStore:
    """Job records over one Redis connection and the data folder."""

    def __init__(self, client: redis.Redis, data: DataDir, settings: Settings) -> None:
        self.redis = client
        self.data = data
        self.settings = settings
        self.leases = Leases(client, settings.lease_seconds, lease_key)
        self._update = client.register_script(_UPDATE_EXISTING)

    # Creating, reading, listing -----------------------------------------------------------

    def create(
        self,
        spec: dict,
        *,
        owner: str | None,
        request_id: str | None = None,
        request_sha256: str | None = None,
        record: Provenance | None = None,
        sweep: str | None = None,
        trial: int | None = None,
        request: Any = None,
        cloned_from: str | None = None,
        labels: Labels = NO_LABELS,
    ) -> Job:
        """Record a new queued job: Redis first, then `request.json`, `job.json` and
        `manifest.json`.

        `record` is the job's provenance (`provenance`); `request` what the client sent (kept
        for clones); `cloned_from` the job it was cloned from; `sweep` and `trial` mark a
        sweep's trial; `labels` its class and feature names (`dataset_labels`), kept in
        `job.json` so they outlive the dataset. If the files cannot be written the Redis
        records are removed again, so a failure leaves nothing half recorded.
        """
        now = utc_now()
        job = queued_job(
            new_id(),
            spec,
            owner=owner,
            created_at=now,
            request_id=request_id,
            request_sha256=request_sha256,
            record=record,
            sweep=sweep,
            trial=trial,
            cloned_from=cloned_from,
        )
        self._insert(job, score=time.time())
        job_dir = self.data.job(job["id"])
        try:
            write_json(job_dir / REQUEST_FILE, spec if request is None else request)
            write_json(
                job_dir / "job.json",
                {
                    "id": job["id"],
                    "owner": owner,
                    "created_at": now,
                    "spec": spec,
                    "labels": labels,
                },
            )
            # Nobody else knows the id yet: the manifest is written from the record in hand.
            write_json(job_dir / "manifest.json", job_manifest(job, []))
        except BaseException:
            self._remove_records(job)
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        return job

    def _insert(self, job: Job, *, score: float) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(job_key(job["id"]), mapping=_encode(job))
        pipe.zadd(ALL_JOBS, {job["id"]: score})
        pipe.zadd(status_index(job["status"]), {job["id"]: score})
        if job["owner"]:
            pipe.zadd(owner_index(job["owner"]), {job["id"]: score})
        for key, value in (job.get("tags") or {}).items():
            pipe.zadd(tag_index(key, value), {job["id"]: score})
        if job["status"] in LIVE:
            for dataset in job["datasets"]:
                pipe.sadd(dataset_jobs_key(dataset), job["id"])
        pipe.execute()

    def get(self, job_id: str) -> Job:
        """The job's record; NotFound for an unknown or malformed id."""
        check_id(job_id, "job")
        raw = self.redis.hgetall(job_key(job_id))
        if not raw:
            raise NotFound(f"No job with id {job_id!r}.")
        return _decode(raw)

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(job_key(job_id)))

    def job_ids(self, status: str) -> builtins.list[str]:
        """The ids of every job in `status`, oldest first."""
        return _members(self.redis.zrange(status_index(status), 0, -1))

    def count_live(self, owner: str | None) -> int:
        """Queued, running and cancelling jobs of `owner` (of everyone for None)."""
        pipe = self.redis.pipeline(transaction=False)
        for status in LIVE:
            if owner is None:
                pipe.zcard(status_index(status))
            else:
                pipe.zintercard(2, [owner_index(owner), status_index(status)])
        return sum(pipe.execute())

    def count_kept(self, owner: str | None) -> int:
        """Jobs of `owner` in any status (of everyone for None): finished ones hold files too."""
        return int(self.redis.zcard(ALL_JOBS if owner is None else owner_index(owner)))

    def count_live_using(self, dataset_id: str) -> int:
        """The live jobs reading a dataset (which therefore cannot be deleted)."""
        return int(self.redis.scard(dataset_jobs_key(dataset_id)))

    def is_finished(self, job_id: str) -> bool:
        """The job is over, or gone."""
        raw = self.redis.hget(job_key(job_id), "status")
        return raw is None or orjson.loads(raw) in TERMINAL

    def normalized_request(self, job_id: str) -> dict:
        """The request the job was submitted with, as the grammar normalized it (its immutable
        `job.json`)."""
        return read_json(self.data.job(job_id) / "job.json")["spec"]

    def raw_request(self, job_id: str) -> Any:
        """What the client sent for the job (`request.json`); a job stored before requests were
        kept answers a request rebuilt from its normalized one, which parses to the same job.
        Conflict when the job's files cannot be read."""
        folder = self.data.job(job_id)
        try:
            if (folder / REQUEST_FILE).is_file():
                return read_json(folder / REQUEST_FILE)
            return request_from_spec(self.normalized_request(job_id))
        except (OSError, orjson.JSONDecodeError):
            raise Conflict(
                f"Job {job_id}'s request is no longer readable on the data volume."
            ) from None

    def records(self, job_ids: builtins.list[str], fields: tuple[str, ...]) -> builtins.list[Job]:
        """These `fields` of each job's record, in one round trip; jobs gone meanwhile are left
        out (the others' missing fields too)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(job_key(job_id), fields)
        found = []
        for values in pipe.execute():
            if values[0] is None:
                continue
            pairs = zip(fields, values, strict=True)
            found.append({name: orjson.loads(raw) for name, raw in pairs if raw is not None})
        return cast(builtins.list[Job], found)

    def recent_durations(self) -> builtins.list[float]:
        """Running seconds of the last succeeded jobs, newest first."""
        return [float(value) for value in self.redis.lrange(RECENT_DURATIONS, 0, -1)]

    def list(
        self,
        *,
        owner: str | None,
        status: str | None,
        limit: int,
        cursor: str | None,
        tags: Mapping[str, str] | None = None,
    ) -> tuple[builtins.list[Job], str | None]:
        """Jobs newest first; `owner=None` lists everyone's, `tags` keeps those carrying every
        one of them. Returns (items, next cursor)."""
        tags = tags or {}
        if tags:
            # One tag's index holds every match; the others, the owner and the status are
            # checked on each record, which the page reads anyway.
            index = tag_index(*next(iter(tags.items())))
        elif owner is not None:
            index = owner_index(owner)
        elif status is not None:
            index = status_index(status)
        else:
            index = ALL_JOBS
        items: builtins.list[Job] = []
        last: tuple[float, str] | None = None
        after = None if cursor is None else decode_cursor(cursor, float, str)
        for job_id, score in self._scan_index(index, after):
            raw = self.redis.hgetall(job_key(job_id))
            if not raw:
                continue
            job = _decode(raw)
            if not _matches(job, owner, status, tags):
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
            rows = _scored(
                self.redis.zrevrangebyscore(
                    index, high, "-inf", start=offset, num=chunk, withscores=True
                )
            )
            for job_id, score in rows:
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
        allowed: Callable[[Job], str | None] | None = None,
        **fields: Any,
    ) -> Job:
        """Move the job to `status` atomically, with `fields`; Conflict if not allowed.

        `allowed(job)` may refuse with a message (checked inside the same transaction).
        """
        key = job_key(job_id)
        result: dict[str, Any] = {}

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
                changes["progress"] = _final_progress(job, status)
            score = pipe.zscore(ALL_JOBS, job_id) or time.time()
            pipe.multi()
            pipe.hset(key, mapping=_encode(changes))
            if status != current:
                pipe.zrem(status_index(current), job_id)
                pipe.zadd(status_index(status), {job_id: score})
            if status in TERMINAL:
                for dataset in job["datasets"]:
                    pipe.srem(dataset_jobs_key(dataset), job_id)
                pipe.delete(stop_key(job_id))
            started = job.get("started_at")
            if status == "succeeded" and started:
                ran = parse_time(changes["finished_at"]) - parse_time(started)
                pipe.lpush(RECENT_DURATIONS, round(max(ran, 0.0), 3))
                pipe.ltrim(RECENT_DURATIONS, 0, DURATIONS_KEPT - 1)
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
        return cast(Job, result)

    def update(self, job_id: str, *, manifest: bool = True, **fields: Any) -> None:
        """Change fields other than the status (progress, epoch, checkpoints...) of an existing
        record; a record lost with Redis's data stays missing until the rebuild restores it."""
        encoded = _encode({**fields, "updated_at": utc_now()})
        self._update(
            keys=[job_key(job_id)], args=[part for pair in encoded.items() for part in pair]
        )
        if manifest:
            self._write_manifest(job_id)

    def request_cancel(self, job_id: str) -> Job:
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
        return _text(value) if value else None

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

    def discard(self, job: Job) -> None:
        """Undo a `create` whose submit failed later (enqueueing, a lost idempotency race)."""
        shutil.rmtree(self.data.job(job["id"]), ignore_errors=True)
        self._remove_records(job)

    def _remove_records(self, job: Job) -> None:
        job_id = job["id"]
        pipe = self.redis.pipeline()
        pipe.delete(
            job_key(job_id),
            history_key(job_id),
            events_key(job_id),
            stop_key(job_id),
            lease_key(job_id),
        )
        pipe.zrem(ALL_JOBS, job_id)
        for status in STATUSES:
            pipe.zrem(status_index(status), job_id)
        owner = job.get("owner")
        if owner:
            pipe.zrem(owner_index(owner), job_id)
        for key, value in (job.get("tags") or {}).items():
            pipe.zrem(tag_index(key, value), job_id)
        for dataset in job.get("datasets") or []:
            pipe.srem(dataset_jobs_key(dataset), job_id)
        pipe.execute()

    # History, progress, events ------------------------------------------------------------

    def history(self, job_id: str) -> builtins.list[dict]:
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

    def events(self, job_id: str) -> builtins.list[dict]:
        """Every event of the job, oldest first: `{"kind", "time", **fields}`."""
        return [event for _, event in _events(self.redis.xrange(events_key(job_id)))]

    def events_after(
        self, job_id: str, after: str, *, count: int, block_ms: int | None = None
    ) -> builtins.list[tuple[str, dict]]:
        """Up to `count` events after the stream id `after`, oldest first, as (id, event);
        with `block_ms`, waits that long for the first one."""
        found = self.redis.xread({events_key(job_id): after}, count=count, block=block_ms)
        # A RESP2 reply: [[key, entries]] for the one stream read, empty when nothing came.
        streams = cast(builtins.list[builtins.list[Any]], found)
        return _events(streams[0][1] if streams else [])

    # Leases -------------------------------------------------------------------------------

    def acquire_lease(self, job_id: str, holder: str) -> bool:
        """Take the job's lease for `holder` if nobody holds it."""
        return self.leases.acquire(job_id, holder)

    def steal_lease(self, job_id: str, dead_holder: str, holder: str) -> bool:
        """Take over a lease from a holder known to be dead (same host, process gone)."""
        return self.leases.steal(job_id, dead_holder, holder)

    def renew_lease(self, job_id: str, holder: str) -> bool:
        """Extend our lease (taking it again if it vanished); False if someone else holds it."""
        return self.leases.renew(job_id, holder)

    def release_lease(self, job_id: str, holder: str) -> None:
        """Let go of the lease if `holder` still holds it (never someone else's)."""
        self.leases.release(job_id, holder)

    def lease_holder(self, job_id: str) -> str | None:
        """`<host>/<pid>/<worker name>` of the process training the job, or None."""
        return self.leases.holder(job_id)

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
            write_json(job_dir / "manifest.json", job_manifest(_decode(raw), self.history(job_id)))

    def manifest(self, job_id: str) -> dict:
        """The job's `manifest.json` as last written."""
        return read_json(self.data.job(job_id) / "manifest.json")

    def stored_job(self, job_id: str) -> tuple[Job, builtins.list[dict]]:
        """The record and history the job's files on the volume hold (as of its last manifest).

        Raises OSError or orjson.JSONDecodeError for a job without readable files.
        """
        check_id(job_id, "job")
        folder = self.data.job(job_id)
        manifest = read_json(folder / "manifest.json")
        spec = read_json(folder / "job.json")["spec"]
        return restore_job(manifest, spec), manifest.get("history") or []

    def rebuild_records(self) -> builtins.list[Job]:
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
                job, history = self.stored_job(folder.name)
            except (NotFound, OSError, orjson.JSONDecodeError):
                continue
            if self.redis.exists(job_key(job["id"])):
                continue
            self._restore(job, history)
            if job["status"] == "queued":
                queued.append(job)
            elif job["status"] in LIVE:
                self.redis.set(REBUILT_GRACE, "1", ex=self.settings.lease_seconds)
        # Set here only, never at create: a job submitted just after Redis lost its data must
        # not hide that loss from the reconciler.
        self.redis.set(RECORDS_MARKER, "1")
        return queued

    def records_lost(self) -> bool:
        """Redis lost its data since the records were last (re)built."""
        return not self.redis.exists(RECORDS_MARKER)

    def rebuilt_recently(self) -> bool:
        """Less than a lease has passed since a rebuild restored live jobs: their workers may not
        have taken their leases again yet."""
        return bool(self.redis.exists(REBUILT_GRACE))

    def _restore(self, job: Job, history: builtins.list[dict]) -> None:
        self._insert(job, score=parse_time(job["created_at"]))
        # Epochs a worker reported between the loss and now are in the manifest's history too.
        self.redis.delete(history_key(job["id"]))
        if history:
            self.redis.rpush(history_key(job["id"]), *(orjson.dumps(h) for h in history))


_CANCEL = "Cancelled by request before it started."


def _matches(job: Job, owner: str | None, status: str | None, tags: Mapping[str, str]) -> bool:
    """The job is `owner`'s (anyone's for None), in `status` (any for None), with every tag."""
    if owner is not None and job.get("owner") != owner:
        return False
    if status is not None and job["status"] != status:
        return False
    carried = job.get("tags") or {}
    return all(carried.get(key) == value for key, value in tags.items())


def _event_entry(kind: str, **fields: object) -> dict[FieldT, EncodableT]:
    return {"kind": kind, "time": utc_now(), "data": orjson.dumps(fields)}


def decode_event(entry: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    """One stream entry as `{"kind", "time", **fields}`."""
    head = {"kind": _text(entry[b"kind"]), "time": _text(entry[b"time"])}
    return head | orjson.loads(entry[b"data"])


def _final_progress(job: Job, status: str) -> dict | None:
    """The progress of a job that ended: nothing left to wait for, and a job that succeeded
    (all its epochs, or stopped early) did all its work."""
    progress = job.get("progress")
    if not progress:
        return None
    return {**progress, "eta_seconds": 0} | ({"fraction": 1.0} if status == "succeeded" else {})


def _encode(fields: Mapping[str, Any]) -> dict[FieldT, EncodableT]:
    return {name: orjson.dumps(value) for name, value in fields.items()}


def _decode(raw: Mapping[bytes | str, bytes | str]) -> Job:
    return cast(Job, {_text(name): orjson.loads(value) for name, value in raw.items()})


# redis-py types each reply for every protocol and `decode_responses` setting at once; ours are
# RESP2 replies of bytes. These read them as that.


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _members(reply: ZSetRangeResponse) -> list[str]:
    """A sorted set's members from ZRANGE without scores."""
    return [_text(member) for member in cast(list[bytes | str], reply)]


def _scored(reply: ZSetRangeResponse) -> list[tuple[str, float]]:
    """(member, score) pairs from a ZRANGE-family reply WITHSCORES."""
    pairs = cast(list[tuple[bytes | str, float]], reply)
    return [(_text(member), score) for member, score in pairs]


def _events(entries: StreamRangeResponse | None) -> list[tuple[str, dict[str, Any]]]:
    """(stream id, event) of each entry of an XRANGE or XREAD reply, oldest first."""
    # Only XAUTOCLAIM answers None parts (entries deleted meanwhile); XRANGE and XREAD never do.
    return [
        (_text(entry_id), decode_event(fields))
        for entry_id, fields in entries or []
        if entry_id is not None and fields is not None
    ]


def expires_after(job: Job, ttl_seconds: int) -> float | None:
    """When (seconds since the epoch) a finished job is due for removal; None while it is live,
    pinned, or when jobs never expire."""
    finished = job.get("finished_at")
    if ttl_seconds <= 0 or job.get("pinned") or job["status"] not in TERMINAL or not finished:
        return None
    return parse_time(finished) + ttl_seconds


def expiry_time(job: Job, ttl_seconds: int) -> str | None:
    """`expires_after` as an RFC 3339 timestamp."""
    due = expires_after(job, ttl_seconds)
    return None if due is None else utc_time(due)


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
