"""Limits per API key: request rates, wrong keys, jobs, datasets and bytes.

Request rates are counted in fixed one-minute windows shared through Redis, so every gunicorn
worker (and every API host) counts against one limit, but a request does not wait for Redis: each
process holds a small bucket of tokens per key, leased from the shared window count (`_LEASE`),
and refills it from a background thread before it runs dry. A key limited to L requests a minute
gets a lease of L/100 tokens at a time (1 below 200 a minute, so small limits stay exact), so the
limit is never passed, and with P processes a key may be refused up to 1.5 leases per other
process early (1.5% of L each) while they hold tokens it has not used. A request over a rate
answers 429 with `Retry-After`; when Redis cannot be reached the rate limiter lets the request
through (a log line and `RATE_LIMIT_FAIL_OPEN` count it) rather than take the API down with it.
Storage quotas (jobs kept, datasets, their bytes) answer 507 `insufficient_storage`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time

import redis
from flask import current_app, g, request
from prometheus_client import Counter

from core import datasets, uploads
from core.errors import InsufficientStorage, QuotaExceeded, RateLimited
from core.jobs import JobStore
from core.rediskeys import auth_failures_key, rate_limit_key
from core.usage import refuse_over_bytes, storage_usage
from service.state import data_dir, redis_client, settings

log = logging.getLogger("fitserve.service")

WINDOW_SECONDS = 60
# A key's lease is this share of its limit: larger leases mean fewer Redis round trips, and more
# tokens other processes may hold unused when the key reaches its limit.
LEASES_PER_WINDOW = 100
# After Redis fails, requests go through uncounted for this long before it is tried again, so an
# outage costs no connection attempt per request.
RETRY_REDIS_SECONDS = 1.0
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

# One round trip: take up to ARGV[1] tokens of the ARGV[2] the window allows; the tokens taken.
_LEASE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.max(0, math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used))
if grant > 0 and redis.call('INCRBY', KEYS[1], grant) == grant then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return grant
"""


@dataclasses.dataclass
class _Bucket:
    """One key's tokens in one window, in this process."""

    tokens: int = 0
    # Redis has no more for this window: refuse without asking again.
    exhausted: bool = False
    refilling: bool = False


