"""The `compile` section: optimizer, losses and metrics per output, with Keras's argument names."""

from __future__ import annotations

from typing import Any

from core.grammar.allowlist import LOSS, METRIC, NON_NEGATIVE, OPTIMIZER, OPTIMIZER_CLASSES
from core.grammar.kinds import (
    INVALID,
    Choice,
    Integer,
    Kind,
    Place,
)

JIT_COMPILE = Choice((True, False, "auto"))
STEPS_PER_EXECUTION = Integer(1, 10_000)
LOSS_WEIGHT = NON_NEGATIVE
COMPILE_KEYS = (
    "optimizer", "loss", "loss_weights", "metrics", "weighted_metrics", "jit_compile",
    "steps_per_execution",
)  # fmt: skip
# What `compile_config` in a model's to_json() carries besides: accepted at its default only.
COMPILE_CONFIG_EXTRA = {"run_eagerly": Choice((False,))}
_BY_LOWER = {name.lower(): name for name in OPTIMIZER_CLASSES}


def parse_compile(
    value: Any, place: Place, outputs: list[str] | None, *, keras_form: bool = False
) -> Any:
    """Normalize `compile` (or a model's `compile_config`); `outputs` None when the model failed."""
    place = place.inside("compile")
    if not isinstance(value, dict):
        return place.refuse(value, "an object with optimizer, loss and metrics")
    allowed = COMPILE_KEYS + (tuple(COMPILE_CONFIG_EXTRA) if keras_form else ())
    bad = False
    for key in value:
        if key not in allowed:
            place.refuse_key(key, list(allowed), "key")
            bad = True
    if "loss" not in value or value["loss"] is None:
        place.at("loss").refuse(None, "a loss, or one loss per output", "compile needs a loss.")
        bad = True
    if keras_form and "run_eagerly" in value:
        bad |= (
            COMPILE_CONFIG_EXTRA["run_eagerly"].check(value["run_eagerly"], place.at("run_eagerly"))
            is INVALID
        )
    result = {
        "optimizer": _optimizer(value.get("optimizer", "rmsprop"), place.at("optimizer")),
        "loss": _per_output(value.get("loss"), place.at("loss"), outputs, LOSS, single=True),
        "loss_weights": _per_output(
            value.get("loss_weights"), place.at("loss_weights"), outputs, LOSS_WEIGHT, single=False
        ),
        "metrics": _metrics(value.get("metrics"), place.at("metrics"), outputs),
        "weighted_metrics": _metrics(
            value.get("weighted_metrics"), place.at("weighted_metrics"), outputs
        ),
        "jit_compile": JIT_COMPILE.check(value.get("jit_compile", "auto"), place.at("jit_compile")),
        "steps_per_execution": STEPS_PER_EXECUTION.check(
            value.get("steps_per_execution", 1), place.at("steps_per_execution")
        ),
    }
    if bad or any(v is INVALID for v in result.values()):
        return INVALID
    return result


def _optimizer(value: Any, place: Place) -> Any:
    """Always `{"class_name", "config"}`: a bare name becomes its class with Keras's defaults."""
    result = OPTIMIZER.check(value, place)
    if isinstance(result, str):
        return {"class_name": _BY_LOWER.get(result, result), "config": {}}
    if result is not INVALID:
        return _check_optimizer_config(result, place.at("config"))
    return result


_CLIPS = ("clipnorm", "clipvalue", "global_clipnorm")


def _check_optimizer_config(optimizer: dict[str, Any], place: Place) -> Any:
    """Keras's rules across arguments, checked here so the optimizer never fails to build."""
    config = optimizer["config"]
    clips = [name for name in _CLIPS if config.get(name) is not None]
    if len(clips) > 1:
        return place.at(clips[1]).refuse(
            config[clips[1]], f"only one of {', '.join(_CLIPS)}; {clips[0]} is set too"
        )
    schedule = config.get("learning_rate")
    if isinstance(schedule, dict) and schedule["class_name"] == "PiecewiseConstantDecay":
        values, boundaries = schedule["config"]["values"], schedule["config"]["boundaries"]
        if len(values) != len(boundaries) + 1:
            return (
                place.at("learning_rate")
                .at("config")
                .at("values")
                .refuse(values, f"one value more than the {len(boundaries)} boundaries")
            )
    return optimizer


def _per_output(
    value: Any, place: Place, outputs: list[str] | None, kind: Kind, *, single: bool
) -> Any:
    """One value for all outputs, a list in output order, or a dict keyed by output name.

    Lists become dicts keyed by output name, so the worker reads one shape.
    """
    if value is None:
        return None
    if isinstance(value, list):
        if outputs is not None and len(value) != len(outputs):
            return place.refuse(
                value, f"a list of {len(outputs)} entries, one per output ({', '.join(outputs)})"
            )
        items = [kind.check(v, place.at(i)) for i, v in enumerate(value)]
        if INVALID in items or outputs is None:
            return INVALID
        return dict(zip(outputs, items, strict=True))
    if isinstance(value, dict) and "class_name" not in value:
        return _keyed(value, place, outputs, lambda v, at: kind.check(v, at))
    if not single:
        return place.refuse(value, "a list or an object keyed by output name")
    return kind.check(value, place)


def _keyed(value: dict[str, Any], place: Place, outputs: list[str] | None, check: Any) -> Any:
    result, bad = {}, False
    for name, item in value.items():
        if outputs is not None and name not in outputs:
            place.refuse_key(name, outputs, "output")
            bad = True
            continue
        result[name] = check(item, place.at(name))
        bad |= result[name] is INVALID
    return INVALID if bad else result


def _metric_list(value: Any, place: Place) -> Any:
    if not isinstance(value, list):
        return place.refuse(value, "a list of metrics")
    items = [METRIC.check(v, place.at(i)) for i, v in enumerate(value)]
    return INVALID if INVALID in items else items


def _metrics(value: Any, place: Place, outputs: list[str] | None) -> Any:
    """A list for a single-output model; for several outputs a dict of lists (or list of lists)."""
    if value is None:
        return []
    several = outputs is not None and len(outputs) > 1
    if isinstance(value, dict):
        return _keyed(value, place, outputs, _metric_list)
    if several and isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return _per_output(value, place, outputs, _MetricList(), single=False)
    if several and value:
        return place.refuse(
            value, f"an object keyed by output name ({', '.join(outputs or [])}) of metric lists"
        )
    return _metric_list(value, place)


class _MetricList(Kind):
    expected = "a list of metrics"

    def check(self, value: Any, place: Place) -> Any:
        return _metric_list(value, place)

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": METRIC.schema()}
