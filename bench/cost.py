"""The cost model against the machine: estimated memory and step time beside measured ones.

    .venv/bin/python bench/cost.py [--steps 12] [--only NAME ...]

For each of a dozen small jobs (MLPs, convolutions, recurrent layers, embeddings, one-hot targets)
the request goes through the grammar and `core.cost.estimate_cost`, then trains in a fresh
subprocess on in-memory data of the request's shapes, as a worker does:
- memory: the process's peak resident memory while it makes the data, builds, compiles and
  trains, less its memory once TensorFlow has started (sampled every 2 ms);
- step time: the median of the training steps after the first two (tracing excluded).
The cost model counts work, not seconds: four calibration jobs run first in the same command (a
tiny MLP for the fixed cost of a step; a wide MLP, a large embedding and a long thin RNN for the
seconds per operation, per parameter updated and per recurrent timestep), and each estimate of
a step's time is the fixed cost plus the job's operations, parameters and timesteps at those
rates. Prints a table of estimate, measurement and their ratio; the aim is each within 2x.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.cost import TRAINING_PASSES  # noqa: E402

AIM = 2.0
DATASET = "0" * 32


def dense(units: int, **config: Any) -> dict[str, Any]:
    return {"class_name": "Dense", "config": {"units": units, **config}}


def layer(class_name: str, **config: Any) -> dict[str, Any]:
    return {"class_name": class_name, "config": config}


# name: (input shape, layers, target shape or one-hot classes, rows, batch, loss)
JOBS: dict[str, tuple[list[int], list[dict[str, Any]], Any, int, int, str]] = {
    "calibrate-tiny": ([4], [dense(2)], [2], 4096, 32, "mse"),
    "calibrate-wide": ([2048], [dense(2048), dense(2048), dense(8)], [8], 2048, 256, "mse"),
    "calibrate-params": (
        [4],
        [layer("Embedding", input_dim=200_000, output_dim=32), layer("Flatten"), dense(1)],
        [1],
        2048,
        16,
        "mse",
    ),
    "calibrate-steps": ([400, 1], [layer("SimpleRNN", units=4), dense(1)], [1], 2048, 16, "mse"),
    "mlp-wide": (
        [1024],
        [dense(4096, activation="relu"), dense(4096), dense(10)],
        [10],
        4096,
        512,
        "mse",
    ),
    "mlp-batchnorm": (
        [512],
        [dense(2048), layer("BatchNormalization"), layer("Dropout", rate=0.2), dense(10)],
        [10],
        8192,
        1024,
        "mse",
    ),
    "conv2d": (
        [64, 64, 3],
        [layer("Conv2D", filters=32, kernel_size=3, padding="same"), layer("Flatten"), dense(4)],
        [4],
        1024,
        128,
        "mse",
    ),
    "conv2d-pool": (
        [64, 64, 8],
        [
            layer("Conv2D", filters=64, kernel_size=3, padding="same", activation="relu"),
            layer("MaxPooling2D", pool_size=2),
            layer("Conv2D", filters=64, kernel_size=3, padding="same"),
            layer("GlobalAveragePooling2D"),
            dense(4),
        ],
        [4],
        512,
        64,
        "mse",
    ),
    "separable": (
        [64, 64, 16],
        [
            layer("SeparableConv2D", filters=64, kernel_size=3),
            layer("GlobalMaxPooling2D"),
            dense(4),
        ],
        [4],
        512,
        128,
        "mse",
    ),
    "conv1d": (
        [2000, 16],
        [
            layer("Conv1D", filters=64, kernel_size=9, padding="same"),
            layer("GlobalAveragePooling1D"),
            dense(2),
        ],
        [2],
        1024,
        128,
        "mse",
    ),
    "lstm": ([200, 32], [layer("LSTM", units=128), dense(4)], [4], 1024, 128, "mse"),
    "gru-sequences": (
        [100, 32],
        [layer("GRU", units=128, return_sequences=True), layer("Flatten"), dense(4)],
        [4],
        1024,
        128,
        "mse",
    ),
    "bidirectional": (
        [100, 16],
        [layer("Bidirectional", layer=layer("LSTM", units=64)), dense(4)],
        [4],
        1024,
        128,
        "mse",
    ),
    "embedding": (
        [64],
        [
            layer("Embedding", input_dim=50_000, output_dim=128),
            layer("GlobalAveragePooling1D"),
            dense(4),
        ],
        [4],
        4096,
        256,
        "mse",
    ),
    "repeat-vector": (
        [64],
        [layer("RepeatVector", n=256), layer("Flatten"), dense(256), dense(4)],
        [4],
        4096,
        512,
        "mse",
    ),
    "one-hot": (
        [32],
        [dense(64), dense(2000, activation="softmax")],
        2000,
        50_000,
        256,
        "categorical_crossentropy",
    ),
}


def request_of(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The job request and the manifest of its in-memory dataset."""
    shape, layers, target, rows, batch, loss = JOBS[name]
    one_hot = isinstance(target, int)
    y_shape = [rows] if one_hot else [rows, *target]
    stats = {"min": 0, "max": (target - 1) if one_hot else 1, "nan": 0, "inf": 0}
    manifest = {
        "id": DATASET,
        "arrays": {
            "x": {"shape": [rows, *shape], "dtype": "float32", "stats": {**stats, "max": 1}},
            "y": {
                "shape": y_shape,
                "dtype": "int64" if one_hot else "float32",
                "stats": {
                    **stats,
                    "integer_valued": one_hot,
                    "labels": [0, 1] if one_hot else None,
                },
            },
        },
        "classes": {},
    }
    if name in ("embedding", "calibrate-params"):
        manifest["arrays"]["x"]["stats"] = {**stats, "max": 49_999, "integer_valued": True}
    data: dict[str, Any] = {"dataset": DATASET, "x": "x", "y": "y"}
    if one_hot:
        data["preprocess"] = {"y": {"one_hot": target}}
    body = {
        "model": {"input_shape": shape, "layers": layers},
        "compile": {"optimizer": "adam", "loss": loss},
        "fit": {"batch_size": batch, "epochs": 1, "shuffle": False},
        "data": data,
    }
    return body, manifest


