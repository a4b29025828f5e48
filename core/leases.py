"""Leases: a Redis key naming the one process working on a unit of work (a job's training, a
batch prediction's scoring), with a TTL the holder's heartbeat renews.

One owner of the lease scripts, for every kind of work: the key of a unit comes from the caller
(core.rediskeys), the rules are the same.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

_RENEW_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 2
end
return 0
"""

_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_STEAL_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


class Leases:
    """The leases of one kind of work: `key(id)` is a unit's lease key, `seconds` its TTL."""

    def __init__(self, client: redis.Redis, seconds: int, key: Callable[[str], str]) -> None:
        self.redis = client
        self.seconds = seconds
        self.key = key
        self._renew = client.register_script(_RENEW_LEASE)
        self._release = client.register_script(_RELEASE_LEASE)
        self._steal = client.register_script(_STEAL_LEASE)

    def acquire(self, unit_id: str, holder: str) -> bool:
        """Take the unit's lease for `holder` if nobody holds it."""
        return bool(self.redis.set(self.key(unit_id), holder, nx=True, ex=self.seconds))

    def steal(self, unit_id: str, dead_holder: str, holder: str) -> bool:
        """Take over a lease from a holder known to be dead (same host, process gone)."""
        return bool(self._steal(keys=[self.key(unit_id)], args=[dead_holder, holder, self.seconds]))

    def renew(self, unit_id: str, holder: str) -> bool:
        """Extend our lease (taking it again if it vanished); False if someone else holds it."""
        return bool(self._renew(keys=[self.key(unit_id)], args=[holder, self.seconds]))

    def release(self, unit_id: str, holder: str) -> None:
        """Let go of the lease if `holder` still holds it (never someone else's)."""
        self._release(keys=[self.key(unit_id)], args=[holder])

    def holder(self, unit_id: str) -> str | None:
        """`<host>/<pid>/<worker name>` of the process holding the lease, or None."""
        value = self.redis.get(self.key(unit_id))
        if not value:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)
