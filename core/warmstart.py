"""Warm start: a new job begins from another job's weights, layer by layer, by name.

A request names a source (`{"job": "<id or name>", "version": "best" | "latest" | "final" | N,
"strict": false}`). At submit the source is found as the serving finds a model (a job id, else
the newest succeeded job of that name, the caller's own only) and its version resolved to a
number, which the normalized request keeps, so the worker loads exactly what was checked. The
worker copies every layer whose name and weight shapes match; with `strict`, every layer with
weights must match. Layers built with `trainable: false` stay frozen while the rest trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from core.checkpoints import CheckpointCorrupt
from core.errors import Conflict, FitserveError, NotFound
from core.grammar.kinds import Place
from core.grammar.shapes import summarize
from core.serving.catalog import resolve_version
from core.storage import DataDir, check_id, read_json
from core.training import TrainingFailed

if TYPE_CHECKING:
    import keras

FindManifest = Callable[[str], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class WarmSource:
    """The resolved source of a warm start: a job, one of its versions, and its normalized
    request (None when it cannot be read: the worker's check of the weights still holds)."""

    job_id: str
    version: int
    spec: dict[str, Any] | None


class FindSource(Protocol):
    """Finds a source job and version; NotFound (404) for a job the caller cannot see,
    `VersionMissing` for a version or label the job does not have."""

    def __call__(self, job: str, version: str | int) -> WarmSource: ...


class VersionMissing(ValueError):
    """The source job has no such version (yet): a 422 at /warm_start/version."""


def source_finder(find_manifest: FindManifest, data: DataDir) -> FindSource:
    """A `FindSource` over the job manifests on the volume, through the serving's own lookup.

    `find_manifest(model)` is the serving's name-or-id lookup for the caller (it raises NotFound
    for another key's job, exactly as for models).
    """

    def find(job: str, version: str | int) -> WarmSource:
        manifest = find_manifest(job)
        number, label = (version, None) if isinstance(version, int) else (None, version)
        try:
            servable = resolve_version(data, manifest, version=number, label=label)
        except (NotFound, Conflict) as error:
            raise VersionMissing(error.detail) from None
        try:
            spec = read_json(data.job(manifest["id"]) / "job.json")["spec"]
        except (OSError, ValueError, KeyError, TypeError):
            spec = None
        return WarmSource(manifest["id"], servable.version, spec)

    return find


def check_warm_start(spec: dict[str, Any], find_source: FindSource, place: Place) -> Any:
    """The normalized `warm_start` with the source resolved (`job` an id, `version` a number),
    or INVALID with the error recorded at `place` (/warm_start). A `strict` warm start whose
    layers cannot all load is refused here, naming them, when the shapes tell; the worker
    checks the weights themselves again."""
    request = spec["warm_start"]
    try:
        source = find_source(request["job"], request.get("version", "best"))
    except VersionMissing as error:
        return place.at("version").refuse(
            request.get("version", "best"),
            "a version or label the source job has",
            f"Cannot warm start from {request['job']!r}: {error}",
        )
    resolved = {"job": source.job_id, "version": source.version, "strict": request["strict"]}
    # Shapes are compared only for a request valid otherwise: its model must infer.
    if request["strict"] and not place.errors and source.spec is not None:
        mismatched = mismatched_layers(spec, source.spec)
        if mismatched:
            return place.at("strict").refuse(
                True,
                "layers whose names and weight shapes all match the source's, or strict false",
                f"A strict warm start needs every layer with weights to match one of job "
                f"{source.job_id}'s by name and shape; these do not: {', '.join(mismatched)}.",
            )
    return resolved


def mismatched_layers(spec: dict[str, Any], source_spec: dict[str, Any]) -> list[str]:
    """The new model's layers with weights that no layer of the source model matches by name,
    class, parameter count and output shape (shape inference of both requests: no weights)."""
    source = {row["name"]: row for row in summarize(source_spec)["layers"]}
    mismatched = []
    for row in summarize(spec)["layers"]:
        if row["params"] == 0:
            continue
        other = source.get(row["name"])
        same = other is not None and all(
            other[key] == row[key] for key in ("class_name", "params", "output_shape")
        )
        if not same:
            mismatched.append(row["name"])
    return mismatched


def warm_start_model(
    model: keras.Model, spec: dict[str, Any], data: DataDir
) -> dict[str, Any] | None:
    """Copy the source's weights into `model` (built and compiled, nothing trained yet).

    Returns the record's `warm_start` (`{"job", "version", "strict", "loaded", "skipped"}`), or
    None for a request without one. Raises `TrainingFailed` (reason `warm_start`) when the
    source is gone or a strict warm start finds a layer that does not match.
    """
    request = spec.get("warm_start")
    if not request:
        return None
    source = load_source(data, request["job"], request["version"])
    loaded, skipped = copy_weights(source, model)
    if request["strict"] and skipped:
        raise TrainingFailed(
            "warm_start",
            f"A strict warm start from job {request['job']} version {request['version']} "
            f"found layers whose names or weight shapes do not match: {', '.join(skipped)}.",
        )
    return {**request, "loaded": loaded, "skipped": skipped}


def load_source(data: DataDir, job_id: str, version: int) -> keras.Model:
    """The source version's model, from a file its manifest lists, after its sha256 check."""
    import keras

    try:
        manifest = read_json(data.job(check_id(job_id, "job")) / "manifest.json")
        servable = resolve_version(data, manifest, version=version)
        path = servable.verified_path()
    except (OSError, NotFound, Conflict, CheckpointCorrupt) as error:
        detail = error.detail if isinstance(error, FitserveError) else str(error)
        raise TrainingFailed(
            "warm_start",
            f"Cannot load version {version} of job {job_id} to warm start from: {detail} "
            "Submit again from a version that exists.",
        ) from error
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def copy_weights(source: keras.Model, model: keras.Model) -> tuple[list[str], list[str]]:
    """Set each layer of `model` that has weights from the source layer of the same name whose
    weights have the same shapes; returns (loaded, skipped) layer names in the model's order."""
    by_name = {layer.name: layer for layer in source.layers}
    loaded, skipped = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        other = by_name.get(layer.name)
        if other is not None and _shapes(other) == _shapes(layer):
            layer.set_weights(other.get_weights())
            loaded.append(layer.name)
        else:
            skipped.append(layer.name)
    return loaded, skipped


def _shapes(layer: Any) -> list[tuple[int, ...]]:
    return [tuple(weight.shape) for weight in layer.weights]
