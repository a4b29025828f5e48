"""Job folders with real trained models, written exactly as training writes them.

Tiny Keras models are trained one epoch at a time and saved with `core.checkpoints` after each
epoch, beside a manifest per the job contract, so serving tests need no worker. The library is
built once per session and copied into each test's data folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from core.checkpoints import save_checkpoint, save_model_file, take_snapshot
from core.storage import DataDir, new_id, read_json, utc_now, write_json

SINGLE = "single"
MULTI = "multi"
SEQUENCE = "sequence"


def build_single() -> Any:
    """4 -> 8 relu -> 3 softmax, a tiny MLP: one input `input`, one output `output`."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,), name="input")
    hidden = keras.layers.Dense(8, activation="relu", name="dense")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="output")(hidden)
    return keras.Model(inputs, outputs)


def build_multi() -> Any:
    """Two inputs (`image` of 2x3, `meta` of 2) and two outputs (`score` 1, `probs` 3)."""
    import keras

    keras.utils.set_random_seed(2)
    image = keras.Input((2, 3), name="image")
    meta = keras.Input((2,), name="meta")
    flat = keras.layers.Flatten(name="flatten")(image)
    joined = keras.layers.Concatenate(name="concatenate")([flat, meta])
    hidden = keras.layers.Dense(8, activation="relu", name="dense")(joined)
    score = keras.layers.Dense(1, name="score")(hidden)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    return keras.Model([image, meta], [score, probs])


def build_sequence() -> Any:
    """Variable-length sequences of 2 features -> 1 value: a `None` dimension in the input."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, 2), name="input")
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(inputs)
    outputs = keras.layers.Dense(1, name="output")(pooled)
    return keras.Model(inputs, outputs)


def training_data(kind: str) -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    if kind == SINGLE:
        return rng.normal(size=(32, 4)).astype("float32"), rng.random((32, 3)).astype("float32")
    if kind == MULTI:
        x = {
            "image": rng.normal(size=(32, 2, 3)).astype("float32"),
            "meta": rng.normal(size=(32, 2)).astype("float32"),
        }
        return x, [
            rng.normal(size=(32, 1)).astype("float32"),
            rng.random((32, 3)).astype("float32"),
        ]
    return rng.normal(size=(32, 5, 2)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")


BUILDERS = {SINGLE: build_single, MULTI: build_multi, SEQUENCE: build_sequence}


def write_trained_job(
    data: DataDir,
    kind: str,
    *,
    epochs: int = 2,
    name: str | None = None,
    owner: str | None = None,
    final: bool = True,
) -> str:
    """Train a `kind` model for `epochs` epochs, one checkpoint each; return the job id.

    With `final` the job is `succeeded` with `model.keras`; else it is `running`.
    """
    import keras
    import tensorflow as tf

    model = BUILDERS[kind]()
    model.compile(optimizer="adam", loss="mse")
    x, y = training_data(kind)
    job_id = new_id()
    job_dir = data.job(job_id)
    checkpoints, history = [], {"loss": []}
    for epoch in range(1, epochs + 1):
        logs = model.fit(x, y, epochs=epoch, initial_epoch=epoch - 1, batch_size=8, verbose=0)
        loss = float(logs.history["loss"][-1])
        history["loss"].append(loss)
        snapshot = take_snapshot(model, epoch, {"loss": loss}, history)
        checkpoints.append(save_checkpoint(model, job_dir, snapshot))
    manifest = job_manifest(job_id, name=name, owner=owner, status="running", epoch=epochs)
    manifest["checkpoints"] = checkpoints
    manifest["device"] = {
        "devices": ["/device:CPU:0"],
        "gpus": [],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cuda": None,
        "cudnn": None,
    }
    best = min(checkpoints, key=lambda entry: entry["metrics"]["loss"])
    manifest["best"] = {
        "version": best["version"],
        "monitor": "loss",
        "value": best["metrics"]["loss"],
    }
    if final:
        saved = save_model_file(model, job_dir / "model.keras")
        manifest.update(
            status="succeeded",
            finished_at=utc_now(),
            final={"file": "model.keras", **saved, "version": epochs},
        )
    write_job(data, manifest)
    return job_id


def write_model_job(data: DataDir, model: Any, *, name: str | None = None) -> str:
    """A succeeded job whose final model (version 1) is `model` as built, untrained; its id."""
    job_id = new_id()
    saved = save_model_file(model, data.job(job_id) / "model.keras")
    manifest = job_manifest(job_id, name=name, owner=None, status="succeeded", epoch=1)
    manifest.update(finished_at=utc_now(), final={"file": "model.keras", **saved, "version": 1})
    write_job(data, manifest)
    return job_id


def job_manifest(
    job_id: str, *, name: str | None, owner: str | None, status: str, epoch: int = 0
) -> dict:
    """A job manifest per the contract, with no checkpoint yet."""
    now = utc_now()
    return {
        "id": job_id,
        "name": name,
        "owner": owner,
        "status": status,
        "reason": None,
        "message": None,
        "attempt": 1,
        "created_at": now,
        "updated_at": now,
        "started_at": now if status != "queued" else None,
        "finished_at": None,
        "device": None,
        "epoch": epoch,
        "checkpoints": [],
        "best": None,
        "final": None,
        "test_metrics": None,
    }


def write_job(data: DataDir, manifest: dict) -> None:
    """Write `job.json` (a stand-in spec: serving reads only the manifest) and the manifest."""
    job_dir = data.job(manifest["id"])
    write_json(
        job_dir / "job.json",
        {
            "id": manifest["id"],
            "owner": manifest["owner"],
            "created_at": manifest["created_at"],
            "spec": {},
        },
    )
    write_json(job_dir / "manifest.json", manifest)


def keep_labels(
    data: DataDir, job_id: str, classes: list[str] | None, features: list[str] | None
) -> None:
    """Give a job's `job.json` the class and feature names a submit keeps."""
    path = data.job(job_id) / "job.json"
    write_json(path, read_json(path) | {"labels": {"classes": classes, "features": features}})


def model_library(root: Path) -> dict[str, str]:
    """Build (once per session, under `root`) trained jobs of each kind; return their ids.

    `single` (3 epochs, named `tiny`, succeeded), `multi` and `sequence` (succeeded) and
    `running` (2 checkpoints, no final model).
    """
    index = root / "model-library" / "index.json"
    if index.is_file():
        return read_json(index)
    data = DataDir(root / "model-library")
    jobs = {
        SINGLE: write_trained_job(data, SINGLE, epochs=3, name="tiny"),
        MULTI: write_trained_job(data, MULTI, epochs=2),
        SEQUENCE: write_trained_job(data, SEQUENCE, epochs=1),
        "running": write_trained_job(data, SINGLE, epochs=2, final=False, name="tiny-running"),
    }
    write_json(index, jobs)
    return jobs


def copy_job(source: DataDir, target: DataDir, job_id: str) -> Path:
    """Copy a job folder between data folders (tests corrupt their own copy)."""
    return Path(shutil.copytree(source.job(job_id), target.job(job_id)))


def load_version(data: DataDir, job_id: str, version: int | None = None) -> Any:
    """The same file loaded directly with Keras: a checkpoint version, or the final model."""
    import keras

    job_dir = data.job(job_id)
    path = job_dir / (
        "model.keras" if version is None else f"checkpoints/epoch-{version:04d}.keras"
    )
    return keras.saving.load_model(path, compile=False, safe_mode=True)
