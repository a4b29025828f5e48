"""Settings, read once from `FITSERVE_*` environment variables and passed down."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PREFIX = "FITSERVE_"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of the service and the workers; the README's configuration table lists them."""

    redis_url: str = "redis://localhost:6379/0"
    data_dir: Path = Path("data")
    api_keys: str = ""
    max_upload_bytes: int = 1 << 30
    max_json_bytes: int = 16 << 20
    # Bytes one dataset may hold once expanded, judged absolutely (never by compression ratio):
    # an .npz's members and an archive's images are checked against it before decompressing.
    max_dataset_bytes: int = 64 << 30
    # Image archives (core.archives): members listed and class folders per archive, and pixels
    # per image (Pillow's decompression-bomb guard; its own default).
    max_archive_members: int = 1_000_000
    max_archive_classes: int = 10_000
    max_image_pixels: int = 89_478_485
    # A dataset `processing` whose ingest has given no sign of life for this long (its task
    # worker died) reads as `failed`.
    ingest_stall_seconds: int = 600
    # Files on the box that admin keys may import as datasets (`{"import": "<relative path>"}`),
    # confined to this folder; empty: imports are off.
    import_dir: str = ""
    # CPU seconds one upload may spend being read and described (on its own thread); past it the
    # upload is refused with a 413, so no upload can hold an API thread for long.
    upload_cpu_seconds: int = 120
    # A resumable (tus) upload not written to for this long expires and is removed.
    upload_expiry_seconds: int = 24 * 3600
    max_params: int = 50_000_000
    max_layers: int = 512
    max_epochs: int = 1000
    max_batch_size: int = 65_536
    max_predict_rows: int = 10_000
    max_job_seconds: int = 24 * 3600
    max_attempts: int = 3
    max_gpus_per_job: int = 8
    # Trials one sweep may make (and so run at once).
    max_sweep_trials: int = 1000
    # The cost model's budget for one job on one worker (core.cost): host memory for weights,
    # optimizer state, a batch's activations and the data held, and operations per epoch.
    worker_memory_bytes: int = 16 << 30
    max_flops_per_epoch: int = 10**14
    # Abuse limits (service.limits): requests per minute per API key (per client address
    # without keys) and queued + running jobs per key; 0 turns either off.
    rate_limit: int = 60_000
    max_active_jobs_per_key: int = 1000
    # Wrong API keys per client address per minute; past it even a right key gets 429 until the
    # minute is over (a guessing client gets nowhere). 0 turns it off.
    max_auth_failures: int = 20
    # Storage per key (all of it when keys are off): jobs kept in any status, datasets, and the
    # datasets' stored bytes; past any of them a new one is a 507. 0 turns each off.
    max_jobs_per_key: int = 10_000
    max_datasets_per_key: int = 1000
    storage_quota_bytes: int = 256 << 30
    # Finished jobs (succeeded, failed, cancelled) are removed with their files this long after
    # they finished, unless pinned; 0 keeps them until deleted.
    job_ttl_seconds: int = 0
    # SavedModel downloads are cached under each job's exports/; past this many bytes across all
    # jobs the least recently used are removed (they are made again on the next download).
    export_cache_bytes: int = 8 << 30
    # Peers (addresses or networks, comma-separated) whose X-Forwarded-For names the client:
    # the proxy in front. From any other peer forwarded headers are ignored.
    trusted_proxies: str = ""
    # Workers' devices (core.devices): memory growth on every visible GPU; `cpu_replicas` > 1
    # splits the CPU into that many logical devices, a test aid so the multi-GPU path runs
    # under MirroredStrategy on a machine without GPUs.
    gpu_memory_growth: bool = True
    cpu_replicas: int = 1
    keep_checkpoints: int = 3
    # Batch predictions commit their outputs and rows done after at least this many rows (whole
    # batches): a lost worker's successor rescores at most this many.
    batch_predict_chunk_rows: int = 65_536
    lease_seconds: int = 30
    heartbeat_seconds: int = 5
    # A worker whose consumer (the Celery main process) has not beaten for this long, while its
    # pool child lives, is ended by the child so the container exits and is restarted: the
    # healthcheck sees a frozen consumer, but Compose restarts only containers that exit.
    # Generous, so a loaded machine never trips it; 0 turns the watchdog off.
    consumer_stall_seconds: int = 120
    # Serving: models loaded per API process (LRU by count and by weight bytes), and how
    # concurrent predictions for one model are gathered into one forward pass.
    model_cache_size: int = 8
    model_cache_bytes: int = 2 << 30
    predict_max_batch_rows: int = 256
    predict_max_latency_ms: int = 20
    # A forward pass running longer than this answers 504 (the pass finishes in the background).
    predict_timeout_seconds: float = 30.0
    # Dashboard sign-in: how long a session (a random token in a cookie, kept in Redis) lasts.
    session_seconds: int = 12 * 3600
    # Job event streams (SSE): a keep-alive comment after this many idle seconds; at most this
    # many open streams per API process (each holds a gunicorn thread: keep it below `threads`
    # so predictions always find one), and fewer per key (per client address without keys), so
    # one key never holds them all; each stream ends after `events_max_seconds` and the
    # client reconnects with Last-Event-ID.
    events_keepalive_seconds: int = 15
    events_max_streams: int = 4
    events_max_streams_per_key: int = 2
    events_max_seconds: int = 300
    # Where the API processes keep their Prometheus counters (prometheus-client's multiprocess
    # files); empty: a fresh temporary folder for each gunicorn run.
    metrics_dir: str = ""
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read `FITSERVE_<FIELD>` for every field; unknown or malformed values fail loudly."""
        environ = os.environ if environ is None else environ
        # Any: each field has its own type, and the dataclass itself is their one owner.
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(PREFIX + field.name.upper())
            if raw is None:
                continue
            values[field.name] = _convert(field.name, field.default, raw)
        values.update(overrides)
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _convert(name: str, default: object, raw: str) -> object:
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"{PREFIX}{name.upper()} must be an integer, got {raw!r}") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{PREFIX}{name.upper()} must be a number, got {raw!r}") from None
    if isinstance(default, Path):
        return Path(raw)
    return raw
