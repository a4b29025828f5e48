"""Batch predictions: a model scored over a stored dataset on the training workers.

A batch prediction's record is a Redis hash (keys in core.rediskeys) mirrored into
`batches/<id>/manifest.json` at every status change, like a job's. A worker (core.scoring)
scores the dataset's memory-mapped arrays in batches with the compiled forward function serving
uses, writing each output into a preallocated `.npy` (`batches/<id>/outputs/`); after every
chunk of batches the outputs are flushed, then `progress.json` records the rows done. That
offset is the truth: a worker that dies resumes from it, so a committed row is never scored
again, and each attempt's committed range is kept (`attempts`) to show it. Finished, the
outputs (plus `class` and `class_name` for a classifier) become a new dataset of the same key.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import orjson
import redis

from core import datasets
from core.cursors import decode_cursor, encode_cursor
from core.errors import Conflict, FieldError, InvalidRequest, NotFound, Unavailable, pointer
from core.jobs import LIVE, STATUSES, TERMINAL, TRANSITIONS, Status, parse_time, stored_labels
from core.leases import Leases
from core.rediskeys import (
    ALL_BATCHES,
    REBUILT_GRACE,
    batch_key,
    batch_lease_key,
    batch_owner_index,
    batch_status_index,
    batch_stop_key,
    dataset_jobs_key,
)
from core.serving import catalog
from core.settings import Settings
from core.storage import DataDir, check_id, new_id, read_json, utc_now, write_json

log = logging.getLogger("fitserve.worker")

DEFAULT_BATCH_SIZE = 4096
REQUEST_KEYS = ("model", "version", "dataset", "x", "batch_size")
CLASS, CLASS_NAME = "class", "class_name"
CANCELLED = "Cancelled by request; no result dataset was made."


class Attempt(TypedDict):
    """The rows one attempt scored and committed: [start, stop)."""

    attempt: int
    start: int
    stop: int


class BatchPrediction(TypedDict):
    """A batch prediction's record (the Redis hash, each field JSON-encoded, and its manifest).

    `model` is the job id the request's model resolved to, `version` the checkpoint version;
    `inputs` maps each model input to a dataset array; `classes` are the class names of a
    classifier trained on named labels.
    """

    id: str
    owner: str | None
    status: Status
    reason: str | None
    message: str | None
    attempt: int
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    worker: str | None
    request_id: str | None
    model: str
    version: int
    dataset: str
    inputs: dict[str, str]
    batch_size: int
    rows: int
    rows_done: int
    attempts: list[Attempt]
    classify: bool
    classes: list[str] | None
    result_dataset: str | None


FIELDS = tuple(BatchPrediction.__annotations__)


class BatchProgress(TypedDict):
    rows_done: int
    rows: int
    fraction: float


class BatchError(TypedDict):
    reason: str | None
    message: str | None


class BatchLinks(TypedDict):
    self: str
    cancel: str
    model: str
    dataset: str
    result: str | None


class BatchView(TypedDict):
    """A batch prediction as the API shows it."""

    id: str
    owner: str | None
    status: Status
    model: str
    version: int
    dataset: str
    inputs: dict[str, str]
    batch_size: int
    progress: BatchProgress
    attempt: int
    attempts: list[Attempt]
    result_dataset: str | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    worker: str | None
    error: BatchError | None
    links: BatchLinks


def batch_lost_message(attempts: int, limit: int) -> str:
    """What a person reads when a batch prediction ran out of attempts."""
    return (
        f"The worker scoring this batch prediction was lost {attempts} times "
        f"(FITSERVE_MAX_ATTEMPTS={limit}): it was killed or crashed, often by the out-of-memory "
        "killer. Lower batch_size, check the worker's log, and submit it again."
    )


def view_batch(batch: BatchPrediction) -> BatchView:
    """The record as the API shows it: progress as rows done of rows, the links."""
    batch_id, rows = batch["id"], batch["rows"]
    result = batch.get("result_dataset")
    return BatchView(
        id=batch_id,
        owner=batch.get("owner"),
        status=batch["status"],
        model=batch["model"],
        version=batch["version"],
        dataset=batch["dataset"],
        inputs=batch["inputs"],
        batch_size=batch["batch_size"],
        progress=BatchProgress(
            rows_done=batch["rows_done"],
            rows=rows,
            fraction=round(batch["rows_done"] / rows, 6) if rows else 1.0,
        ),
        attempt=batch["attempt"],
        attempts=batch.get("attempts") or [],
        result_dataset=result,
        created_at=batch["created_at"],
        updated_at=batch["updated_at"],
        started_at=batch.get("started_at"),
        finished_at=batch.get("finished_at"),
        worker=batch.get("worker"),
        error=(
            BatchError(reason=batch.get("reason"), message=batch.get("message"))
            if batch["status"] == "failed"
            else None
        ),
        links=BatchLinks(
            self=f"/v1/batch-predictions/{batch_id}",
            cancel=f"/v1/batch-predictions/{batch_id}:cancel",
            model=f"/v1/models/{batch['model']}/versions/{batch['version']}",
            dataset=f"/v1/datasets/{batch['dataset']}",
            result=f"/v1/datasets/{result}" if result else None,
        ),
    )


# The request --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParsedBatch:
    """A checked request: the model's job and version, the arrays each input reads."""

    model: str
    version: int
    dataset: str
    inputs: dict[str, str]
    batch_size: int
    rows: int
    classify: bool
    classes: list[str] | None


