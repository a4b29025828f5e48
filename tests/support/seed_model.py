"""The Keras docs' seed model as a job request and as a Keras model, and MNIST-shaped data for it.

The data are 10 Gaussian blobs in 784 features; `bench/keras_script.py` is the same model as a
bare Keras script, so a job and the script can be compared on the same data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def seed_request(dataset_id: str, *, epochs: int) -> dict:
    """DESIGN.md's request: Dense(32, he_normal), relu, Dense(10), softmax with RMSprop."""
    return {
        "name": "seed-mlp",
        "seed": 42,
        "model": {
            "input_shape": [FEATURES],
            "layers": [
                {"class_name": "Dense", "config": {"units": 32, "kernel_initializer": "he_normal"}},
                {"class_name": "Activation", "config": {"activation": "relu"}},
                {"class_name": "Dense", "config": {"units": CLASSES}},
                {"class_name": "Activation", "config": {"activation": "softmax"}},
            ],
        },
        "compile": {
            "optimizer": {"class_name": "RMSprop", "config": {"learning_rate": 0.001}},
            "loss": "categorical_crossentropy",
            "metrics": ["accuracy"],
        },
        "fit": {"batch_size": 128, "epochs": epochs, "validation_split": 0.1, "shuffle": True},
        "data": {
            "dataset": dataset_id,
            "x": "x",
            "y": "y",
            "preprocess": {"y": {"one_hot": CLASSES}},
        },
        "checkpoint": {"monitor": "val_loss", "mode": "min", "keep": 2},
    }


def build_seed_model() -> Any:
    """The Keras docs' first model built in Keras (he_normal kernels), compiled with RMSprop."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(32, kernel_initializer="he_normal"),
            keras.layers.Activation("relu"),
            keras.layers.Dense(CLASSES, kernel_initializer="he_normal"),
            keras.layers.Activation("softmax"),
        ]
    )
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    return model
