"""core.devices without a GPU: env parsing, device choice, refusals, MirroredStrategy on CPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import pytest

from core.devices import (
    DeviceUnavailable,
    check_mixed_precision,
    distribution_strategy,
    job_devices,
    strategy_devices,
    visible_gpu_count,
)
from core.settings import Settings
from scripts.stack import ROOT

# Runs in a fresh interpreter: logical devices must be configured before TensorFlow initializes,
# which the test process has long done.
TWO_CPU_TRAINING = """
import json
import numpy as np
import keras
from core.devices import configure_devices, describe_devices, job_devices
from core.settings import Settings

configure_devices(Settings.from_env())
keras.utils.set_random_seed(0)
x = np.random.rand(64, 4).astype("float32")
y = (x.sum(axis=1) > 2).astype("float32")
with job_devices({"gpus": 2, "mixed_precision": False}) as strategy:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
print(json.dumps({"device": describe_devices(strategy), "loss": history.history["loss"]}))
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", 0),
        ("-1", 0),
        ("0", 1),
        ("0,1", 2),
        (" 2 , 3 ", 2),
        ("0,-1,2", 1),
        ("GPU-8f2c1e,MIG-1a2b", 2),
    ],
)
def test_visible_gpu_count_reads_cuda_visible_devices(value, expected) -> None:
    environ = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert visible_gpu_count(environ) == expected


def test_device_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {"FITSERVE_GPU_MEMORY_GROWTH": "false", "FITSERVE_CPU_REPLICAS": "2"}
    )
    assert settings.gpu_memory_growth is False
    assert settings.cpu_replicas == 2
    defaults = Settings.from_env({})
    assert defaults.gpu_memory_growth is True
    assert defaults.cpu_replicas == 1


def test_strategy_devices_mirror_over_the_first_k_gpus() -> None:
    gpus = [f"/device:GPU:{i}" for i in range(4)]
    assert strategy_devices(1, gpus, ["/device:CPU:0"]) is None
    assert strategy_devices(2, gpus, ["/device:CPU:0"]) == gpus[:2]
    assert strategy_devices(4, gpus, ["/device:CPU:0"]) == gpus


def test_strategy_devices_use_split_cpus_only_without_gpus() -> None:
    cpus = ["/device:CPU:0", "/device:CPU:1"]
    assert strategy_devices(2, [], cpus) == cpus
    with pytest.raises(DeviceUnavailable, match=r"resources\.gpus=2 but this worker has 1 GPU"):
        strategy_devices(2, ["/device:GPU:0"], cpus)


def test_a_cpu_worker_refuses_a_multi_gpu_job_naming_the_queue() -> None:
    with pytest.raises(DeviceUnavailable) as refused:
        distribution_strategy(2)
    assert "has 0 GPU(s)" in refused.value.detail
    assert "'train.gpu2'" in refused.value.detail
    assert refused.value.code == "device_unavailable"


def test_mixed_precision_is_refused_on_a_cpu_worker() -> None:
    assert check_mixed_precision(False) == "float32"
    with pytest.raises(DeviceUnavailable, match=r"mixed_precision=true but this worker has no GPU"):
        check_mixed_precision(True)


def test_job_devices_restore_the_dtype_policy() -> None:
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        with job_devices({"gpus": 1, "mixed_precision": False}) as strategy:
            assert keras.config.dtype_policy().name == "float32"
            assert strategy.num_replicas_in_sync == 1
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    finally:
        keras.config.set_dtype_policy("float32")


def test_two_logical_cpus_train_under_mirrored_strategy() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", TWO_CPU_TRAINING],
        cwd=ROOT,
        env={**os.environ, "FITSERVE_CPU_REPLICAS": "2", "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    device = result["device"]
    assert device["strategy"] == "MirroredStrategy"
    assert device["num_replicas_in_sync"] == 2
    assert [name.rsplit(":", 2)[-2:] for name in device["replica_devices"]] == [
        ["CPU", "0"],
        ["CPU", "1"],
    ]
    assert device["gpus"] == []
    assert len(result["loss"]) == 2
    assert all(loss == loss and loss < 10 for loss in result["loss"])
