"""train_job on tiny data: the files it leaves, what it tells its owner, how it stops and fails."""

from __future__ import annotations

import contextlib
import errno
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from core.checkpoints import load_checkpoint, verify_checkpoint
from core.datasets import load_manifest, store_upload
from core.grammar import parse_job_request
from core.settings import Settings
from core.storage import DataDir, new_id, read_json, sha256_file
from core.training import TrainingFailed, describe_failure, train_job

FEATURES, CLASSES, ROWS, BATCH = 8, 3, 96, 16  # 72 training rows after the validation split


class RecordingControl:
    """The owner's side of a job, recorded: the boundary train_job talks to."""

    def __init__(self, stop: str | None = None) -> None:
        self.job_id = new_id()
        self.stop = stop
        self.progress: list[dict] = []
        self.epochs: list[tuple[int, dict]] = []
        self.saves: list[tuple[list[dict], dict | None]] = []
        self.events: list[tuple[str, dict]] = []

    def report_progress(self, progress: dict) -> None:
        self.progress.append(progress)

    def report_epoch(self, epoch: int, metrics: dict) -> None:
        self.epochs.append((epoch, metrics))

    def record_checkpoints(self, checkpoints: list[dict], best: dict | None) -> None:
        self.saves.append((checkpoints, best))

    def event(self, kind: str, **fields: object) -> None:
        self.events.append((kind, fields))

    def should_stop(self) -> str | None:
        return self.stop


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def data(settings: Settings) -> DataDir:
    folder = DataDir(settings.data_dir)
    folder.ensure()
    return folder


def store(data: DataDir, settings: Settings, tmp_path: Path, **arrays: np.ndarray) -> str:
    """A dataset stored as the API stores an .npz upload; returns its id."""
    source = tmp_path / f"{new_id()}.npz"
    np.savez(source, **arrays)
    dataset_id = new_id()
    store_upload(data, dataset_id, source, settings=settings, owner=None, filename="blobs.npz")
    return dataset_id


def blobs(rows: int = ROWS, features: int = FEATURES, seed: int = 0) -> dict[str, np.ndarray]:
    """Separable clusters: one centre per class plus a little noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % CLASSES
    centres = rng.normal(scale=3.0, size=(CLASSES, features))
    x = centres[y] + rng.normal(size=(rows, features))
    return {"x": x.astype("float32"), "y": y.astype("float32")}


@pytest.fixture
def dataset(data: DataDir, settings: Settings, tmp_path: Path) -> str:
    return store(data, settings, tmp_path, **blobs())


def make_spec(
    data: DataDir,
    settings: Settings,
    dataset: str,
    *,
    epochs: int = 3,
    learning_rate: float = 0.1,
    keep: int = 2,
    callbacks: list | None = None,
) -> dict:
    """The normalized spec of a small MLP request with validation and test data."""
    request = {
        "seed": 3,
        "model": {
            "input_shape": [FEATURES],
            "layers": [
                {"class_name": "Dense", "config": {"units": 16, "activation": "relu"}},
                {"class_name": "Dense", "config": {"units": CLASSES, "activation": "softmax"}},
            ],
        },
        "compile": {
            "optimizer": {"class_name": "SGD", "config": {"learning_rate": learning_rate}},
            "loss": "categorical_crossentropy",
            "metrics": ["accuracy"],
        },
        "fit": {
            "batch_size": BATCH,
            "epochs": epochs,
            "validation_split": 0.25,
            "callbacks": callbacks or [],
        },
        "data": {
            "dataset": dataset,
            "x": "x",
            "y": "y",
            "preprocess": {"y": {"one_hot": CLASSES}},
            "test": {"dataset": dataset, "x": "x", "y": "y"},
        },
        "checkpoint": {"keep": keep},
    }
    return parse_job_request(
        request, settings=settings, manifest_of=lambda found: load_manifest(data, found)
    )


class Trainer:
    """train_job on this test's data folder, into one job folder."""

    def __init__(self, tmp_path: Path, data: DataDir, settings: Settings) -> None:
        self.job_dir = tmp_path / "job"
        self.data = data
        self.settings = settings

    def run(self, spec: dict, control: RecordingControl | None = None, **options) -> dict:
        settings = self.settings.with_overrides(**options.pop("settings", {}))
        control = control or RecordingControl()
        return train_job(self.job_dir, spec, self.data, settings, control, **options)


@pytest.fixture
def trainer(tmp_path: Path, data: DataDir, settings: Settings) -> Trainer:
    return Trainer(tmp_path, data, settings)


