"""Fixtures every test package shares: a private Redis, settings on a temp data folder, the app,
and the library of trained models.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from core.jobs import JobStore
from core.settings import Settings
from core.storage import DataDir
from tests.support.models import model_library
from tests.support.processes import redis_server

# CI replays the same examples every run, so a submission's result does not depend on luck;
# local runs explore new ones (and a failure prints the blob that reproduces it).
hypothesis.settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for the session, on a free port, never the machine's own."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    """The session Redis, emptied before the test."""
    redis.Redis.from_url(redis_url).flushall()
    return redis_url


@pytest.fixture
def settings(tmp_path: Path, clean_redis: str) -> Settings:
    return Settings(redis_url=clean_redis, data_dir=tmp_path / "data")


@pytest.fixture
def store(settings: Settings) -> JobStore:
    """The job store over the session Redis and the test's data folder."""
    data = DataDir(settings.data_dir)
    data.ensure()
    return JobStore(redis.Redis.from_url(settings.redis_url), data, settings)


class ReadingClient(FlaskClient):
    """Reads and closes each response, as an HTTP client does; `buffered=False` to stream.

    Flask's default leaves a sent file open until its response is closed, which a test that
    reads `.data` never does: the file is then closed by the GC, with a ResourceWarning.
    """

    def open(self, *args: Any, buffered: bool = True, **kwargs: Any) -> TestResponse:
        return super().open(*args, buffered=buffered, **kwargs)


@pytest.fixture
def app(settings: Settings) -> Flask:
    from service import create_app

    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    app.test_client_class = ReadingClient
    return app.test_client()


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataDir, dict[str, str]]:
    """The trained jobs of tests.support.models, built once: their data folder, ids by kind."""
    root = tmp_path_factory.getbasetemp()
    jobs = model_library(root)
    return DataDir(root / "model-library"), jobs
