"""Loaded models: a verified file, a compiled forward function, a batcher, in a per-process LRU.

Models load lazily in each API process from files a manifest lists, after their sha256 check,
with `safe_mode` on (they are our own files, never a user's). Each gets a `tf.function` with a
`[None, ...]` input signature, traced and warmed on load: a call is then one graph execution,
thread-safe, with none of `Model.predict`'s per-call overhead. A request runs through
`LoadedModel.run`: the ids its Embedding layers will receive are checked, then it shares a
batched pass, within the predict timeout.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from core.checkpoints import CheckpointCorrupt
from core.errors import FieldError, InvalidRequest, PayloadTooLarge, TimedOut
from core.metrics import MODELS_LOADED, observe_predict_rows
from core.serving.batcher import Batcher
from core.serving.catalog import Servable
from core.serving.signature import Batch, id_ranges, tensor_infos
from core.settings import Settings

log = logging.getLogger("fitserve.serving")

# Lengths tried for unknown dimensions when warming a model up (a Conv1D needs its kernel's).
WARM_LENGTHS = (1, 16, 256)
# Lines of a TensorFlow op error that tell where it happened, not what happened.
_OP_TRACE = ("Graph execution error", "Detected at node", "[[")
# Threads running forward passes, per process: above gunicorn's threads, so a request waits for
# one only when earlier passes have overrun their requests' timeout.
PASS_THREADS = 32


class LoadedModel:
    """A model ready to serve: metadata, the compiled forward function and its batcher."""

    def __init__(
        self, servable: Servable, model: Any, settings: Settings, passes: Executor
    ) -> None:
        import tensorflow as tf

        self.servable = servable
        self.model = model
        self.inputs, self.outputs = tensor_infos(model)
        self.nbytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
        self.specs = [
            tf.TensorSpec((None, *info.shape), info.dtype, name=info.name) for info in self.inputs
        ]
        self.function = tf.function(self.call, input_signature=self.specs, reduce_retracing=True)
        self._concrete = self.function.get_concrete_function()
        self.id_ranges, probe = id_ranges(model)
        self._ids = (
            None
            if probe is None
            else tf.function(
                lambda *inputs: tf.nest.flatten(probe(list(inputs), training=False)),
                input_signature=self.specs,
            ).get_concrete_function()
        )
        self._passes = passes
        self._timeout = settings.predict_timeout_seconds
        self.batcher = (
            Batcher(
                self.forward,
                settings.predict_max_batch_rows,
                settings.predict_max_latency_ms / 1000,
            )
            if settings.predict_max_batch_rows > 1
            else None
        )

    def call(self, *inputs: Any) -> dict[str, Any]:
        """The graph: the model on its inputs, outputs keyed by name (the export uses it too)."""
        outputs = self.model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
        if isinstance(outputs, dict):
            return {info.name: outputs[info.name] for info in self.outputs}
        if not isinstance(outputs, list | tuple):
            outputs = [outputs]
        return {info.name: tensor for info, tensor in zip(self.outputs, outputs, strict=True)}

    def forward(self, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """One forward pass on checked arrays (in input order); no batching."""
        observe_predict_rows(len(inputs[0]))
        outputs = self._concrete(*inputs)
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def run_batched(self, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """A forward pass shared with whatever concurrent requests the batcher gathers.

        With `predict_max_batch_rows` at 1, batching is off: each request runs its own pass,
        concurrently with the others.
        """
        if self.batcher is None:
            return self.forward(inputs)
        return self.batcher.submit(inputs)

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        """Serve one request: its ids checked, a batched pass within the predict timeout.

        The pass runs on the cache's pass threads, so a pass that overruns answers 504 while it
        finishes in the background. An error TensorFlow raises because of the values (a shape
        a layer cannot take, an index out of range) is a 422 at the request's inputs.
        """
        import tensorflow as tf

        future = self._passes.submit(self._checked_pass, batch)
        try:
            return future.result(self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning(
                "predict_timeout job=%s version=%s seconds=%s",
                self.servable.job_id,
                self.servable.version,
                self._timeout,
            )
            raise TimedOut(
                f"The forward pass of model {self.servable.job_id} version "
                f"{self.servable.version} ran past {self._timeout:g} s; send fewer rows or "
                "shorter sequences."
            ) from None
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
            raise self._refused(batch, error) from None
        except tf.errors.ResourceExhaustedError:
            raise PayloadTooLarge(
                "The forward pass ran out of memory on this request; send fewer rows or "
                "shorter sequences."
            ) from None

    def _checked_pass(self, batch: Batch) -> dict[str, np.ndarray]:
        self.check_ids(batch)
        return self.run_batched(batch.arrays)

    def check_ids(self, batch: Batch) -> None:
        """Every Embedding gets ids in its range (computed by a pass of the layers in front)."""
        if self._ids is None:
            return
        ids = self._ids(*batch.arrays)
        for id_range, tensor in zip(self.id_ranges, ids, strict=True):
            id_range.check(tensor.numpy(), batch, self.inputs[id_range.source].name)

    def _refused(self, batch: Batch, error: Any) -> InvalidRequest:
        reason = _op_reason(str(error.message))
        message = f"The model cannot run on these inputs: {reason}"
        log.info("predict_refused job=%s reason=%s", self.servable.job_id, reason)
        expected = f"inputs this model can take: {[i.batch_shape() for i in self.inputs]}"
        return InvalidRequest(
            message, errors=[FieldError(batch.locate(0, None), message, expected)]
        )

    def warm(self) -> None:
        """Run once on zeros, so the first request does not pay for TensorFlow's first call.

        Unknown dimensions (a variable-length sequence) take the first length the model can
        run on; a model that takes none of them is served cold.
        """
        import tensorflow as tf

        for length in WARM_LENGTHS:
            zeros = [
                np.zeros((1, *(length if dim is None else dim for dim in info.shape)), info.dtype)
                for info in self.inputs
            ]
            try:
                self.forward(zeros)
                return
            except tf.errors.InvalidArgumentError:
                if all(None not in info.shape for info in self.inputs):
                    raise
        log.info("model_cold job=%s reason=no_warm_length", self.servable.job_id)


def _op_reason(message: str) -> str:
    """What a TensorFlow op error says went wrong, without the graph's trace around it."""
    for line in message.splitlines():
        if line and not line[0].isspace() and not line.startswith(_OP_TRACE):
            return re.sub(r"\s*\[Op:.*$", "", line)[:300]
    return "a TensorFlow op refused them"