def parse_batch_request(
    body: Any,
    *,
    data: DataDir,
    settings: Settings,
    find_model: Callable[[str], dict],
    dataset_manifest: Callable[[str], dict],
) -> ParsedBatch:
    """Check a `POST /v1/batch-predictions` body against the model's and the dataset's
    manifests (no array and no model is loaded); InvalidRequest names every bad field.

    `find_model` is the serving lookup (a job id or name to its manifest, NotFound otherwise),
    `dataset_manifest` the caller's view of a dataset (NotFound for another key's).
    """
    if not isinstance(body, dict):
        raise _invalid([FieldError("", "The body is not a JSON object.", "an object", body)])
    errors = [
        FieldError(pointer(key), f"Unknown key {key[:64]!r}.", f"one of {', '.join(REQUEST_KEYS)}")
        for key in body
        if key not in REQUEST_KEYS
    ]
    batch_size = _batch_size(body.get("batch_size", DEFAULT_BATCH_SIZE), settings, errors)
    servable = _servable(body, data, find_model, errors)
    manifest = _dataset(body.get("dataset"), dataset_manifest, errors)
    inputs: dict[str, str] = {}
    if servable is not None:
        spec = _stored_request(servable.job_dir, servable.job_id)
        signature = model_inputs(spec["spec"])
        if manifest is not None:
            inputs = _inputs(body.get("x", "x"), signature, manifest, errors)
    if errors or servable is None or manifest is None:
        raise _invalid(errors)
    return ParsedBatch(
        model=servable.job_id,
        version=servable.version,
        dataset=manifest["id"],
        inputs=inputs,
        batch_size=batch_size,
        rows=int(manifest["rows"]),
        classify=is_classifier(spec["spec"]),
        classes=stored_labels(spec)["classes"],
    )


def _stored_request(job_dir: Path, job_id: str) -> dict:
    """The model's `job.json`, whose spec gives its inputs; a file gone or unreadable is a 503
    (the volume's fault, not the request's)."""
    try:
        document = read_json(job_dir / "job.json")
    except (OSError, ValueError) as error:
        raise Unavailable(f"Model {job_id}'s stored request cannot be read: {error}.") from None
    if not isinstance(document, dict) or "model" not in (document.get("spec") or {}):
        raise Unavailable(f"Model {job_id}'s stored request (job.json) has no model.")
    return document


def _invalid(errors: list[FieldError]) -> InvalidRequest:
    return InvalidRequest(f"The batch prediction has {len(errors)} error(s).", errors=errors)


