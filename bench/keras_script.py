"""The seed model of the Keras docs trained by a bare script: the baseline of bench/train.py.

`python bench/keras_script.py DATA.npz EPOCHS` prints one JSON line: the seconds of the whole
script (imports included), of `fit()` alone, and the last validation accuracy. It builds, compiles
and fits exactly what bench/train.py's job request asks for.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402  (imports are part of what is timed)
import sys  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

CLASSES = 10


def seed_model(features: int) -> keras.Model:
    """Dense(32, he_normal), relu, Dense(10), softmax: the model of DESIGN.md's request."""
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(32, kernel_initializer="he_normal"),
            keras.layers.Activation("relu"),
            keras.layers.Dense(CLASSES),
            keras.layers.Activation("softmax"),
        ]
    )


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 42) -> dict:
    """Fit the seed model as the job request does; the history and fit()'s own seconds."""
    keras.utils.set_random_seed(seed)
    model = seed_model(x.shape[1])
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=0.001),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    fit_started = time.perf_counter()
    history = model.fit(
        x,
        keras.utils.to_categorical(y, CLASSES),
        batch_size=128,
        epochs=epochs,
        validation_split=0.1,
        shuffle=True,
        verbose=0,
    )
    return {"fit_seconds": time.perf_counter() - fit_started, "history": history.history}


def main(path: str, epochs: int) -> None:
    with np.load(path, allow_pickle=False) as arrays:
        x, y = arrays["x"], arrays["y"]
    result = train(x, y, epochs)
    print(
        json.dumps(
            {
                "script_seconds": time.perf_counter() - STARTED,
                "fit_seconds": result["fit_seconds"],
                "val_accuracy": result["history"]["val_accuracy"][-1],
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