def load_servable(servable: Servable, settings: Settings, passes: Executor) -> LoadedModel:
    """Verify, load, compile and warm one version; a bad file is a 503 naming it."""
    import keras

    path = servable.verified_path()
    started = time.monotonic()
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
        loaded = LoadedModel(servable, model, settings, passes)
        loaded.warm()
    except Exception as error:
        log.exception("model_load_failed job=%s version=%s", servable.job_id, servable.version)
        raise CheckpointCorrupt(
            f"Version {servable.version} of model {servable.job_id} could not be loaded "
            f"from {servable.entry.get('file')}: {type(error).__name__}."
        ) from None
    log.info(
        "model_loaded job=%s version=%s bytes=%s seconds=%.2f",
        servable.job_id,
        servable.version,
        loaded.nbytes,
        time.monotonic() - started,
    )
    return loaded


class ModelCache:
    """Loaded models of this process, least recently used evicted past a count or byte bound.

    One load per file at a time: concurrent requests for a model being loaded wait for that
    load. `get_newest` keeps answering from an older loaded version of the same job while a
    newer one loads in the background, and switches once the new one is warm.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._models: collections.OrderedDict[tuple, LoadedModel] = collections.OrderedDict()
        self._loading: dict[tuple, Future[LoadedModel]] = {}
        # Files whose last load failed: asked for again, they load in the request (and fail
        # with a 503) rather than leaving an older version answering in their place.
        self._failed: set[tuple] = set()
        # Forward passes run here, so a request can stop waiting for one (504) past the timeout.
        self._passes = ThreadPoolExecutor(PASS_THREADS, thread_name_prefix="forward")

    def get(self, servable: Servable) -> LoadedModel:
        """The loaded model of `servable`, loading it now if needed."""
        with self._lock:
            loaded = self._touch(servable.key)
            if loaded is not None:
                return loaded
            future, owner = self._loading_future(servable.key)
        if owner:
            self._load(servable, future)
        return future.result()

    def get_newest(self, servable: Servable) -> LoadedModel:
        """Like `get`, but while `servable` loads, an older loaded version of its job answers."""
        with self._lock:
            loaded = self._touch(servable.key)
            if loaded is not None:
                return loaded
            future, owner = self._loading_future(servable.key)
            older = [
                model
                for key, model in self._models.items()
                if key[0] == servable.job_id and key[1] < servable.version
            ]
            if older and servable.key not in self._failed:
                if owner:
                    threading.Thread(
                        target=self._load, args=(servable, future), daemon=True
                    ).start()
                return max(older, key=lambda model: model.servable.version)
        if owner:
            self._load(servable, future)
        return future.result()

    def loaded(self) -> list[tuple[str, int]]:
        """(job id, version) of the models held, least recently used first."""
        with self._lock:
            return [(key[0], key[1]) for key in self._models]

    def _touch(self, key: tuple) -> LoadedModel | None:
        loaded = self._models.get(key)
        if loaded is not None:
            self._models.move_to_end(key)
        return loaded

    def _loading_future(self, key: tuple) -> tuple[Future[LoadedModel], bool]:
        """The future of the load in progress for `key`, and whether the caller must run it."""
        future = self._loading.get(key)
        if future is not None:
            return future, False
        future = Future()
        self._loading[key] = future
        return future, True

    def _load(self, servable: Servable, future: Future[LoadedModel]) -> None:
        try:
            loaded = load_servable(servable, self._settings, self._passes)
        except BaseException as error:
            with self._lock:
                self._loading.pop(servable.key, None)
                self._failed.add(servable.key)
            future.set_exception(error)
            return
        with self._lock:
            self._loading.pop(servable.key, None)
            self._failed.discard(servable.key)
            self._models[servable.key] = loaded
            self._evict()
            MODELS_LOADED.set(len(self._models))
        future.set_result(loaded)

    def _evict(self) -> None:
        """Drop the least recently used models past the bounds; the newest always stays."""
        while len(self._models) > 1 and (
            len(self._models) > self._settings.model_cache_size
            or sum(model.nbytes for model in self._models.values())
            > self._settings.model_cache_bytes
        ):
            key, _ = self._models.popitem(last=False)
            log.info("model_evicted job=%s version=%s", key[0], key[1])
