"""Synthetic classification data shaped like MNIST: 10 Gaussian blobs in 784 features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FEATURES = 784
CLASSES = 10


def make_blobs(
    rows: int, *, features: int = FEATURES, classes: int = CLASSES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`x` (float32, rows x features) and integer labels `y`: one noisy blob per class.

    The centres are close enough in each feature that no single pixel separates the classes,
    so a model has to learn, yet the seed MLP reaches a high accuracy in a few epochs.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.2, size=(classes, features))
    y = rng.integers(0, classes, size=rows)
    x = centres[y] + rng.normal(scale=1.0, size=(rows, features))
    return x.astype("float32"), y.astype("int64")


def save_blobs(path: Path, rows: int, *, seed: int = 0) -> Path:
    """An .npz with arrays `x` and `y`, as a client uploads it."""
    x, y = make_blobs(rows, seed=seed)
    np.savez(path, x=x, y=y)
    return path
