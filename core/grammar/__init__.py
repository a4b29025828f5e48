"""The request grammar: parsing, shapes and parameter counts, data checks, model building.

`parse_job` reads a whole job request into the normalized spec of DESIGN.md, with what it read
and worked out on the way (`ParsedJob`), or raises `InvalidRequest` carrying every error found,
each located by a JSON pointer into the request. `parse_job_request` is its spec alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.errors import FieldError, FieldErrors, InvalidRequest, escape_pointer
from core.grammar.allowlist import (
    PRIORITY,
    REQUEST_KEYS,
    REQUEST_NAME,
    SEED,
    TAGS,
    WARM_START_KINDS,
    resource_kinds,
)
from core.grammar.compile import parse_compile
from core.grammar.fit import check_fit_with_compile, parse_fit
from core.grammar.kinds import INVALID, Place, check_arguments
from core.grammar.model import ParsedModel, parse_model
from core.grammar.schema import grammar_schema
from core.grammar.shapes import infer_model, summarize
from core.settings import Settings

if TYPE_CHECKING:
    from core.warmstart import FindSource

__all__ = ["ParsedJob", "grammar_schema", "parse_job", "parse_job_request"]


@dataclasses.dataclass(frozen=True)
class ParsedJob:
    """A valid job request as the parse left it, so nothing after it reads or infers again."""

    spec: dict[str, Any]
    """The normalized request."""
    manifests: dict[str, dict]
    """The manifest of each dataset it reads, by id, read once each."""
    summary: dict[str, Any]
    """The model as built (preprocessing layers in front): layers, shapes, parameter counts."""
    cost: dict[str, Any]
    """What it will cost a worker (core.cost), within the worker's budget."""


def parse_job_request(
    body: Any,
    *,
    settings: Settings,
    manifest_of: Callable[[str], dict],
    find_source: FindSource | None = None,
) -> dict[str, Any]:
    """The normalized spec of a job request (`parse_job(...).spec`)."""
    return parse_job(body, settings=settings, manifest_of=manifest_of, find_source=find_source).spec


def parse_job(
    body: Any,
    *,
    settings: Settings,
    manifest_of: Callable[[str], dict],
    find_source: FindSource | None = None,
) -> ParsedJob:
    """Parse a job request; InvalidRequest with every error at once.

    `manifest_of(dataset_id)` returns a dataset's manifest or raises NotFound. `find_source`
    resolves a `warm_start` source (core.warmstart; NotFound for a job the caller cannot see);
    without it a warm start's source is left as the request names it, unchecked.
    """
    manifests: dict[str, dict] = {}

    def read_once(dataset_id: str) -> dict:
        if dataset_id not in manifests:
            manifests[dataset_id] = manifest_of(dataset_id)
        return manifests[dataset_id]

    errors = FieldErrors()
    place = Place(errors)
    if not isinstance(body, dict):
        place.refuse(body, "a JSON object with model, compile, fit and data")
        raise _invalid(errors)
    for key in body:
        if key not in REQUEST_KEYS:
            place.refuse_key(key, list(REQUEST_KEYS), "key")
    spec = _parse_header(body, place, settings)
    parsed = _parse_model_section(body, place, settings)
    outputs = parsed.model["outputs"] if parsed else None
    spec["model"] = parsed.model if parsed else INVALID
    spec["compile"] = _parse_compile_section(body, place, parsed, outputs)
    spec["fit"] = parse_fit(body.get("fit"), place.at("fit"), settings)
    check_fit_with_compile(spec["fit"], spec["compile"], place.at("fit"))
    summary = _infer(parsed, settings, errors) if parsed is not None and not errors else None
    if parsed is not None and summary is None:
        errors.extend(_reshape_hints(body.get("data"), parsed.model["inputs"]))
    _parse_data_sections(body, spec, settings, read_once, errors, summary)
    if errors or summary is None or parsed is None:
        raise _invalid(errors)
    from core.cost import cost_errors, estimate_cost  # core.cost reads core.grammar.shapes

    cost = estimate_cost(spec, settings, read_once)
    errors.extend(cost_errors(cost, parsed.paths))
    if spec["warm_start"] not in (None, INVALID) and find_source is not None:
        from core.warmstart import check_warm_start

        spec["warm_start"] = check_warm_start(spec, find_source, place.at("warm_start"))
    if errors:
        raise _invalid(errors)
    if spec["data"]["preprocess"]["x"]:
        summary = summarize(spec)
    return ParsedJob(spec, manifests, summary, cost)


def _invalid(errors: FieldErrors) -> InvalidRequest:
    count = len(errors) + errors.omitted
    return InvalidRequest(
        f"The job request is invalid: {count} error{'s' if count != 1 else ''}.", errors=errors
    )


