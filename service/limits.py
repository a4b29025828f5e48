"""Limits per API key, counted in Redis: request rates, wrong keys, jobs, datasets and bytes.

The counters live in Redis so every gunicorn worker (and every API host) shares them. A request
over a rate answers 429 with `Retry-After`; when Redis cannot be reached the rate limiter lets the
request through (a log line and `RATE_LIMIT_FAIL_OPEN` count it) rather than take the API down
with it. Storage quotas (jobs kept, datasets, their bytes) answer 507 `insufficient_storage`.
"""

from __future__ import annotations

import logging
import math
import time

import redis
from flask import g, request
from prometheus_client import Counter

from core import datasets
from core.errors import InsufficientStorage, QuotaExceeded, RateLimited
from core.jobs import JobStore
from core.rediskeys import auth_failures_key, rate_limit_key
from core.usage import dataset_usage
from service.state import data_dir, redis_client, settings

log = logging.getLogger("fitserve.service")

WINDOW_SECONDS = 60
# A job's slot frees when a job ends, which no one can predict: clients retry after this long.
QUOTA_RETRY_SECONDS = 30

RATE_LIMIT_FAIL_OPEN = Counter(
    "fitserve_rate_limit_fail_open",
    "Requests let through unchecked because Redis could not count them.",
)

# One round trip: count this request in the current fixed window and say how long it has left.
_COUNT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {count, redis.call('PTTL', KEYS[1])}
"""


def client_identity() -> str:
    """Who a request is counted against: the key's name, or the client address without keys."""
    principal = g.get("principal")
    if principal is not None:
        return f"key:{principal.name}"
    return f"ip:{client_address()}"


def client_address() -> str:
    """The client's address (behind the proxy, the one it forwarded: service/proxies.py)."""
    return request.remote_addr or "unknown"


def _count(key: str) -> tuple[int, int] | None:
    """Count one more in `key`'s window: (count, milliseconds left), or None when Redis is
    away (counted as a fail-open)."""
    try:
        count, ttl_ms = redis_client().eval(_COUNT, 1, key, WINDOW_SECONDS * 1000)
    except redis.RedisError as error:
        RATE_LIMIT_FAIL_OPEN.inc()
        log.warning("rate_limit_fail_open request_id=%s error=%r", g.get("request_id"), str(error))
        return None
    return int(count), int(ttl_ms)


def _retry_after(ttl_ms: int) -> int:
    return max(1, math.ceil(ttl_ms / 1000))


def check_rate_limit() -> None:
    """Count a request against its key's window (its address's without keys); RateLimited
    past the limit. service/auth.py calls it for every route that needs a key."""
    limit = settings().rate_limit
    if limit <= 0:
        return
    window = int(time.time()) // WINDOW_SECONDS
    counted = _count(rate_limit_key(client_identity(), window))
    if counted is not None and counted[0] > limit:
        retry_after = _retry_after(counted[1])
        raise RateLimited(
            f"Rate limit of {limit} requests per minute reached for {client_identity()}; "
            f"retry in {retry_after} s.",
            retry_after=retry_after,
        )


def check_sign_in_failures() -> None:
    """Before a key is checked: RateLimited while this address is over its wrong keys, so
    guessing stops at `max_auth_failures` a minute, right guesses included."""
    limit = settings().max_auth_failures
    if limit <= 0:
        return
    try:
        key = auth_failures_key(client_address())
        failures, ttl_ms = redis_client().pipeline(transaction=False).get(key).pttl(key).execute()
    except redis.RedisError:
        return  # counted as a fail-open by `count_sign_in_failure` if Redis stays away
    if int(failures or 0) >= limit:
        retry_after = _retry_after(int(ttl_ms))
        raise RateLimited(
            f"{limit} wrong API keys came from {client_address()} within a minute "
            f"(FITSERVE_MAX_AUTH_FAILURES); retry in {retry_after} s.",
            retry_after=retry_after,
        )


def count_sign_in_failure() -> None:
    """A wrong key was presented from this address: count it for a minute."""
    if settings().max_auth_failures > 0:
        _count(auth_failures_key(client_address()))


def check_job_quota(store: JobStore, owner: str | None) -> None:
    """Refuse a new job while the key has its quota of live jobs (429 `quota_exceeded`) or of
    jobs kept in any status (507 `insufficient_storage`: finished jobs hold checkpoints).

    Checked before the job is recorded, so submits racing each other may pass the quota by
    the number racing; the quota bounds a key's share of the queue, not an exact count.
    """
    kept_quota = settings().max_jobs_per_key
    kept = store.count_kept(owner)
    if 0 < kept_quota <= kept:
        raise InsufficientStorage(
            f"The quota of {kept_quota} jobs kept per API key (FITSERVE_MAX_JOBS_PER_KEY) is "
            f"reached: {kept} are stored. Delete finished jobs to make room."
        )
    quota = settings().max_active_jobs_per_key
    if quota <= 0:
        return
    live = store.count_live(owner)
    if live >= quota:
        raise QuotaExceeded(
            f"The quota of {quota} queued or running jobs per API key "
            f"(FITSERVE_MAX_ACTIVE_JOBS_PER_KEY) is reached: {live} are live. "
            "Wait for one to end or cancel one.",
            retry_after=QUOTA_RETRY_SECONDS,
        )


def check_dataset_quota(owner: str | None) -> None:
    """Before an upload is read: 507 when the key has no room left for one more dataset."""
    _refuse_over_quota(owner, adding=1)


def keep_within_dataset_quota(manifest: dict) -> None:
    """After a dataset is stored: if it took its key past a quota (a compressed upload that
    expanded, uploads racing), delete it again and answer 507."""
    try:
        _refuse_over_quota(manifest.get("owner"), adding=0)
    except InsufficientStorage:
        datasets.delete_dataset(data_dir(), manifest["id"])
        raise


def _refuse_over_quota(owner: str | None, *, adding: int) -> None:
    """InsufficientStorage when `owner`'s datasets, `adding` more of each, are over a quota."""
    config = settings()
    count_quota, bytes_quota = config.max_datasets_per_key, config.storage_quota_bytes
    if count_quota <= 0 and bytes_quota <= 0:
        return
    usage = dataset_usage(data_dir(), owner)
    if 0 < count_quota < usage.datasets + adding:
        raise InsufficientStorage(
            f"The quota of {count_quota} datasets per API key (FITSERVE_MAX_DATASETS_PER_KEY) "
            f"is reached: {usage.datasets} are stored. Delete datasets to make room."
        )
    if 0 < bytes_quota < usage.bytes + adding:
        raise InsufficientStorage(
            f"The storage quota of {bytes_quota} bytes per API key "
            f"(FITSERVE_STORAGE_QUOTA_BYTES) is used up: datasets hold {usage.bytes} bytes. "
            "Delete datasets to make room."
        )
