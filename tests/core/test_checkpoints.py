"""Checkpoint files: atomic saves with sha256, verification before loading, pruning."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from core.checkpoints import (
    CheckpointCorrupt,
    checkpoint_file,
    history_file,
    is_better,
    load_checkpoint,
    load_history,
    prune_checkpoints,
    save_checkpoint,
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
    entry = save_checkpoint(model, tmp_path, 2, {"loss": 0.5}, {"loss": [0.9, 0.5]})

    path = tmp_path / "checkpoints" / "epoch-0002.keras"
    assert entry["file"] == checkpoint_file(2) == "checkpoints/epoch-0002.keras"
    assert entry["sha256"] == sha256_file(path)
    assert entry["bytes"] == path.stat().st_size
    assert entry["version"] == 2
    assert entry["metrics"] == {"loss": 0.5}
    assert entry["partial"] is False
    assert load_history(tmp_path, entry) == {"loss": [0.9, 0.5]}
    # The model, its ONNX file for serving, its history: no temp file left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "epoch-0002.history.json",
        "epoch-0002.keras",
        "epoch-0002.onnx",
    ]
    onnx = path.with_suffix(".onnx")
    assert entry["onnx"] == {"sha256": sha256_file(onnx), "bytes": onnx.stat().st_size}


def test_load_restores_weights_and_optimizer_state(tmp_path: Path) -> None:
    model = trained_model(epochs=2)
    entry = save_checkpoint(model, tmp_path, 2, {}, {})

    loaded = load_checkpoint(tmp_path, entry)

    assert int(loaded.optimizer.iterations.numpy()) == 8 == int(model.optimizer.iterations.numpy())
    for saved, restored in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, restored)


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    entry = save_checkpoint(trained_model(epochs=1), tmp_path, 1, {}, {})
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

    kept = prune_checkpoints(tmp_path, entries, 2, {"version": 2, "monitor": "loss", "value": 0})

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