def _parse_header(body: dict[str, Any], place: Place, settings: Settings) -> dict[str, Any]:
    """`name`, `seed`, `priority`, `resources`, `tags` and `warm_start`, with their defaults."""
    name = body.get("name")
    resources = check_arguments(
        body.get("resources"),
        resource_kinds(settings.max_gpus_per_job),
        place.at("resources").inside("resources"),
        "resource",
    )
    return {
        "name": None if name is None else REQUEST_NAME.check(name, place.at("name")),
        "seed": SEED.check(body.get("seed"), place.at("seed")),
        "priority": PRIORITY.check(body.get("priority", 5), place.at("priority")),
        "resources": resources
        if resources is INVALID
        else {"gpus": 1, "mixed_precision": False, **resources},
        "tags": TAGS.check({} if body.get("tags") is None else body["tags"], place.at("tags")),
        "warm_start": _parse_warm_start(body.get("warm_start"), place.at("warm_start")),
    }


def _parse_warm_start(value: Any, place: Place) -> Any:
    """`warm_start` as the request gives it, with its defaults (best version, not strict)."""
    if value is None:
        return None
    checked = check_arguments(value, WARM_START_KINDS, place.inside("warm_start"), "key")
    if checked is INVALID:
        return INVALID
    return {"version": "best", "strict": False, **checked}


def _parse_model_section(
    body: dict[str, Any], place: Place, settings: Settings
) -> ParsedModel | None:
    if "model" not in body:
        place.at("model").refuse(None, "a model", "The request has no model.")
        return None
    return parse_model(body["model"], place.at("model"), settings.max_layers)


def _parse_compile_section(
    body: dict[str, Any], place: Place, parsed: ParsedModel | None, outputs: list[str] | None
) -> Any:
    """`compile`, else the `compile_config` a to_json() model carries, else an error."""
    if "compile" in body:
        return parse_compile(body["compile"], place.at("compile"), outputs)
    if parsed is not None and parsed.compile_config:
        at = Place(place.errors, parsed.compile_path)
        return parse_compile(parsed.compile_config, at, outputs, keras_form=True)
    if parsed is None:
        return INVALID
    return place.at("compile").refuse(
        None, "an object with optimizer, loss and metrics", "The request has no compile section."
    )


def _infer(
    parsed: ParsedModel, settings: Settings, errors: list[FieldError]
) -> dict[str, Any] | None:
    """Shapes and parameter counts, only for a model that parsed cleanly; its summary."""
    try:
        return infer_model(parsed.model, settings, paths=parsed.paths)
    except InvalidRequest as error:
        errors.extend(error.errors)
        return None


def _reshape_hints(data: Any, inputs: list[dict[str, Any]]) -> list[FieldError]:
    """When the model does not infer and `data.preprocess.x.reshape` gives its input another
    shape than the one declared: the input shape must be the shape after the reshape."""
    preprocess = data.get("preprocess") if isinstance(data, dict) else None
    steps = preprocess.get("x") if isinstance(preprocess, dict) else None
    if not isinstance(steps, dict):
        return []
    single = len(inputs) == 1 and "reshape" in steps
    per_input = {inputs[0]["name"]: steps} if single else steps
    hints = []
    for given in inputs:
        own = per_input.get(given["name"])
        target = own.get("reshape") if isinstance(own, dict) else None
        if not isinstance(target, list) or target == given["shape"]:
            continue
        at = "/data/preprocess/x" + ("" if single else f"/{escape_pointer(given['name'])}")
        hints.append(
            FieldError(
                f"{at}/reshape",
                f"data.preprocess.x.reshape turns each row into shape {target} before the "
                f"model's first layer, so the model's input shape must be {target}, the shape "
                f"after the reshape; input {given['name']!r} declares {given['shape']} (the "
                f"array's own row shape goes in the data, not in the model). Set the input "
                f"shape to {target}.",
                f"input shape {target}",
                given["shape"],
            )
        )
    return hints


def _parse_data_sections(
    body: dict[str, Any],
    spec: dict[str, Any],
    settings: Settings,
    manifest_of: Callable[[str], dict],
    errors: list[FieldError],
    summary: dict[str, Any] | None,
) -> None:
    """`data` and `checkpoint`, checked against the dataset manifests (core.grammar.data);
    `summary`: the model's, inferred already (None when it did not infer)."""
    from core.grammar.data import parse_checkpoint, parse_data

    try:
        spec["data"] = parse_data(
            body.get("data"), spec, settings=settings, manifest_of=manifest_of, summary=summary
        )
    except InvalidRequest as error:
        spec["data"] = INVALID
        errors.extend(error.errors)
    try:
        spec["checkpoint"] = parse_checkpoint(body.get("checkpoint"), spec, settings=settings)
    except InvalidRequest as error:
        errors.extend(error.errors)