@pytest.fixture
def spec(data: DataDir, settings: Settings, dataset: str):
    return lambda **options: make_spec(data, settings, dataset, **options)


def test_job_trains_and_leaves_its_files(trainer: Trainer, spec) -> None:
    control = RecordingControl()
    result = trainer.run(spec(epochs=4, keep=2), control, resume=None)
    job_dir = trainer.job_dir

    assert result["status"] == "succeeded"
    assert result["epoch"] == 4
    assert all(len(values) == 4 for values in result["history"].values())
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(result["history"])
    assert result["metrics"]["val_accuracy"] >= 0.9
    assert set(result["test_metrics"]) >= {"loss", "accuracy"}
    assert result["test_metrics"]["accuracy"] >= 0.9
    assert result["device"]["devices"]
    final = result["final"]
    assert final["version"] == 4
    assert final["sha256"] == sha256_file(job_dir / "model.keras")
    assert read_json(job_dir / "history.json") == result["history"]
    assert list((job_dir / "tensorboard" / "validation").glob("events.out.tfevents.*"))
    log = (job_dir / "train.log").read_text()
    assert f"job={control.job_id}" in log
    assert "epoch=4/4" in log
    assert "succeeded" in log

    # The owner heard of every epoch, each after its checkpoint, and of the kept list.
    assert [epoch for epoch, _ in control.epochs] == [1, 2, 3, 4]
    assert len(control.saves) == 4
    kept, best = control.saves[-1]
    versions = [entry["version"] for entry in kept]
    assert versions == sorted({3, 4, best["version"]})
    assert best["monitor"] == "val_loss"
    assert best["value"] == min(result["history"]["val_loss"])
    on_disk = sorted(path.name for path in (job_dir / "checkpoints").glob("*.keras"))
    assert on_disk == [f"epoch-{v:04d}.keras" for v in versions]
    for entry in kept:
        verify_checkpoint(job_dir, entry)
    epoch_ends = [p for p in control.progress if p["completed"] == p["epoch"]]
    assert [p["epoch"] for p in epoch_ends] == [1, 2, 3, 4]
    assert epoch_ends[-1]["fraction"] == 1.0
    assert ("stopped", {"reason": "completed", "epoch": 4, "best_epoch": best["version"],
                        "monitor": "val_loss"}) in control.events  # fmt: skip
    assert result["stop"]["reason"] == "completed"
    assert final["epoch"] == 4
    assert final["metrics"] == {name: values[-1] for name, values in result["history"].items()}


