"""Loaded models: a verified file, a compiled forward function, a batcher, in a per-process LRU.

Models load lazily in each API process from files a manifest lists, after their sha256 check,
with `safe_mode` on (they are our own files, never a user's). Each gets a `tf.function` with a
`[None, ...]` input signature, traced and warmed on load: a call is then one graph execution,
thread-safe, with none of `Model.predict`'s per-call overhead.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from core.checkpoints import CheckpointCorrupt
from core.metrics import MODELS_LOADED, observe_predict_rows
from core.serving.batcher import Batcher
from core.serving.catalog import Servable
from core.settings import Settings

log = logging.getLogger("fitserve.serving")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """A model input or output: its name, its shape without the batch axis, its dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def batch_shape(self) -> list[int]:
        """The shape as TF Serving and OIP metadata write it: -1 for the batch and unknown dims."""
        return [-1, *(-1 if dim is None else dim for dim in self.shape)]


class LoadedModel:
    """A model ready to serve: metadata, the compiled forward function and its batcher."""

    def __init__(self, servable: Servable, model: Any, settings: Settings) -> None:
        import tensorflow as tf

        self.servable = servable
        self.model = model
        self.inputs = tuple(
            TensorInfo(t.name, tuple(t.shape[1:]), str(t.dtype)) for t in model.inputs
        )
        names = getattr(model, "output_names", None) or [model.layers[-1].name]
        self.outputs = tuple(
            TensorInfo(name, tuple(t.shape[1:]), str(t.dtype))
            for name, t in zip(names, model.outputs, strict=True)
        )
        self.nbytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
        self.specs = [
            tf.TensorSpec((None, *info.shape), info.dtype, name=info.name) for info in self.inputs
        ]
        self.function = tf.function(self.call, input_signature=self.specs, reduce_retracing=True)
        self._concrete = self.function.get_concrete_function()
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

    def warm(self) -> None:
        """Run once on zeros, so the first request does not pay for TensorFlow's first call."""
        self.forward(
            [
                np.zeros((1, *(dim or 1 for dim in info.shape)), dtype=info.dtype)
                for info in self.inputs
            ]
        )


def load_servable(servable: Servable, settings: Settings) -> LoadedModel:
    """Verify, load, compile and warm one version; a bad file is a 503 naming it."""
    import keras

    path = servable.verified_path()
    started = time.monotonic()
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
        loaded = LoadedModel(servable, model, settings)
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
            loaded = load_servable(servable, self._settings)
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