def parse(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The normalized spec and the cost estimate."""
    from core.cost import estimate_cost
    from core.grammar import parse_job_request
    from core.settings import Settings

    body, manifest = request_of(name)
    settings = Settings()

    def manifest_of(_: str) -> dict[str, Any]:
        return manifest

    spec = parse_job_request(body, settings=settings, manifest_of=manifest_of)
    return spec, estimate_cost(spec, settings, manifest_of)


class PeakMemory:
    """The process's peak resident memory above a baseline, sampled on a thread."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak - self.baseline


def measure(name: str, steps: int) -> dict[str, Any]:
    """In a fresh process: train `steps` steps, answer peak memory and the median step time."""
    import keras
    import numpy as np

    from core.modeling import build_model, compile_model

    spec, _ = parse(name)
    _, manifest = request_of(name)
    # TensorFlow starts its runtime on the first operation: part of the baseline, not the job.
    keras.ops.sum(keras.ops.ones((8, 8)) @ keras.ops.ones((8, 8)))
    peak = PeakMemory()
    rng = np.random.default_rng(0)
    x_entry, y_entry = manifest["arrays"]["x"], manifest["arrays"]["y"]
    if name in ("embedding", "calibrate-params"):
        x = rng.integers(0, 50_000, x_entry["shape"]).astype("float32")
    else:
        x = rng.random(x_entry["shape"], dtype=np.float32)
    if spec["data"]["one_hot"]:
        labels = rng.integers(0, spec["data"]["one_hot"]["output"], y_entry["shape"])
        y = keras.utils.to_categorical(labels, spec["data"]["one_hot"]["output"])
    else:
        y = rng.random(y_entry["shape"], dtype=np.float32)
    model = build_model(spec)
    compile_model(model, spec)
    ends: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter())
    )
    batch = spec["fit"]["batch_size"]
    model.fit(
        x,
        y,
        batch_size=batch,
        epochs=1,
        steps_per_epoch=steps,
        shuffle=False,
        verbose=0,
        callbacks=[timer],
    )
    memory = peak.stop()
    durations = [b - a for a, b in itertools.pairwise(ends)][2:]
    return {"memory_bytes": memory, "step_seconds": statistics.median(durations)}


def run_child(name: str, steps: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", name, "--steps", str(steps)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps)))
        return
    names = [n for n in JOBS if args.only is None or n in args.only or n.startswith("calibrate")]
    estimates = {name: parse(name)[1] for name in names}
    measured = {}
    for name in names:
        measured[name] = run_child(name, args.steps)
        print(f"measured {name}: {measured[name]}", file=sys.stderr, flush=True)
    overhead = measured["calibrate-tiny"]["step_seconds"]

    def work(name: str) -> list[float]:
        """A step's operations (forward and backward), parameters updated, timesteps."""
        cost = estimates[name]
        flops = TRAINING_PASSES * cost["flops_per_row"] * cost["batch_size"]
        trainable = sum(layer["params"] for layer in cost["layers"])
        return [flops, trainable, cost["recurrent_steps"]]

    calibration = ["calibrate-wide", "calibrate-params", "calibrate-steps"]
    seconds = np.linalg.solve(
        np.array([work(name) for name in calibration]),
        np.array([measured[name]["step_seconds"] - overhead for name in calibration]),
    )
    per_flop, per_parameter, per_timestep = (float(v) for v in seconds)
    print(
        f"calibration: {overhead * 1000:.2f} ms per step, {1e-9 / per_flop:.1f} GFLOP/s, "
        f"{per_parameter * 1e9:.2f} ns per parameter updated, {per_timestep * 1e3:.3f} ms per "
        "timestep"
    )
    header = (
        f"{'job':16} {'mem est':>10} {'mem meas':>10} {'ratio':>6}   "
        f"{'step est':>9} {'step meas':>9} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    worst = 1.0
    for name in names:
        if name.startswith("calibrate"):
            continue
        est_mem = estimates[name]["memory_bytes"]
        meas_mem = measured[name]["memory_bytes"]
        est_step = overhead + float(np.dot(work(name), seconds))
        meas_step = measured[name]["step_seconds"]
        mem_ratio, step_ratio = meas_mem / est_mem, meas_step / est_step
        worst = max(worst, mem_ratio, 1 / mem_ratio, step_ratio, 1 / step_ratio)
        print(
            f"{name:16} {est_mem / 1e6:8.0f}MB {meas_mem / 1e6:8.0f}MB {mem_ratio:6.2f}   "
            f"{est_step * 1000:7.1f}ms {meas_step * 1000:7.1f}ms {step_ratio:6.2f}"
        )
    print(f"worst ratio (either way): {worst:.2f} (aim: within {AIM}x)")


if __name__ == "__main__":
    main()
