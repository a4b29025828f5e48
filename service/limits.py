"""Rate limits per API key and quotas of live jobs per key, counted in Redis.

The counters live in Redis so every gunicorn worker (and every API host) shares them. A request
over the rate answers 429 with `Retry-After`; when Redis cannot be reached the limiter lets the
request through (a log line and `RATE_LIMIT_FAIL_OPEN` count it) rather than take the API down
with it.
"""

from __future__ import annotations

import logging
import math
import time

import redis
from flask import Flask, g, request
from prometheus_client import Counter

from core.errors import QuotaExceeded, RateLimited
from core.jobs import LIVE, owner_index, status_index
from service.auth import PROTECTED_PREFIXES
from service.state import redis_client, settings

log = logging.getLogger("fitserve.service")

WINDOW_SECONDS = 60
PREFIX = "fitserve:ratelimit:"
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
    return f"ip:{request.remote_addr or 'unknown'}"


def check_rate_limit() -> None:
    """Count a /v1 or /v2 request against its key's window; RateLimited past the limit."""
    limit = settings().rate_limit
    if limit <= 0 or not request.path.startswith(PROTECTED_PREFIXES):
        return
    window = int(time.time()) // WINDOW_SECONDS
    key = f"{PREFIX}{client_identity()}:{window}"
    try:
        count, ttl_ms = redis_client().eval(_COUNT, 1, key, WINDOW_SECONDS * 1000)
    except redis.RedisError as error:
        RATE_LIMIT_FAIL_OPEN.inc()
        log.warning("rate_limit_fail_open request_id=%s error=%r", g.get("request_id"), str(error))
        return
    if count > limit:
        retry_after = max(1, math.ceil(int(ttl_ms) / 1000))
        raise RateLimited(
            f"Rate limit of {limit} requests per minute reached for {client_identity()}; "
            f"retry in {retry_after} s.",
            retry_after=retry_after,
        )


def count_live_jobs(client: redis.Redis, owner: str | None) -> int:
    """Queued, running and cancelling jobs of `owner` (of everyone when keys are off)."""
    pipe = client.pipeline(transaction=False)
    for status in LIVE:
        if owner is None:
            pipe.zcard(status_index(status))
        else:
            pipe.zintercard(2, [owner_index(owner), status_index(status)])
    return sum(pipe.execute())


def check_job_quota(owner: str | None) -> None:
    """Refuse a new job (429 `quota_exceeded`) while the key has its quota of live jobs.

    Checked before the job is recorded, so submits racing each other may pass the quota by
    the number racing; the quota bounds a key's share of the queue, not an exact count.
    """
    quota = settings().max_active_jobs_per_key
    if quota <= 0:
        return
    live = count_live_jobs(redis_client(), owner)
    if live >= quota:
        raise QuotaExceeded(
            f"The quota of {quota} queued or running jobs per API key "
            f"(FITSERVE_MAX_ACTIVE_JOBS_PER_KEY) is reached: {live} are live. "
            "Wait for one to end or cancel one.",
            retry_after=QUOTA_RETRY_SECONDS,
        )


def register(app: Flask) -> None:
    """Run after authentication, which names the key a request is counted against."""
    app.before_request(check_rate_limit)
