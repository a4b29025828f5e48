"""`Idempotency-Key`s: a repeated request gets what the first one made, for jobs and datasets.

A key is claimed in Redis (SET NX) before anything is made, so two requests never both make a
resource. The claim records the request's fingerprint (the sha256 of its content): a repeat with
the same fingerprint replays the earlier resource, a different request under the same key is a
409, and so is a repeat while the first request is still in progress. A key whose resource has
since been deleted is free again. Keys are scoped by kind and owner and kept for a day.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import redis

from core.errors import Conflict
from core.rediskeys import idempotency_key

log = logging.getLogger("fitserve.idempotency")

KEEP_SECONDS = 24 * 3600
# A claim whose request crashed expires sooner, so it does not block its key for a day.
CLAIM_SECONDS = 3600


def fingerprint(document: Any) -> str:
    """The sha256 of a JSON document, independent of its key order."""
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclasses.dataclass
class Claim:
    """One request's hold on its key: `earlier` is the resource to replay (None: make one, then
    `bind` it)."""

    keys: IdempotencyKeys | None
    name: str
    fingerprint: str
    earlier: str | None = None
    bound: bool = False

    def bind(self, resource_id: str) -> None:
        """Point the key at the resource this request made, for a day.

        The resource exists by now, so a Redis failure here is logged, not raised: the pending
        claim expires, after which the key is free again.
        """
        if self.keys is None:
            return
        value = _encode(resource_id, self.fingerprint, pending=False)
        try:
            self.keys.redis.set(self.name, value, ex=KEEP_SECONDS)
        except redis.RedisError as error:
            log.warning("idempotency_bind_failed resource=%s error=%r", resource_id, error)
        self.bound = True


class IdempotencyKeys:
    """The keys of one kind of resource (`jobs`, `datasets`)."""

    def __init__(self, client: redis.Redis, kind: str) -> None:
        self.redis = client
        self.kind = kind

    def key_name(self, owner: str | None, key: str) -> str:
        return idempotency_key(self.kind, owner, key)

    @contextlib.contextmanager
    def claim(
        self,
        owner: str | None,
        key: str | None,
        request_fingerprint: str,
        exists: Callable[[str], bool],
    ) -> Iterator[Claim]:
        """Hold `key` while the request makes its resource; released if the block raises or
        ends without `bind`.

        Conflict when the key is held by a request in progress or was used for a different
        request. Without a key the claim is a no-op.
        """
        if key is None:
            yield Claim(None, "", request_fingerprint)
            return
        claim = Claim(self, self.key_name(owner, key), request_fingerprint)
        claim.earlier = self._take(claim, exists)
        if claim.earlier is not None:
            yield claim
            return
        try:
            yield claim
        except BaseException:
            self._release(claim)
            raise
        if not claim.bound:
            self._release(claim)

    def _release(self, claim: Claim) -> None:
        """Free the key of a request that made nothing (or undid what it made)."""
        with contextlib.suppress(redis.RedisError):
            self.redis.delete(claim.name)

    def _take(self, claim: Claim, exists: Callable[[str], bool]) -> str | None:
        """Claim the key (None), or return the earlier resource a same request made."""
        pending = _encode("", claim.fingerprint, pending=True)
        if self.redis.set(claim.name, pending, nx=True, ex=CLAIM_SECONDS):
            return None
        earlier = _decode(self.redis.get(claim.name))
        if earlier is not None and earlier["pending"]:
            raise Conflict(
                "A request with this Idempotency-Key is still in progress; retry when it has ended."
            )
        if earlier is None or not exists(earlier["id"]):
            self.redis.set(claim.name, pending, ex=CLAIM_SECONDS)
            return None
        if earlier["fingerprint"] != claim.fingerprint:
            raise Conflict(
                f"This Idempotency-Key was used for {earlier['id']} with a different request; "
                "use a new key for a new request."
            )
        return earlier["id"]


def _encode(resource_id: str, request_fingerprint: str, *, pending: bool) -> bytes:
    return orjson.dumps({"id": resource_id, "fingerprint": request_fingerprint, "pending": pending})


def _decode(raw: Any) -> dict[str, Any] | None:
    """A binding, or None for none (expired meanwhile) or one in an older format."""
    with contextlib.suppress(orjson.JSONDecodeError, TypeError):
        value = orjson.loads(raw) if raw is not None else None
        if isinstance(value, dict) and {"id", "fingerprint", "pending"} <= value.keys():
            return value
    return None
