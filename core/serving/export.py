"""The SavedModel download: `serving_default` with the metadata's input and output names.

Built once per file and cached under the job's `exports/` folder (written atomically, named by
the version and the file's sha256), so a second download is a file read.
"""

from __future__ import annotations

import tarfile
import tempfile
import threading
from pathlib import Path

from core.serving.cache import LoadedModel
from core.storage import atomic_file

EXPORTS = "exports"
_lock = threading.Lock()


def savedmodel_path(loaded: LoadedModel) -> Path:
    """Where the export of this loaded version is cached."""
    servable = loaded.servable
    sha = str(servable.entry.get("sha256"))[:16]
    return servable.job_dir / EXPORTS / f"v{servable.version:04d}-{sha}.savedmodel.tar.gz"


def export_savedmodel(loaded: LoadedModel) -> Path:
    """The cached `.tar.gz` of a SavedModel of `loaded`, made now if missing.

    The archive unpacks to `<version>/saved_model.pb, variables/...`, the folder layout
    TensorFlow Serving loads, and its `serving_default` signature takes and returns tensors
    named as `GET /v1/models/<id>/metadata` lists them.
    """
    import keras

    target = savedmodel_path(loaded)
    with _lock:
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent.parent) as folder:
            archive = keras.export.ExportArchive()
            archive.track(loaded.model)
            archive.add_endpoint("serving_default", loaded.function)
            archive.write_out(folder, verbose=False)
            with atomic_file(target) as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
                tar.add(folder, arcname=str(loaded.servable.version))
    return target
