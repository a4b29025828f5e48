"""Checkpoint files: atomic saves with sha256, verification before loading, pruning, and the
background writer (one write at a time, waited for, a failed write leaving the last one valid)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from core.checkpoints import (
    CheckpointCorrupt,
    CheckpointWriter,
    ModelCopy,
    Snapshot,
    checkpoint_file,
    delete_checkpoint_files,
    history_file,
    is_better,
    load_checkpoint,
    load_history,
    save_checkpoint,
    select_kept,
    take_snapshot,
    verify_checkpoint,
)
from core.storage import sha256_file


def trained_model(epochs: int = 2) -> keras.Model:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(1).normal(size=(32, 4)).astype("float32")
    model.fit(x, np.arange(32) % 3, batch_size=8, epochs=epochs, verbose=0)
    return model


def test_save_writes_entry_file_and_history(tmp_path: Path) -> None:
    model = trained_model()
    snapshot = take_snapshot(model, 2, {"loss": 0.5}, {"loss": [0.9, 0.5]})
    entry = save_checkpoint(model, tmp_path, snapshot)

    path = tmp_path / "checkpoints" / "epoch-0002.keras"
    assert entry["file"] == checkpoint_file(2) == "checkpoints/epoch-0002.keras"
    assert entry["sha256"] == sha256_file(path)
    assert entry["bytes"] == path.stat().st_size
    assert entry["version"] == 2
    assert entry["metrics"] == {"loss": 0.5}
    assert entry["partial"] is False
    assert load_history(tmp_path, entry) == {"loss": [0.9, 0.5]}
    # The model and its history (only the final model is converted to ONNX): no temp file.
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "epoch-0002.history.json",
        "epoch-0002.keras",
    ]
    assert "onnx" not in entry


def test_a_copy_loaded_from_a_snapshot_saves_the_model_as_it_was(tmp_path: Path) -> None:
    model = trained_model(epochs=2)
    copy = ModelCopy(model)
    snapshot = take_snapshot(model, 2, {}, {})
    weights = model.get_weights()
    x = np.random.default_rng(2).normal(size=(32, 4)).astype("float32")
    model.fit(x, np.arange(32) % 3, batch_size=8, epochs=1, verbose=0)  # training goes on

    entry = save_checkpoint(copy.load(snapshot), tmp_path, snapshot)
    loaded = load_checkpoint(tmp_path, entry)

    assert int(loaded.optimizer.iterations.numpy()) == 8
    for saved, restored in zip(weights, loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, restored)
    assert json.loads(loaded.to_json()) == json.loads(model.to_json())


def test_load_restores_weights_and_optimizer_state(tmp_path: Path) -> None:
    model = trained_model(epochs=2)
    entry = save_checkpoint(model, tmp_path, take_snapshot(model, 2, {}, {}))

    loaded = load_checkpoint(tmp_path, entry)

    assert int(loaded.optimizer.iterations.numpy()) == 8 == int(model.optimizer.iterations.numpy())
    for saved, restored in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, restored)


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    model = trained_model(epochs=1)
    entry = save_checkpoint(model, tmp_path, take_snapshot(model, 1, {}, {}))
    with open(tmp_path / entry["file"], "ab") as handle:
        handle.write(b"x")

    with pytest.raises(CheckpointCorrupt, match="sha256") as caught:
        load_checkpoint(tmp_path, entry)
    assert caught.value.code == "corrupt_checkpoint"


@pytest.mark.parametrize(
    "file", ["../../etc/passwd", "checkpoints/../job.json", "model.keras", None, 3]
)
def test_entry_must_name_a_checkpoint_file(tmp_path: Path, file: object) -> None:
    with pytest.raises(CheckpointCorrupt, match="names no checkpoint file"):
        verify_checkpoint(tmp_path, {"file": file, "sha256": "0" * 64})


def test_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointCorrupt, match="missing"):
        verify_checkpoint(tmp_path, {"file": checkpoint_file(7), "sha256": "0" * 64})


def test_prune_keeps_last_and_best_and_deletes_the_rest(tmp_path: Path) -> None:
    entries = []
    for version in range(1, 6):
        entry = {"version": version, "file": checkpoint_file(version)}
        onnx = checkpoint_file(version).replace(".keras", ".onnx")
        for relative in (entry["file"], history_file(entry), onnx):
            (tmp_path / relative).parent.mkdir(exist_ok=True)
            (tmp_path / relative).write_bytes(b"")
        entries.append(entry)

    kept, dropped = select_kept(entries, 2, {"version": 2, "monitor": "loss", "value": 0})
    delete_checkpoint_files(tmp_path, dropped)

    assert [entry["version"] for entry in kept] == [2, 4, 5]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        f"epoch-000{v}.{kind}" for v in (2, 4, 5) for kind in ("history.json", "keras", "onnx")
    ]


def test_is_better_by_mode_and_never_for_nan() -> None:
    assert is_better(0.1, None, "min")
    assert is_better(0.1, 0.2, "min")
    assert not is_better(0.3, 0.2, "min")
    assert is_better(0.3, 0.2, "max")
    assert not is_better(float("nan"), None, "min")


def snapshot(version: int) -> Snapshot:
    return Snapshot(version, [], [], {}, {})


def test_the_writer_writes_one_at_a_time_in_order_and_close_waits() -> None:
    written: list[int] = []
    busy = threading.Lock()

    def write(item: Snapshot) -> None:
        assert busy.acquire(blocking=False), "two writes at once"
        time.sleep(0.05)
        written.append(item.version)
        busy.release()

    writer = CheckpointWriter(write)
    for version in (1, 2, 3):
        writer.submit(snapshot(version))
    writer.close()

    assert written == [1, 2, 3]


def test_the_writer_holds_at_most_one_snapshot_waiting() -> None:
    release = threading.Event()
    writer = CheckpointWriter(lambda item: release.wait(5))
    writer.submit(snapshot(1))  # being written
    time.sleep(0.05)
    writer.submit(snapshot(2))  # waiting
    third = threading.Thread(target=writer.submit, args=(snapshot(3),))
    third.start()
    third.join(0.2)
    assert third.is_alive(), "a third snapshot was taken while two were pending"
    release.set()
    third.join(5)
    writer.close()


def test_a_failed_write_is_raised_once_and_later_snapshots_are_not_written() -> None:
    written: list[int] = []

    def write(item: Snapshot) -> None:
        if item.version == 2:
            raise OSError(28, "No space left on device")
        written.append(item.version)

    writer = CheckpointWriter(write)
    writer.submit(snapshot(1))
    writer.submit(snapshot(2))
    writer.submit(snapshot(3))
    with pytest.raises(OSError, match="No space"):
        writer.close()
    writer.close()  # raised once

    assert written == [1]
