"""Running a batch prediction: one delivery to a worker (lease, attempt, outcome), the scoring
loop over the memory-mapped inputs with its durable offset, and the result dataset.

The worker's task calls `run_batch`; the records and their store are core.batch's.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis

from core import datasets
from core.batch import (
    CANCELLED,
    CLASS,
    CLASS_NAME,
    PROGRESS_FILE,
    Attempt,
    BatchPrediction,
    BatchStore,
    batch_lost_message,
    read_progress,
)
from core.errors import Conflict, FitserveError, NotFound
from core.jobs import TERMINAL
from core.rediskeys import batch_stop_key, shutdown_key
from core.runs import WorkerIdentity, take_lease
from core.settings import Settings
from core.storage import new_id, read_json, utc_now, write_json

log = logging.getLogger("fitserve.worker")


# Running one delivery ---------------------------------------------------------------------------


class BatchControl:
    """What the heartbeat sees of the running batch prediction (`core.runs.LeasedWork`)."""

    def __init__(self, store: BatchStore, batch_id: str, worker: WorkerIdentity) -> None:
        self.job_id = batch_id
        self.store = store
        self.worker = worker
        self.lease_lost = False

    def renew_lease(self) -> bool:
        return self.store.leases.renew(self.job_id, self.worker.holder)

    def should_stop(self) -> str | None:
        """ "cancel", "shutdown" (the worker's SIGTERM, or the lease lost), or None."""
        cancel = worker_flag = None
        with contextlib.suppress(redis.RedisError):
            cancel, worker_flag = self.store.redis.mget(
                batch_stop_key(self.job_id), shutdown_key(self.worker.name)
            )
        if cancel == b"cancel":
            return "cancel"
        if worker_flag or self.lease_lost:
            return "shutdown"
        return None


Runner = Callable[[BatchPrediction], Any]
Send = Callable[[BatchPrediction], None]


def run_batch(
    store: BatchStore,
    batch: BatchPrediction,
    worker: WorkerIdentity,
    *,
    load: Runner,
    send: Send,
    on_control: Callable[[BatchControl | None], None] = lambda control: None,
) -> str:
    """One delivery of a batch prediction: lease, attempt, score from the committed offset,
    outcome. A delivery that finds it finished or leased does nothing.

    `load(batch)` gives the loaded model (`core.serving.cache.LoadedModel`); `send` re-enqueues
    it after a shutdown.
    """
    batch_id = batch["id"]
    if batch["status"] in TERMINAL:
        return "finished"
    if not take_lease(store.leases, batch_id, worker):
        return "leased"
    try:
        batch = _start_attempt(store, batch, worker)
        if batch["status"] != "running":
            return batch["status"]
        control = BatchControl(store, batch_id, worker)
        on_control(control)
        return _score_and_record(store, batch, control, load, send)
    finally:
        on_control(None)
        store.leases.release(batch_id, worker.holder)


def _start_attempt(
    store: BatchStore, batch: BatchPrediction, worker: WorkerIdentity
) -> BatchPrediction:
    batch_id = batch["id"]
    if batch["status"] == "cancelling":
        return store.transition(batch_id, "cancelled", reason="cancelled", message=CANCELLED)
    attempt = batch["attempt"] + 1
    if attempt > store.settings.max_attempts:
        message = batch_lost_message(batch["attempt"], store.settings.max_attempts)
        return store.transition(batch_id, "failed", reason="worker_lost", message=message)
    done = read_progress(store.folder(batch_id))
    return store.transition(
        batch_id,
        "running",
        attempt=attempt,
        worker=worker.name,
        started_at=batch.get("started_at") or utc_now(),
        rows_done=done["rows_done"],
        attempts=done["attempts"],
    )


def _score_and_record(
    store: BatchStore, batch: BatchPrediction, control: BatchControl, load: Runner, send: Send
) -> str:
    batch_id = batch["id"]
    try:
        outcome = score(store, batch, load(batch), control)
        if outcome == "done":
            result = finish(store, batch)
            store.transition(batch_id, "succeeded", result_dataset=result, rows_done=batch["rows"])
            return "succeeded"
    except FitserveError as error:
        _finish_failed(store, batch_id, error.code, error.detail)
        return "failed"
    except Exception as error:
        message = f"Unexpected error: {type(error).__name__}: {error}"
        _finish_failed(store, batch_id, "internal", message)
        raise
    if outcome == "cancel":
        shutil.rmtree(store.folder(batch_id) / "outputs", ignore_errors=True)
        with contextlib.suppress(Conflict):
            store.transition(batch_id, "cancelled", reason="cancelled", message=CANCELLED)
        return "cancelled"
    if control.lease_lost:
        return "lease_lost"
    try:
        queued = store.transition(batch_id, "queued")
    except Conflict:
        store.transition(batch_id, "cancelled", reason="cancelled", message=CANCELLED)
        return "cancelled"
    store.leases.release(batch_id, control.worker.holder)
    send(queued)
    return "requeued"


def _finish_failed(store: BatchStore, batch_id: str, reason: str, message: str) -> None:
    with contextlib.suppress(Conflict):
        store.transition(batch_id, "failed", reason=reason, message=message)


def chunk_rows(batch_size: int, settings: Settings) -> int:
    """Rows scored between two commits: whole batches, at least `batch_predict_chunk_rows`."""
    return math.ceil(settings.batch_predict_chunk_rows / batch_size) * batch_size


def score(store: BatchStore, batch: BatchPrediction, loaded: Any, control: Any) -> str:
    """Score the rows after the committed offset, committing after every chunk; "done",
    "cancel" or "shutdown" (stopped after a commit)."""
    folder = store.folder(batch["id"])
    done = read_progress(folder)
    start, rows, size = done["rows_done"], batch["rows"], batch["batch_size"]
    arrays = [
        datasets.open_array(store.data, batch["dataset"], batch["inputs"][info.name])
        for info in loaded.inputs
    ]
    with _outputs(folder, loaded, batch, fresh=start == 0) as outputs:
        attempt = Attempt(attempt=batch["attempt"], start=start, stop=start)
        done["attempts"].append(attempt)
        step = chunk_rows(size, store.settings)
        for first in range(start, rows, step):
            stop = control.should_stop()
            if stop is not None:
                return stop
            last = min(first + step, rows)
            for low in range(first, last, size):
                high = min(low + size, last)
                inputs = [
                    np.asarray(array[low:high], dtype=info.dtype)
                    for array, info in zip(arrays, loaded.inputs, strict=True)
                ]
                outputs.write(low, high, loaded.tensorflow_forward(inputs))
            outputs.flush()
            attempt["stop"] = done["rows_done"] = last
            write_json(folder / PROGRESS_FILE, done)
            with contextlib.suppress(redis.RedisError):
                store.update(batch["id"], rows_done=last, attempts=done["attempts"])
    return "done"


class _Outputs:
    """The preallocated output files of one batch prediction, memory-mapped for writing."""

    def __init__(self, folder: Path, loaded: Any, batch: BatchPrediction, fresh: bool) -> None:
        self.folder = folder / "outputs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.classes = np.array(batch["classes"]) if batch.get("classes") else None
        self.files: dict[str, Path] = {}
        self.maps: dict[str, np.ndarray] = {}
        rows = batch["rows"]
        for info in loaded.outputs:
            shape = (rows, *(0 if dim is None else dim for dim in info.shape))
            self._open(info.name, shape, np.dtype(info.dtype), fresh)
        self.classify = batch.get("classify") and len(loaded.outputs) == 1
        if self.classify:
            self._open(CLASS, (rows,), np.dtype("int64"), fresh)
            if self.classes is not None:
                self._open(CLASS_NAME, (rows,), unicode_dtype(batch["classes"] or []), fresh)
        self.first = loaded.outputs[0].name
        names = {name: path.name for name, path in self.files.items()}
        write_json(self.folder / "names.json", names)

    def _open(self, name: str, shape: tuple, dtype: np.dtype, fresh: bool) -> None:
        path = self.folder / f"a{len(self.files)}.npy"
        if fresh or not path.exists():
            self.maps[name] = np.lib.format.open_memmap(path, "w+", dtype, shape)
        else:
            self.maps[name] = np.load(path, mmap_mode="r+", allow_pickle=False)
        self.files[name] = path

    def write(self, low: int, high: int, outputs: Mapping[str, np.ndarray]) -> None:
        for name, values in outputs.items():
            self.maps[name][low:high] = values
        if self.classify:
            ids = np.argmax(outputs[self.first].reshape(high - low, -1), axis=1)
            self.maps[CLASS][low:high] = ids
            if self.classes is not None:
                known = ids < len(self.classes)
                names = np.where(known, self.classes[np.minimum(ids, len(self.classes) - 1)], "")
                self.maps[CLASS_NAME][low:high] = names

    def flush(self) -> None:
        for array in self.maps.values():
            cast(np.memmap, array).flush()


@contextlib.contextmanager
def _outputs(folder: Path, loaded: Any, batch: BatchPrediction, fresh: bool) -> Iterator[_Outputs]:
    outputs = _Outputs(folder, loaded, batch, fresh)
    try:
        yield outputs
    finally:
        outputs.maps.clear()


def unicode_dtype(names: builtins.list[str]) -> np.dtype:
    """A fixed-width unicode dtype for `names` (np.load reads it with allow_pickle=False)."""
    return np.dtype(f"<U{max((len(name) for name in names), default=1)}")


def finish(store: BatchStore, batch: BatchPrediction) -> str:
    """Make the result dataset (once: its id is committed first) and drop the outputs."""
    folder = store.folder(batch["id"])
    done = read_progress(folder)
    result = done.get("result_dataset")
    if result is None:
        result = new_id()
        write_json(folder / PROGRESS_FILE, {**done, "result_dataset": result})
    with contextlib.suppress(NotFound):
        datasets.load_manifest(store.data, result)
        shutil.rmtree(folder / "outputs", ignore_errors=True)
        return result
    names = read_json(folder / "outputs" / "names.json")
    files = {name: folder / "outputs" / file for name, file in names.items()}
    origin = {
        "filename": None,
        "format": "batch_prediction",
        "batch_prediction": batch["id"],
        "model": batch["model"],
        "version": batch["version"],
        "dataset": batch["dataset"],
        "sha256": None,
    }
    datasets.store_files(
        store.data, result, files, origin=origin, owner=batch["owner"], classes=_classes(batch)
    )
    shutil.rmtree(folder / "outputs", ignore_errors=True)
    log.info("batch_result batch=%s dataset=%s", batch["id"], result)
    return result


def _classes(batch: BatchPrediction) -> dict[str, builtins.list[str]]:
    classes = batch.get("classes")
    return {CLASS: classes} if batch.get("classify") and classes else {}
