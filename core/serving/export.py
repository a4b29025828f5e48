"""Exports of a model: the SavedModel download, and the ONNX file the API serves from.

The SavedModel (`serving_default` with the metadata's input and output names) is built once per
file and cached under the job's `exports/` folder (written atomically, named by the version and
the file's sha256), so a second download is a file read. The caches of all jobs together are an
LRU under a byte cap (FITSERVE_EXPORT_CACHE_BYTES): a hit freshens its file's mtime, and each new
export removes the stalest ones past the cap.

The ONNX file is written by the worker beside the final model (`write_onnx`; checkpoints are not
converted, as converting costs more than saving), its sha256 in the manifest entry; the API loads
it with ONNX Runtime, a call of a few microseconds where TensorFlow's graph call costs a few
hundred (core/serving/cache.py checks it against TensorFlow at load). The API never converts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.serving.signature import serving_outputs, tensor_infos
from core.storage import atomic_file

if TYPE_CHECKING:
    from core.serving.cache import LoadedModel

log = logging.getLogger("fitserve.serving")

EXPORTS = "exports"
# ONNX Runtime 1.17+ runs opset 17 (LayerNormalization among its ops).
ONNX_OPSET = 17
_lock = threading.Lock()


def onnx_path(keras_path: Path) -> Path:
    """Where the ONNX file of a saved `.keras` file lives: beside it, same stem."""
    return keras_path.with_suffix(".onnx")


def write_onnx(model: Any, keras_path: Path) -> dict[str, Any] | None:
    """Convert `model` to ONNX beside `keras_path`, atomically: its `{"sha256", "bytes"}`, or None
    when tf2onnx is missing or cannot convert the model (TensorFlow then serves it)."""
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError:
        return None
    # Its progress lines would land in every job's log at each save.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    inputs, outputs = tensor_infos(model)
    specs = [tf.TensorSpec((None, *i.shape), i.dtype, name=i.name) for i in inputs]
    function = tf.function(
        lambda *tensors: serving_outputs(model, tensors, outputs), input_signature=specs
    )
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=specs, opset=ONNX_OPSET)
        _inline_captured(proto, function.get_concrete_function(*specs), len(specs))
        data = proto.SerializeToString()
    except Exception as error:  # an op tf2onnx cannot map, a model past 2 GB: TensorFlow serves
        log.info("onnx_skipped file=%s error=%r", keras_path.name, str(error)[:200])
        return None
    with atomic_file(onnx_path(keras_path)) as handle:
        handle.write(data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _inline_captured(proto: Any, concrete: Any, own_inputs: int) -> None:
    """Constants the traced graph captured (a Normalization layer's mean and variance) are
    graph inputs in tf2onnx's conversion, which no caller feeds: make them initializers."""
    import tensorflow as tf
    from onnx import numpy_helper

    captured = zip(concrete.inputs[own_inputs:], concrete.captured_inputs, strict=True)
    values = {inner.name: outer for inner, outer in captured if inner.dtype != tf.resource}
    for graph_input in list(proto.graph.input):
        if graph_input.name in values:
            proto.graph.input.remove(graph_input)
            array = values[graph_input.name].numpy()
            proto.graph.initializer.append(numpy_helper.from_array(array, graph_input.name))


def savedmodel_path(loaded: LoadedModel) -> Path:
    """Where the export of this loaded version is cached."""
    servable = loaded.servable
    sha = str(servable.entry.get("sha256"))[:16]
    return servable.job_dir / EXPORTS / f"v{servable.version:04d}-{sha}.savedmodel.tar.gz"


def export_savedmodel(loaded: LoadedModel, cache_bytes: int) -> Path:
    """The cached `.tar.gz` of a SavedModel of `loaded`, made now if missing; the caches stay
    under `cache_bytes` together (the new one is kept even when it alone is larger).

    The archive unpacks to `<version>/saved_model.pb, variables/...`, the folder layout
    TensorFlow Serving loads, and its `serving_default` signature takes and returns tensors
    named as `GET /v1/models/<id>/metadata` lists them.
    """
    import keras

    target = savedmodel_path(loaded)
    with _lock:
        if target.is_file():
            with contextlib.suppress(FileNotFoundError):
                os.utime(target)
            return target
        with tempfile.TemporaryDirectory(dir=target.parent.parent) as folder:
            archive = keras.export.ExportArchive()
            archive.track(loaded.model)
            archive.add_endpoint("serving_default", loaded.function)
            archive.write_out(folder, verbose=False)
            with atomic_file(target) as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
                tar.add(folder, arcname=str(loaded.servable.version))
        trim_exports(target.parent.parent.parent, cache_bytes, keep=target)
    return target


def trim_exports(jobs_root: Path, cache_bytes: int, *, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used export caches under `jobs_root` until they hold at most
    `cache_bytes` (never `keep`); the removed paths. A cache is made again when asked for."""
    cached = []
    for path in jobs_root.glob(f"*/{EXPORTS}/*.savedmodel.tar.gz"):
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            cached.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in cached)
    removed = []
    for _, size, path in sorted(cached):
        if total <= cache_bytes:
            break
        if path == keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
        total -= size
    return removed