class RateLimiter:
    """Per-process token buckets leased from Redis's window counts; one per app.

    `allow` takes a token from the key's bucket (a Redis round trip only when the bucket is
    empty: a key's first request in a window, or a burst faster than the refills); a bucket
    below half a lease is topped up by the background thread.
    """

    def __init__(self, client: redis.Redis, limit: int) -> None:
        self._client = client
        self._limit = limit
        self._lease = max(1, limit // LEASES_PER_WINDOW)
        self._lock = threading.Lock()
        self._window = 0
        self._buckets: dict[str, _Bucket] = {}
        self._redis_failed_at = -math.inf

    def allow(self, identity: str, window: int) -> bool | None:
        """Whether `identity` may make one more request in `window`; None when Redis is away
        (the request goes through, counted as a fail-open)."""
        with self._lock:
            bucket = self._bucket(identity, window)
            if bucket.tokens > 0:
                bucket.tokens -= 1
                self._maybe_refill(identity, window, bucket)
                return True
            if bucket.exhausted:
                return False
        # An empty bucket: this request's own token, straight from Redis (one each, so requests
        # that find it empty together take no more than they use); a lease follows behind.
        granted = self._lease_from_redis(identity, window, 1)
        if granted is None:
            return None
        with self._lock:
            bucket = self._bucket(identity, window)
            bucket.exhausted = granted == 0
            if granted:
                self._maybe_refill(identity, window, bucket)
            return granted == 1

    def _bucket(self, identity: str, window: int) -> _Bucket:
        """The bucket of `identity` in `window` (the lock held); a new window drops the old."""
        if window != self._window:
            self._window, self._buckets = window, {}
        return self._buckets.setdefault(identity, _Bucket())

    def _maybe_refill(self, identity: str, window: int, bucket: _Bucket) -> None:
        if self._lease > 1 and not bucket.refilling and bucket.tokens <= self._lease // 2:
            bucket.refilling = True
            _refills().put((self, identity, window))

    def refill(self, identity: str, window: int) -> None:
        """Top up a bucket (on the background thread)."""
        granted = self._lease_from_redis(identity, window, self._lease)
        with self._lock:
            if window == self._window:
                bucket = self._bucket(identity, window)
                bucket.refilling = False
                if granted is not None:  # with Redis away, the next empty bucket asks again
                    bucket.tokens += granted
                    bucket.exhausted = granted == 0

    def _lease_from_redis(self, identity: str, window: int, tokens: int) -> int | None:
        """Up to `tokens` taken from the window's shared count (0 when it is used up); None
        when Redis failed now or within RETRY_REDIS_SECONDS."""
        if time.monotonic() - self._redis_failed_at < RETRY_REDIS_SECONDS:
            return None
        key = rate_limit_key(identity, window)
        try:
            granted = self._client.eval(_LEASE, 1, key, tokens, self._limit, WINDOW_SECONDS * 1000)
        except redis.RedisError as error:
            self._redis_failed_at = time.monotonic()
            log.warning("rate_limit_redis_error error=%r", str(error))
            return None
        return int(granted)


def rate_limiter() -> RateLimiter:
    """This app's rate limiter, made on first use."""
    limiter = current_app.extensions.get("fitserve.rate_limiter")
    if limiter is None:
        with _making_limiter:
            limiter = current_app.extensions.get("fitserve.rate_limiter")
            if limiter is None:
                limiter = RateLimiter(redis_client(), settings().rate_limit)
                current_app.extensions["fitserve.rate_limiter"] = limiter
    return limiter


_making_limiter = threading.Lock()
_refill_queue: queue.SimpleQueue[tuple[RateLimiter, str, int]] | None = None


def _refills() -> queue.SimpleQueue[tuple[RateLimiter, str, int]]:
    """The process's refill queue, its one background thread started with it."""
    global _refill_queue
    with _making_limiter:
        if _refill_queue is None:
            _refill_queue = queue.SimpleQueue()
            threading.Thread(target=_refill_forever, args=(_refill_queue,), daemon=True).start()
    return _refill_queue


def _refill_forever(refills: queue.SimpleQueue[tuple[RateLimiter, str, int]]) -> None:
    while True:
        limiter, identity, window = refills.get()
        limiter.refill(identity, window)


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


def _retry_after(ttl_ms: float) -> int:
    return max(1, math.ceil(ttl_ms / 1000))


def check_rate_limit() -> None:
    """Count a request against its key's window (its address's without keys); RateLimited
    past the limit. service/auth.py calls it for every route that needs a key."""
    limit = settings().rate_limit
    if limit <= 0:
        return
    now = time.time()
    window = int(now) // WINDOW_SECONDS
    allowed = rate_limiter().allow(client_identity(), window)
    if allowed is None:
        RATE_LIMIT_FAIL_OPEN.inc()
        log.warning("rate_limit_fail_open request_id=%s", g.get("request_id"))
    elif not allowed:
        retry_after = _retry_after(((window + 1) * WINDOW_SECONDS - now) * 1000)
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
        pipe = redis_client().pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        failures, ttl_ms = pipe.execute()
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
    _refuse_over_bytes(owner)
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
    count_quota = settings().max_datasets_per_key
    if count_quota > 0:
        stored = storage_usage(data_dir(), owner).datasets.count
        if count_quota < stored + adding:
            raise InsufficientStorage(
                f"The quota of {count_quota} datasets per API key "
                f"(FITSERVE_MAX_DATASETS_PER_KEY) is reached: {stored} are stored. Delete "
                "datasets to make room."
            )
    _refuse_over_bytes(owner, adding=adding)


def _refuse_over_bytes(owner: str | None, *, adding: int = 1) -> None:
    """InsufficientStorage when `owner`'s stored bytes, `adding` more, pass the quota."""
    refuse_over_bytes(data_dir(), settings(), owner, adding)


def check_upload_quota(owner: str | None, length: int) -> None:
    """Before a resumable upload is created: 507 when what the key stores, what its unfinished
    uploads will hold and `length` more pass FITSERVE_STORAGE_QUOTA_BYTES."""
    quota = settings().storage_quota_bytes
    if quota <= 0:
        return
    stored = storage_usage(data_dir(), owner).bytes
    reserved = uploads.reserved_bytes(data_dir(), owner)
    if quota < stored + reserved + length:
        raise InsufficientStorage(
            f"The storage quota of {quota} bytes per API key (FITSERVE_STORAGE_QUOTA_BYTES) has "
            f"no room for an upload of {length} bytes: {stored} are stored and unfinished "
            f"uploads will hold {reserved}. Delete datasets, jobs or uploads to make room "
            "(GET /v1/usage shows what is held)."
        )