def _batch_size(value: Any, settings: Settings, errors: list[FieldError]) -> int:
    high = settings.max_batch_size
    if type(value) is not int or not 1 <= value <= high:
        errors.append(
            FieldError("/batch_size", "Not a batch size.", f"an integer in [1, {high}]", value)
        )
        return DEFAULT_BATCH_SIZE
    return value


def _servable(
    body: dict, data: DataDir, find_model: Callable[[str], dict], errors: list[FieldError]
) -> catalog.Servable | None:
    """The version the request names: `version` a number or a label (default `final`, else
    `latest`), of the model a job id or name names."""
    model, version = body.get("model"), body.get("version")
    if not isinstance(model, str) or not model:
        errors.append(FieldError("/model", "No model.", "a job id or job name", model))
        return None
    labels = ", ".join(catalog.LABELS)
    if version is not None and not (
        (type(version) is int and version >= 1) or version in catalog.LABELS
    ):
        expected = f"a version number or one of {labels}"
        errors.append(FieldError("/version", "Not a version.", expected, version))
        return None
    try:
        manifest = find_model(model)
    except NotFound as error:
        errors.append(FieldError("/model", error.detail, "a job id or job name", model))
        return None
    try:
        return catalog.resolve_version(
            data,
            manifest,
            version=version if isinstance(version, int) else None,
            label=version if isinstance(version, str) else None,
        )
    except (NotFound, Conflict) as error:
        errors.append(FieldError("/version", error.detail, f"a servable version or {labels}"))
        return None


def _dataset(
    dataset_id: Any, dataset_manifest: Callable[[str], dict], errors: list[FieldError]
) -> dict | None:
    if not isinstance(dataset_id, str):
        errors.append(FieldError("/dataset", "No dataset.", "a dataset id", dataset_id))
        return None
    try:
        manifest = dataset_manifest(dataset_id)
    except NotFound as error:
        errors.append(FieldError("/dataset", error.detail, "the id of one of your datasets"))
        return None
    status = datasets.status_of(manifest)
    if status != datasets.READY:
        errors.append(
            FieldError("/dataset", f"Dataset {dataset_id} is {status}.", "a ready dataset", status)
        )
        return None
    return manifest


