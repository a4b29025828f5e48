"""Training streams from disk: an imported dataset of a few hundred MB trains with the worker's
memory far below its size (the multi-GB figure is bench/data.py's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.memory import PeakRss
from tests.support.stack import Stack, blobs, tiny_request

pytestmark = pytest.mark.e2e

ROWS, FEATURES, CLASSES = 80_000, 784, 10


def write_dataset(path: Path) -> int:
    """An .npz of float32 rows (about 250 MB); its arrays' size."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, size=ROWS)
    x = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)
    x[:, :CLASSES] += 4 * np.eye(CLASSES, dtype=np.float32)[y]
    np.savez(path, x=x, y=y)
    return x.nbytes + y.nbytes


def test_an_imported_250_mb_dataset_trains_an_epoch_with_the_worker_far_below_its_size(
    stack: Stack,
) -> None:
    imported = Path(stack.env["FITSERVE_IMPORT_DIR"]) / "streamed.npz"
    size = write_dataset(imported)
    dataset = stack.import_dataset(imported.name)
    imported.unlink()
    # The worker's first job builds Keras's training machinery: not part of the data's cost.
    warm = stack.submit(tiny_request(stack.upload(**blobs(rows=256)), epochs=1))
    assert stack.wait_finished(warm["id"])["status"] == "succeeded"
    request = {
        "seed": 1,
        "model": {
            "input_shape": [FEATURES],
            "layers": [{"class_name": "Dense",
                        "config": {"units": CLASSES, "activation": "softmax"}}],
        },
        "compile": {"optimizer": {"class_name": "Adam", "config": {"learning_rate": 0.02}},
                    "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
        "fit": {"batch_size": 2048, "epochs": 1, "validation_split": 0.1},
        "data": {"dataset": dataset, "x": "x", "y": "y"},
    }  # fmt: skip

    with PeakRss(stack.workers["main"].pid) as rss:
        job = stack.submit(request)
        done = stack.wait_finished(job["id"])

    assert done["status"] == "succeeded", done["error"]
    # Held in memory: a few batches of 6 MB, not the 250 MB dataset.
    assert rss.growth < 0.25 * size, f"{rss.growth / 1e6:.0f} MB for {size / 1e6:.0f} MB"
    # The rows and their labels arrived together, shuffled batch by batch.
    assert done["metrics"]["last"]["val_accuracy"] > 0.9