def test_early_stopped_versions_hold_their_epochs_and_final_holds_the_best(
    trainer: Trainer, data: DataDir, settings: Settings, tmp_path: Path
) -> None:
    # Labels with no relation to x: the model learns the training rows, so val_loss turns up.
    arrays = blobs(seed=5)
    arrays["y"] = np.random.default_rng(5).permutation(arrays["y"])
    dataset = store(data, settings, tmp_path, **arrays)
    early = {
        "class_name": "EarlyStopping",
        "config": {"monitor": "val_loss", "patience": 2, "restore_best_weights": True},
    }
    job = make_spec(data, settings, dataset, epochs=40, keep=40, callbacks=[early])
    control = RecordingControl()
    result = trainer.run(job, control, resume=None)

    val_losses = result["history"]["val_loss"]
    best_epoch = int(np.argmin(val_losses)) + 1
    stop = result["stop"]
    assert stop == {"reason": "early_stopping", "epoch": best_epoch + 2, "best_epoch": best_epoch,
                    "monitor": "val_loss"}  # fmt: skip
    assert result["epoch"] == stop["epoch"] < 40
    assert ("stopped", stop) in control.events
    assert (
        f"stopped reason=early_stopping epoch={stop['epoch']} best_epoch={best_epoch}"
        in (trainer.job_dir / "train.log").read_text()
    )

    # Every version evaluates to the val_loss listed with it: version N holds epoch N's weights.
    split = len(arrays["x"]) - len(arrays["x"]) // 4  # validation_split takes the last quarter
    x_val, y_val = arrays["x"][split:], np.eye(CLASSES)[arrays["y"][split:].astype(int)]
    kept, _ = control.saves[-1]
    assert [entry["version"] for entry in kept] == list(range(1, stop["epoch"] + 1))
    for entry in kept:
        model = load_checkpoint(trainer.job_dir, entry)
        loss = model.evaluate(x_val, y_val, batch_size=BATCH, verbose=0, return_dict=True)["loss"]
        assert loss == pytest.approx(entry["metrics"]["val_loss"], rel=1e-4)

    final = result["final"]
    assert final["epoch"] == final["version"] == best_epoch
    assert final["metrics"]["val_loss"] == val_losses[best_epoch - 1]
    model = load_checkpoint_file(trainer.job_dir / "model.keras")
    loss = model.evaluate(x_val, y_val, batch_size=BATCH, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(val_losses[best_epoch - 1], rel=1e-4)


def test_resume_continues_epochs_optimizer_and_history(trainer: Trainer, spec) -> None:
    before = RecordingControl()
    first = trainer.run(spec(epochs=2), before, resume=None)
    entry = before.saves[-1][0][-1]
    assert entry["version"] == 2

    after = RecordingControl()
    result = trainer.run(spec(epochs=4), after, resume=entry)

    assert result["epoch"] == 4
    assert [epoch for epoch, _ in after.epochs] == [3, 4]
    assert all(len(values) == 4 for values in result["history"].values())
    assert result["history"]["loss"][:2] == first["history"]["loss"]
    steps = 5  # ceil(72 / 16)
    model = load_checkpoint(trainer.job_dir, after.saves[-1][0][-1])
    assert int(model.optimizer.iterations.numpy()) == 4 * steps


def test_cancel_leaves_a_loadable_checkpoint(trainer: Trainer, spec) -> None:
    control = RecordingControl(stop="cancel")
    result = trainer.run(spec(epochs=50), control, resume=None)
    job_dir = trainer.job_dir

    assert result["status"] == "cancelled"
    assert result["final"] is None
    assert not (job_dir / "model.keras").exists()
    [(kept, _)] = control.saves
    assert kept[0]["version"] == 1
    assert kept[0]["partial"] is True
    model = load_checkpoint(job_dir, kept[0])
    assert 1 <= int(model.optimizer.iterations.numpy()) < 5
    stop = {"reason": "cancelled", "epoch": 1, "best_epoch": 1, "monitor": "val_loss"}
    assert result["stop"] == stop
    assert ("stopped", stop) in control.events


def test_shutdown_interrupts_and_the_resume_starts_after_it(trainer: Trainer, spec) -> None:
    stopping = RecordingControl(stop="shutdown")
    first = trainer.run(spec(epochs=3), stopping, resume=None)
    assert first["status"] == "interrupted"
    assert first["stop"] is None
    assert ("interrupted", {"reason": "shutdown", "epoch": 1}) in stopping.events
    entry = stopping.saves[-1][0][-1]

    again = RecordingControl()
    result = trainer.run(spec(epochs=3), again, resume=entry)

    assert result["status"] == "succeeded"
    assert [epoch for epoch, _ in again.epochs] == [2, 3]
    assert len(result["history"]["loss"]) == 3


def test_diverging_loss_fails_with_nan_loss(trainer: Trainer, spec) -> None:
    with pytest.raises(TrainingFailed) as caught:
        trainer.run(spec(learning_rate=1e38), resume=None)

    assert caught.value.reason == "nan_loss"
    assert "at epoch 1, batch" in caught.value.message
    log = (trainer.job_dir / "train.log").read_text()
    assert "nan_loss" in log
    assert "Traceback" in log


def test_shape_mismatch_names_the_shapes(trainer: Trainer, spec, data, settings, tmp_path):
    # Valid when submitted; the arrays the worker finds have another shape.
    narrow = spec()
    narrow["data"]["dataset"] = store(data, settings, tmp_path, **blobs(features=5))
    narrow["data"]["test"] = None
    with pytest.raises(TrainingFailed) as caught:
        trainer.run(narrow, resume=None)

    assert caught.value.reason == "invalid_data"
    assert caught.value.message.startswith(
        "Input 'input' expects shape (None, 8) but array 'x' has shape (96, 5)."
    )


def two_output_job(data: DataDir, settings: Settings, tmp_path: Path, **fit: Any) -> dict:
    """The spec of a model with a regression output `score` and a classifier `kind`, weighted
    rows, validation and test data."""
    import keras

    inputs = keras.Input((FEATURES,), name="input")
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    model = keras.Model(
        inputs,
        [
            keras.layers.Dense(1, name="score")(hidden),
            keras.layers.Dense(CLASSES, activation="softmax", name="kind")(hidden),
        ],
    )
    arrays = blobs()
    dataset = store(
        data, settings, tmp_path, **arrays, score=arrays["y"][:, None], w=np.ones(ROWS, "float32")
    )
    request = {
        "model": json.loads(model.to_json()),
        "compile": {
            "optimizer": "adam",
            "loss": {"score": "mse", "kind": "sparse_categorical_crossentropy"},
            "metrics": {"kind": ["accuracy"]},
        },
        "fit": {"batch_size": BATCH, "epochs": 1, "validation_split": 0.25, **fit},
        "data": {
            "dataset": dataset,
            "x": "x",
            "y": {"score": "score", "kind": "y"},
            "sample_weight": "w",
            "test": {"dataset": dataset},
        },
    }
    return parse_job_request(
        request, settings=settings, manifest_of=lambda found: load_manifest(data, found)
    )


def test_sample_weights_reach_every_output_of_a_two_output_model(
    trainer: Trainer, data: DataDir, settings: Settings, tmp_path: Path
) -> None:
    result = trainer.run(two_output_job(data, settings, tmp_path), resume=None)
    assert result["status"] == "succeeded"
    assert {"score_loss", "kind_loss"} <= set(result["test_metrics"])


def test_early_stopping_on_an_output_metric(
    trainer: Trainer, data: DataDir, settings: Settings, tmp_path: Path
) -> None:
    # Keras's own mode "auto" finds no metric of this name among the model's (it is an output's)
    # and raises at the first epoch; the parse settles min or max instead.
    early = {"class_name": "EarlyStopping", "config": {"monitor": "val_kind_accuracy"}}
    job = two_output_job(data, settings, tmp_path, epochs=2, callbacks=[early])
    assert job["fit"]["callbacks"][0]["config"]["mode"] == "max"
    assert trainer.run(job, resume=None)["status"] == "succeeded"


def test_time_limit_fails_with_timeout_after_a_checkpoint(trainer: Trainer, spec) -> None:
    control = RecordingControl()
    with pytest.raises(TrainingFailed) as caught:
        trainer.run(spec(), control, resume=None, settings={"max_job_seconds": 0})

    assert caught.value.reason == "timeout"
    assert caught.value.stop["reason"] == "time_limit"
    assert "FITSERVE_MAX_JOB_SECONDS" in caught.value.message
    [(kept, _)] = control.saves
    verify_checkpoint(trainer.job_dir, kept[0])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk the test can fill (mounting needs root; skipped, saying so, if not)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


class FillingControl(RecordingControl):
    """Fills the job's disk once the first checkpoint is recorded."""

    def __init__(self, disk: Path) -> None:
        super().__init__()
        self.disk = disk

    def record_checkpoints(self, checkpoints: list[dict], best: dict | None) -> None:
        super().record_checkpoints(checkpoints, best)
        if len(self.saves) == 1:
            with contextlib.suppress(OSError), open(self.disk / "ballast", "wb") as ballast:
                while True:
                    ballast.write(bytes(1 << 16))


def test_full_disk_fails_with_no_space_and_keeps_the_last_checkpoint(
    trainer: Trainer, spec, small_disk: Path
) -> None:
    trainer.job_dir = small_disk / "job"
    control = FillingControl(small_disk)
    with pytest.raises(TrainingFailed) as caught:
        trainer.run(spec(epochs=3), control, resume=None)

    assert caught.value.reason == "no_space"
    [(kept, _)] = control.saves
    verify_checkpoint(trainer.job_dir, kept[0])
    assert [p.name for p in (trainer.job_dir / "checkpoints").glob("*.keras")] == [
        "epoch-0001.keras"
    ]  # and no temp file left behind


@pytest.mark.parametrize(
    ("error", "reason", "words"),
    [
        (MemoryError(), "resource_exhausted", "batch_size"),
        (
            tf.errors.ResourceExhaustedError(None, None, "OOM when allocating"),
            "resource_exhausted",
            "OOM when allocating",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), "no_space", "intact"),
        (
            ValueError("Arguments `target` and `output` must have the same shape"),
            "invalid_data",
            "same shape",
        ),
        (RuntimeError("boom"), "internal", "RuntimeError: boom"),
    ],
)
def test_every_exception_has_a_reason(error: Exception, reason: str, words: str) -> None:
    failed = describe_failure(error)
    assert failed.reason == reason
    assert words in failed.message


def load_checkpoint_file(path: Path) -> Any:
    """A model file the test itself wrote (the final model), loaded as serving loads it."""
    import keras

    return keras.saving.load_model(path, safe_mode=True)