def model_inputs(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The built model's inputs (`name`, `shape` without the batch axis, `dtype`): the raw
    shapes, preprocessing layers included, as the checkpoint takes them."""
    from core.grammar.shapes import model_with_preprocessing

    return list(model_with_preprocessing(dict(spec))["inputs"])


def _inputs(
    x: Any, signature: list[dict[str, Any]], manifest: dict, errors: list[FieldError]
) -> dict[str, str]:
    """Each model input's array: `x` names the one array of a one-input model, or maps every
    input's name to an array; each must exist and fit the input's shape and dtype."""
    names = [given["name"] for given in signature]
    if isinstance(x, str) and len(names) == 1:
        chosen: dict[str, Any] = {names[0]: x}
        paths = {names[0]: "/x"}
    elif isinstance(x, dict):
        chosen = {name: x.get(name) for name in names}
        paths = {name: pointer("x", name) for name in names}
        errors += [
            FieldError(pointer("x", key), f"The model has no input {key[:64]!r}.", f"{names}")
            for key in x
            if key not in names
        ]
    else:
        expected = "an array name" if len(names) == 1 else f"an object mapping {names} to arrays"
        errors.append(FieldError("/x", "Not the model's inputs.", expected, x))
        return {}
    for given in signature:
        name = given["name"]
        _check_array(chosen[name], given, manifest, paths[name], errors)
    return cast(dict[str, str], chosen)


def _check_array(
    array: Any, given: dict[str, Any], manifest: dict, path: str, errors: list[FieldError]
) -> None:
    arrays = manifest["arrays"]
    if not isinstance(array, str) or array not in arrays:
        errors.append(
            FieldError(path, f"No array {str(array)[:64]!r} in the dataset.", f"{sorted(arrays)}")
        )
        return
    entry, wanted = arrays[array], tuple(given["shape"])
    shape = tuple(entry["shape"][1:])
    fits = len(shape) == len(wanted) and all(
        w is None or w == s for w, s in zip(wanted, shape, strict=True)
    )
    if not fits:
        errors.append(
            FieldError(
                path,
                f"Array {array!r} has rows of shape {list(shape)}; input {given['name']!r} "
                f"takes {['None' if w is None else w for w in wanted]}.",
                f"rows of shape {list(wanted)}",
                entry["shape"],
            )
        )
    if not _castable(entry, np.dtype(given["dtype"])):
        errors.append(
            FieldError(
                path,
                f"Array {array!r} holds {entry['dtype']}; input {given['name']!r} takes "
                f"{given['dtype']}.",
                f"numbers castable to {given['dtype']}",
                entry["dtype"],
            )
        )


def _castable(entry: dict, wanted: np.dtype) -> bool:
    """Numbers go into a float input; an integer input takes integers, or whole floats."""
    kind = np.dtype(entry["dtype"]).kind
    if kind not in "biuf":
        return False
    if wanted.kind == "f" or kind in "biu":
        return True
    return bool((entry.get("stats") or {}).get("integer_valued"))


def is_classifier(spec: Mapping[str, Any]) -> bool:
    """One output trained with a categorical cross-entropy: `class` is its argmax."""
    loss = (spec.get("compile") or {}).get("loss")
    if isinstance(loss, dict) and "class_name" not in loss:
        losses = list(loss.values())
        loss = losses[0] if len(losses) == 1 else None
    name = loss.get("class_name") if isinstance(loss, dict) else loss
    outputs = (spec.get("model") or {}).get("outputs") or []
    return isinstance(name, str) and "categorical" in name.lower() and len(outputs) == 1


# The store ----------------------------------------------------------------------------------


class BatchStore:
    """Batch prediction records over Redis and their folders on the data volume."""

    def __init__(self, client: redis.Redis, data: DataDir, settings: Settings) -> None:
        self.redis = client
        self.data = data
        self.settings = settings
        self.leases = Leases(client, settings.lease_seconds, batch_lease_key)

    def folder(self, batch_id: str) -> Path:
        return self.data.root / "batches" / check_id(batch_id, "batch prediction")

    def create(
        self, parsed: ParsedBatch, *, owner: str | None, request_id: str | None
    ) -> BatchPrediction:
        """Record a queued batch prediction: Redis, then its manifest (undone if that fails)."""
        now = utc_now()
        batch = BatchPrediction(
            id=new_id(),
            owner=owner,
            status="queued",
            reason=None,
            message=None,
            attempt=0,
            created_at=now,
            updated_at=now,
            started_at=None,
            finished_at=None,
            worker=None,
            request_id=request_id,
            model=parsed.model,
            version=parsed.version,
            dataset=parsed.dataset,
            inputs=parsed.inputs,
            batch_size=parsed.batch_size,
            rows=parsed.rows,
            rows_done=0,
            attempts=[],
            classify=parsed.classify,
            classes=parsed.classes,
            result_dataset=None,
        )
        self._insert(batch, time.time())
        try:
            write_json(self.folder(batch["id"]) / "manifest.json", batch)
        except BaseException:
            self.discard(batch)
            raise
        return batch

    def _insert(self, batch: BatchPrediction, score: float) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(batch_key(batch["id"]), mapping=_encode(batch))
        pipe.zadd(ALL_BATCHES, {batch["id"]: score})
        pipe.zadd(batch_status_index(batch["status"]), {batch["id"]: score})
        if batch["owner"]:
            pipe.zadd(batch_owner_index(batch["owner"]), {batch["id"]: score})
        if batch["status"] in LIVE:
            pipe.sadd(dataset_jobs_key(batch["dataset"]), batch["id"])
        pipe.execute()

    def get(self, batch_id: str) -> BatchPrediction:
        """The record; NotFound for an unknown or malformed id."""
        check_id(batch_id, "batch prediction")
        raw = self.redis.hgetall(batch_key(batch_id))
        if not raw:
            raise NotFound(f"No batch prediction with id {batch_id!r}.")
        return _decode(raw)

    def ids(self, status: str) -> builtins.list[str]:
        """The ids of every batch prediction in `status`, oldest first."""
        return [_text(m) for m in cast(list, self.redis.zrange(batch_status_index(status), 0, -1))]

    def list(
        self, *, owner: str | None, limit: int, cursor: str | None
    ) -> tuple[builtins.list[BatchPrediction], str | None]:
        """Newest first; `owner=None` lists everyone's. Returns (items, next cursor)."""
        index = ALL_BATCHES if owner is None else batch_owner_index(owner)
        high: str | float = "+inf"
        after = None if cursor is None else decode_cursor(cursor, float, str)
        if after is not None:
            high = after[0]
        rows = self.redis.zrevrangebyscore(index, high, "-inf", withscores=True)
        items: builtins.list[BatchPrediction] = []
        for member, score in cast(list[tuple[bytes, float]], rows):
            batch_id = _text(member)
            if after is not None and score == after[0] and batch_id >= after[1]:
                continue
            raw = self.redis.hgetall(batch_key(batch_id))
            if not raw:
                continue
            if len(items) == limit:
                last = items[-1]
                return items, encode_cursor(self._score(last["id"]), last["id"])
            items.append(_decode(raw))
        return items, None

    def _score(self, batch_id: str) -> float:
        return float(self.redis.zscore(ALL_BATCHES, batch_id) or 0.0)

    def transition(
        self, batch_id: str, status: Status, *, unleased: bool = False, **fields: Any
    ) -> BatchPrediction:
        """Move to `status` atomically with `fields` (Conflict if not allowed, or with
        `unleased` if a worker holds its lease), then rewrite the manifest; a finished one
        leaves its dataset's live set."""
        key = batch_key(batch_id)
        result: dict[str, Any] = {}

        def apply(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hgetall(key)
            if not raw:
                raise NotFound(f"No batch prediction with id {batch_id!r}.")
            batch = _decode(raw)
            current = batch["status"]
            if status not in TRANSITIONS[current]:
                raise Conflict(f"Batch prediction {batch_id} is {current}; it cannot be {status}.")
            if unleased and pipe.get(batch_lease_key(batch_id)) is not None:
                raise Conflict(f"Batch prediction {batch_id} was leased again.")
            changes: dict[str, Any] = {"status": status, "updated_at": utc_now(), **fields}
            if status in TERMINAL:
                changes.setdefault("finished_at", changes["updated_at"])
            score = pipe.zscore(ALL_BATCHES, batch_id) or time.time()
            pipe.multi()
            pipe.hset(key, mapping=_encode(changes))
            if status != current:
                pipe.zrem(batch_status_index(current), batch_id)
                pipe.zadd(batch_status_index(status), {batch_id: score})
            if status in TERMINAL:
                pipe.srem(dataset_jobs_key(batch["dataset"]), batch_id)
                pipe.delete(batch_stop_key(batch_id))
            result.update(batch, **changes)

        self.redis.transaction(apply, key, batch_lease_key(batch_id))
        self._write_manifest(batch_id)
        return cast(BatchPrediction, result)

    def update(self, batch_id: str, **fields: Any) -> None:
        """Change fields other than the status (the rows done) of an existing record."""
        key = batch_key(batch_id)
        if self.redis.exists(key):
            self.redis.hset(key, mapping=_encode({**fields, "updated_at": utc_now()}))

    def request_cancel(self, batch_id: str) -> BatchPrediction:
        """A queued one is cancelled at once; a running one stops after its current chunk."""
        batch = self.get(batch_id)
        if batch["status"] == "queued":
            with contextlib.suppress(Conflict):
                return self.transition(batch_id, "cancelled", reason="cancelled", message=CANCELLED)
            batch = self.get(batch_id)
        if batch["status"] == "running":
            self.redis.set(batch_stop_key(batch_id), "cancel")
            try:
                return self.transition(batch_id, "cancelling")
            except Conflict:
                self.redis.delete(batch_stop_key(batch_id))
                batch = self.get(batch_id)
        if batch["status"] in ("cancelling", "cancelled"):
            return batch
        raise Conflict(
            f"Batch prediction {batch_id} already {batch['status']}; only live ones can be "
            "cancelled."
        )

    def stop_requested(self, batch_id: str) -> bool:
        return self.redis.get(batch_stop_key(batch_id)) == b"cancel"

    def delete(self, batch_id: str) -> None:
        """Remove a finished one's record and folder (its result dataset stays); Conflict while
        it is live."""
        batch = self.get(batch_id)
        if batch["status"] not in TERMINAL:
            raise Conflict(
                f"Batch prediction {batch_id} is {batch['status']}: cancel it before deleting it."
            )
        self.discard(batch)

    def discard(self, batch: BatchPrediction) -> None:
        """Remove the records and the folder (a finished one, or a submit that failed)."""
        folder = self.folder(batch["id"])
        trash = folder.with_name(f".deleted-{batch['id']}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(folder, trash)
        pipe = self.redis.pipeline()
        pipe.delete(
            batch_key(batch["id"]), batch_stop_key(batch["id"]), batch_lease_key(batch["id"])
        )
        pipe.zrem(ALL_BATCHES, batch["id"])
        for status in STATUSES:
            pipe.zrem(batch_status_index(status), batch["id"])
        if batch.get("owner"):
            pipe.zrem(batch_owner_index(cast(str, batch["owner"])), batch["id"])
        pipe.srem(dataset_jobs_key(batch["dataset"]), batch["id"])
        pipe.execute()
        shutil.rmtree(trash, ignore_errors=True)

    def _write_manifest(self, batch_id: str) -> None:
        folder = self.folder(batch_id)
        raw = self.redis.hgetall(batch_key(batch_id))
        if raw and folder.is_dir():
            write_json(folder / "manifest.json", _decode(raw))

    def rebuild_records(self) -> builtins.list[BatchPrediction]:
        """Restore the records Redis lost from the manifests (rows done from `progress.json`);
        returns the queued ones, whose messages went with Redis's data."""
        root = self.data.root / "batches"
        queued = []
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            with contextlib.suppress(NotFound, OSError, orjson.JSONDecodeError, KeyError):
                batch = cast(BatchPrediction, read_json(self.folder(folder.name) / "manifest.json"))
                if self.redis.exists(batch_key(batch["id"])):
                    continue
                done = read_progress(folder)
                batch["rows_done"], batch["attempts"] = done["rows_done"], done["attempts"]
                self._insert(batch, parse_time(batch["created_at"]))
                if batch["status"] == "queued":
                    queued.append(batch)
                elif batch["status"] in LIVE:
                    self.redis.set(REBUILT_GRACE, "1", ex=self.settings.lease_seconds)
        return queued


def _encode(fields: Mapping[str, Any]) -> dict[Any, Any]:
    return {name: orjson.dumps(value) for name, value in fields.items()}


def _decode(raw: Mapping[bytes | str, bytes | str]) -> BatchPrediction:
    return cast(BatchPrediction, {_text(k): orjson.loads(v) for k, v in raw.items()})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# The durable offset ---------------------------------------------------------------------------


class Committed(TypedDict):
    """`progress.json`: the rows whose outputs are flushed, each attempt's committed range, and
    the result dataset's id once chosen (so a finish that is cut short makes no second one)."""

    rows_done: int
    attempts: list[Attempt]
    result_dataset: str | None


PROGRESS_FILE = "progress.json"


def read_progress(folder: Path) -> Committed:
    """The committed offset, or a fresh start when none was written."""
    try:
        return cast(Committed, read_json(folder / PROGRESS_FILE))
    except FileNotFoundError:
        return Committed(rows_done=0, attempts=[], result_dataset=None)
