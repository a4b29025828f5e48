"""The servable lookup both prediction dialects share: a model name to its job, version and
loaded model, as values the routes pass on.

Every answer about one version says which in `X-Model-Version`: `tagged` marks a response, and
errors raised while a version answers (`answering`) carry the header too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, current_app

from core.errors import FitserveError, NotFound
from core.jobs import Labels, job_labels
from core.serving import catalog
from core.serving.cache import LoadedModel, ModelCache
from core.serving.catalog import Servable
from core.storage import DataDir
from core.sweeps import best_job
from service.auth import by_session, can_see, viewer
from service.http import json_body, path_int
from service.state import data_dir, sweep_store

VERSION_HEADER = "X-Model-Version"
# How long a lookup's answer is reused: a new checkpoint, or a new succeeded job of a name, is
# served after at most this long (plus the new version's load, while the older one answers).
LOOKUP_SECONDS = 0.25

# Versions are epoch numbers; nine digits leave room for any epoch cap.
MAX_VERSION = 999_999_999


@dataclasses.dataclass(frozen=True)
class Found:
    """A request's model: its job's manifest, the version it names, whether that follows `latest`
    (a request that names no version or label, of a job that has not finished)."""

    manifest: dict[str, Any]
    servable: Servable
    follows_latest: bool


def register(app: Flask) -> None:
    """Give the app its model cache, manifest reader and recent lookups (one each per process)."""
    app.extensions["fitserve.models"] = ModelCache(app.config["FITSERVE"])
    app.extensions["fitserve.manifests"] = catalog.Manifests(app.extensions["fitserve.data"])
    app.extensions["fitserve.lookups"] = catalog.TimedCache(LOOKUP_SECONDS)


def model_cache() -> ModelCache:
    return current_app.extensions["fitserve.models"]


def manifests() -> catalog.Manifests:
    return current_app.extensions["fitserve.manifests"]


def find_job(model: str) -> dict[str, Any]:
    """The manifest of the job `model` names (an id, or a name: its newest succeeded job; or a
    sweep's id: its best trial's job) if this caller may see it, else 404."""
    try:
        return manifests().find_model(model, can_see)
    except NotFound:
        best = _best_job_of_sweep(model)
        if best is None:
            raise
        return manifests().find_model(best, can_see)


def _best_job_of_sweep(model: str) -> str | None:
    """The best trial's job of the sweep `model` names, if it is one this caller may see."""
    try:
        sweep = sweep_store().get(model)
    except NotFound:
        return None
    return best_job(sweep) if can_see(sweep["owner"]) else None


def version_number(segment: str | None) -> int | None:
    """A path's version segment as its number (a 422 at `/path/version` unless ASCII digits in
    range); None when the path names no version."""
    return None if segment is None else path_int("version", segment, MAX_VERSION)


def find(model: str, version: int | None = None, label: str | None = None) -> Found:
    """The version a request names: a version number, a label, or the job's default.

    The answer is reused for LOOKUP_SECONDS for the same request from the same viewer, so a
    prediction reads no manifest, and a new checkpoint is served within that time.
    """
    lookups: catalog.TimedCache[tuple, Found] = current_app.extensions["fitserve.lookups"]
    return lookups.get((model, version, label, viewer()), lambda: _find(model, version, label))


def _find(model: str, version: int | None, label: str | None) -> Found:
    manifest = find_job(model)
    servable = catalog.resolve_version(data_dir(), manifest, version=version, label=label)
    follows = version is None and (label or catalog.default_label(manifest)) == "latest"
    return Found(manifest, servable, follows)


def load(found: Found) -> LoadedModel:
    """The loaded model; a request that follows `latest` keeps the older version while the newer
    one loads, so the version that answers may be older than the one found."""
    cache = model_cache()
    with answering(found.servable.version):
        if found.follows_latest:
            return cache.get_newest(found.servable)
        return cache.get(found.servable)


def labels(found: Found) -> Labels:
    """The class and feature names the model's job kept (all null for older jobs)."""
    return _kept_labels(data_dir(), found.manifest["id"])


# `job.json` never changes once written, so its labels are read once per process.
@functools.lru_cache(maxsize=1024)
def _kept_labels(data: DataDir, job_id: str) -> Labels:
    return job_labels(data, job_id)


@contextlib.contextmanager
def answering(version: int) -> Iterator[None]:
    """Errors raised inside (a file that fails to load, inputs the model refuses) name `version`
    in `X-Model-Version`, as the answer would have."""
    try:
        yield
    except FitserveError as error:
        error.headers[VERSION_HEADER] = str(version)
        raise


def tagged(response: Response, version: int) -> Response:
    """Say which version answered."""
    response.headers[VERSION_HEADER] = str(version)
    return response


def prediction_body() -> Any:
    """A prediction's JSON body, whatever its Content-Type says, as TF Serving and Triton take
    it (`curl -d` sends form-urlencoded, Triton's client sends none).

    A request the dashboard's cookie authorizes keeps the rules of the rest of the API: its CSRF
    token (checked in `service.auth`) and `application/json`, a type no cross-site form sends.
    """
    return json_body(any_type=not by_session())
