"""A worker's devices: settings to `tf.config`, and the strategy and precision a job trains under.

TensorFlow is imported inside the functions that need it, never at module level: the Celery
parent and the API import this module without starting TensorFlow, and `configure_devices` must
run before anything initializes TensorFlow's runtime (memory growth and logical devices cannot
change after that).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from core.errors import FitserveError
from core.integers import read_int
from core.queues import train_queue
from core.settings import Settings

if TYPE_CHECKING:
    import tensorflow as tf

MIXED_PRECISION_POLICY = "mixed_float16"


class DeviceUnavailable(FitserveError):
    """This worker lacks what a job asks for: more GPUs, or any GPU for mixed precision."""

    code = "device_unavailable"
    title = "Device unavailable"


def visible_gpu_count(environ: Mapping[str, str]) -> int | None:
    """How many GPUs `CUDA_VISIBLE_DEVICES` leaves visible; None when unset (all of them).

    Read without TensorFlow, so a worker's parent process can say what it owns. As CUDA does,
    the list ends at the first entry that is not a device (`-1`, an empty entry).
    """
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    count = 0
    for entry in raw.split(","):
        entry = entry.strip()
        if read_int(entry, 0, 1 << 31) is None and not entry.startswith(("GPU-", "MIG-")):
            break
        count += 1
    return count


def configure_devices(settings: Settings) -> None:
    """Apply the device settings to TensorFlow, once per process, before TensorFlow runs.

    Memory growth on every visible GPU lets a worker take what its jobs need rather than the
    whole card. `cpu_replicas` > 1 splits the CPU into that many logical devices (a test aid:
    the multi-GPU path then runs under MirroredStrategy on a machine without GPUs).
    """
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, settings.gpu_memory_growth)
    if settings.cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        logical = [tf.config.LogicalDeviceConfiguration() for _ in range(settings.cpu_replicas)]
        tf.config.set_logical_device_configuration(cpu, logical)


def strategy_devices(gpus: int, gpu_names: list[str], cpu_names: list[str]) -> list[str] | None:
    """The devices a job of `gpus` devices is mirrored over; None means one device, no mirroring.

    Logical CPUs stand in for GPUs only on a worker without GPUs whose CPU was split on purpose
    (`cpu_replicas`); otherwise a worker with fewer GPUs than asked refuses the job.
    """
    if gpus <= 1:
        return None
    if len(gpu_names) >= gpus:
        return gpu_names[:gpus]
    if not gpu_names and len(cpu_names) >= gpus:
        return cpu_names[:gpus]
    raise DeviceUnavailable(
        f"The job asks for resources.gpus={gpus} but this worker has {len(gpu_names)} GPU(s). "
        f"Jobs of {gpus} GPUs belong on queue '{train_queue(gpus)}': run a worker that owns "
        f"{gpus} GPUs and consumes that queue (the worker-2gpu service in docker-compose.yml "
        "shows one)."
    )


def distribution_strategy(gpus: int) -> tf.distribute.Strategy:
    """MirroredStrategy over `gpus` devices, or the default strategy for a one-device job.

    Raises:
        DeviceUnavailable: the worker has fewer devices than the job asks for.
    """
    import tensorflow as tf

    devices = strategy_devices(
        gpus,
        [device.name for device in tf.config.list_logical_devices("GPU")],
        [device.name for device in tf.config.list_logical_devices("CPU")],
    )
    if devices is None:
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy(devices=devices)


def check_mixed_precision(enabled: bool) -> str:
    """The Keras dtype policy a job trains under: `mixed_float16` when asked, on a GPU only.

    Raises:
        DeviceUnavailable: mixed precision was asked for on a worker without a GPU.
    """
    if not enabled:
        return "float32"
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        raise DeviceUnavailable(
            "The job asks for resources.mixed_precision=true but this worker has no GPU: "
            "mixed_float16 only speeds up training on a GPU and is slower and less precise on "
            "a CPU. Submit the job without mixed_precision, or run it on a GPU worker."
        )
    return MIXED_PRECISION_POLICY


@contextlib.contextmanager
def job_devices(resources: dict) -> Iterator[tf.distribute.Strategy]:
    """The strategy scope and dtype policy of a job's `resources`; the policy is restored after.

    Build the model, load a checkpoint, compile and fit inside it: a Keras model keeps the
    strategy it was created under, and the dtype policy is global to the process, which trains
    one job after another.
    """
    import keras

    strategy = distribution_strategy(resources["gpus"])
    policy = check_mixed_precision(resources["mixed_precision"])
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        with strategy.scope():
            yield strategy
    finally:
        keras.config.set_dtype_policy(previous)


def describe_devices(strategy: tf.distribute.Strategy | None = None) -> dict:
    """What a job ran on, for its record: devices, GPU models, CUDA and cuDNN of the build.

    With a strategy: its class, `num_replicas_in_sync` and the devices of its replicas.
    """
    import keras
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    logical = [device.name for device in tf.config.list_logical_devices()]
    gpus = tf.config.list_physical_devices("GPU")
    described: dict = {
        "devices": logical,
        "gpus": [tf.config.experimental.get_device_details(gpu).get("device_name") for gpu in gpus],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cuda": build.get("cuda_version"),
        "cudnn": build.get("cudnn_version"),
    }
    if strategy is not None:
        mirrored = isinstance(strategy, tf.distribute.MirroredStrategy)
        # The default strategy places on the first GPU, else the CPU, and cannot list devices.
        default_device = next((name for name in logical if "GPU" in name), logical[0])
        described |= {
            "strategy": type(strategy).__name__,
            "num_replicas_in_sync": strategy.num_replicas_in_sync,
            "replica_devices": (
                list(strategy.extended.worker_devices) if mirrored else [default_device]
            ),
        }
    return described
