"""Idempotency-Keys over a real Redis: claimed before anything is made, replayed for the same
request, refused for a different one or while the first is in progress."""

from __future__ import annotations

import pytest
import redis

from core.errors import Conflict
from core.idempotency import CLAIM_SECONDS, KEEP_SECONDS, IdempotencyKeys, fingerprint

REQUEST = fingerprint({"name": "a", "seed": 1})


@pytest.fixture
def keys(clean_redis: str) -> IdempotencyKeys:
    return IdempotencyKeys(redis.Redis.from_url(clean_redis), "jobs")


def make(keys: IdempotencyKeys, key: str, resource: str, request: str = REQUEST) -> str | None:
    """One request under `key`: the earlier resource it replays, or None when it made one."""
    with keys.claim("ann", key, request, exists=lambda _: True) as claim:
        if claim.earlier is None:
            claim.bind(resource)
        return claim.earlier


def test_the_same_request_replays_the_first_resource(keys):
    assert make(keys, "k", "first") is None
    assert make(keys, "k", "second") == "first"
    assert 0 < keys.redis.ttl(keys.key_name("ann", "k")) <= KEEP_SECONDS


def test_key_order_does_not_change_the_fingerprint():
    assert fingerprint({"a": 1, "b": [2]}) == fingerprint({"b": [2], "a": 1})


def test_a_different_request_under_the_key_is_a_conflict(keys):
    make(keys, "k", "first")
    with pytest.raises(Conflict, match="first"):
        make(keys, "k", "second", fingerprint({"name": "b"}))


def test_keys_are_scoped_by_owner_and_kind(keys):
    make(keys, "k", "first")
    with keys.claim("bob", "k", REQUEST, exists=lambda _: True) as claim:
        assert claim.earlier is None
    datasets = IdempotencyKeys(keys.redis, "datasets")
    with datasets.claim("ann", "k", REQUEST, exists=lambda _: True) as claim:
        assert claim.earlier is None


def test_a_request_in_progress_holds_its_key(keys):
    with keys.claim("ann", "k", REQUEST, exists=lambda _: True):
        assert 0 < keys.redis.ttl(keys.key_name("ann", "k")) <= CLAIM_SECONDS
        with pytest.raises(Conflict, match="in progress"):
            make(keys, "k", "second")


def test_a_failed_or_unbound_request_frees_its_key(keys):
    with pytest.raises(RuntimeError), keys.claim("ann", "k", REQUEST, exists=lambda _: True):
        raise RuntimeError("storing failed")
    with keys.claim("ann", "k", REQUEST, exists=lambda _: True):
        pass
    assert make(keys, "k", "made") is None


def test_a_key_whose_resource_is_gone_is_free_again(keys):
    make(keys, "k", "deleted")
    with keys.claim("ann", "k", REQUEST, exists=lambda _: False) as claim:
        assert claim.earlier is None
        claim.bind("new")
    assert make(keys, "k", "other") == "new"


def test_without_a_key_nothing_is_stored(keys):
    with keys.claim("ann", None, REQUEST, exists=lambda _: True) as claim:
        claim.bind("made")
    assert keys.redis.dbsize() == 0
