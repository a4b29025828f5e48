"""`make run` says which Redis it uses and whether that Redis keeps its data."""

from __future__ import annotations

from pathlib import Path

import redis

from scripts.run_local import describe_redis
from tests.support.processes import redis_server


def test_a_redis_without_aof_is_named_with_a_warning(tmp_path: Path):
    with redis_server(tmp_path) as url:
        line = describe_redis(url)
    port = url.split(":")[-1].split("/")[0]
    assert f"at 127.0.0.1:{port}/0" in line
    assert "aof_enabled=0" in line
    assert "rdb save='off'" in line
    assert "warning: AOF is off" in line


def test_the_password_is_never_shown(tmp_path: Path):
    with redis_server(tmp_path) as url:
        redis.Redis.from_url(url).config_set("requirepass", "secret")
        line = describe_redis(url.replace("//", "//:secret@"))
    assert "aof_enabled=0" in line
    assert "secret" not in line


def test_a_redis_with_aof_is_named_without_a_warning(tmp_path: Path):
    with redis_server(tmp_path, "--appendonly", "yes", "--save", "900 1") as url:
        line = describe_redis(url)
    assert "aof_enabled=1" in line
    assert "rdb save='900 1'" in line
    assert "warning" not in line
