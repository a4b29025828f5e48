"""The JSON Schema of a job request, generated from the kinds the parsers read.

Each section's schema comes from the same tables and kinds its parser checks with, so a value the
parser accepts is one the schema accepts. `data` and the per-output forms of `compile` depend on
the datasets and the model's outputs: the schema describes their form, the parser the rest.
"""

from __future__ import annotations

from typing import Any

from core.grammar.allowlist import (
    ACTIVATION,
    CONSTRAINT,
    CONV_INITIALIZER,
    DTYPE_POLICY,
    INITIALIZER,
    INPUT_DTYPE,
    LAYER_NAME,
    LAYERS,
    LOSS,
    OPTIMIZER,
    PRIORITY,
    REGULARIZER,
    REQUEST_NAME,
    SCHEDULE,
    SEED,
    TAGS,
    VECTOR_INITIALIZER,
    WARM_START_KINDS,
    resource_kinds,
)
from core.grammar.compile import JIT_COMPILE, STEPS_PER_EXECUTION
from core.grammar.data import CHECKPOINT_KINDS
from core.grammar.fit import fit_kinds
from core.grammar.kinds import KERAS_ENVELOPE, Shape, arguments_schema, keras_object_schema
from core.settings import Settings


def grammar_schema(settings: Settings | None = None) -> dict[str, Any]:
    """A JSON Schema (2020-12) of the job request; bounds that are settings come from `settings`
    (the defaults when None)."""
    settings = settings or Settings()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "fitserve job request",
        "type": "object",
        "$defs": {"layer": _layer_schema()},
        "properties": {
            "name": REQUEST_NAME.schema(),
            "seed": SEED.schema(),
            "priority": PRIORITY.schema(),
            "resources": arguments_schema(resource_kinds(settings.max_gpus_per_job)),
            "model": model_schema(),
            "compile": compile_schema(),
            "fit": arguments_schema(fit_kinds(settings)),
            "data": {"type": "object"},
            "checkpoint": arguments_schema(CHECKPOINT_KINDS),
            "tags": TAGS.schema(),
            "warm_start": {
                "anyOf": [
                    {**arguments_schema(WARM_START_KINDS), "type": "object"},
                    {"type": "null"},
                ]
            },
        },
        # compile may be left out when the model is a to_json() that carries compile_config.
        "required": ["model", "data"],
        "additionalProperties": False,
    }
    # Objects used in many places are spelled once under $defs: inline, the schema outgrows what
    # JSON Schema tools (schemathesis's generator among them) will expand.
    shared = {name: kind.schema() for name, kind in SHARED_KINDS.items()}
    schema = _referenced(schema, shared)
    schema["$defs"].update(shared)
    return schema


# What many layers and every optimizer take, by the name of its definition.
SHARED_KINDS = {
    "activation": ACTIVATION,
    "dtype_policy": DTYPE_POLICY,
    "initializer": INITIALIZER,
    "vector_initializer": VECTOR_INITIALIZER,
    "conv_initializer": CONV_INITIALIZER,
    "regularizer": REGULARIZER,
    "constraint": CONSTRAINT,
    "schedule": SCHEDULE,
}


def _referenced(node: Any, shared: dict[str, dict[str, Any]]) -> Any:
    """`node` with every copy of a `shared` schema replaced by a `$ref` to its definition."""
    if isinstance(node, dict):
        for name, part in shared.items():
            if node == part:
                return {"$ref": f"#/$defs/{name}"}
        return {key: _referenced(value, shared) for key, value in node.items()}
    if isinstance(node, list):
        return [_referenced(value, shared) for value in node]
    return node


def _layer_schema() -> dict[str, Any]:
    """One allowlisted layer: a branch per class for its config, and beside the branches what
    every layer shares (layer objects are open: Keras writes more). Spelled in each branch, the
    shared part makes the schema too large for generators to expand."""
    name = LAYER_NAME.schema()
    return {
        "type": "object",
        "properties": {**KERAS_ENVELOPE, "name": name, "inbound": {"type": "array", "items": name}},
        "anyOf": [
            keras_object_schema(class_name, arguments, closed=False, envelope=False)
            for class_name, arguments in LAYERS.items()
        ],
    }


def model_schema() -> dict[str, Any]:
    """The short Sequential form, or the outline of Keras's own `to_json()`."""
    short_model = {
        "type": "object",
        "properties": {
            "input_shape": Shape(variable=True).schema(),
            "input_dtype": INPUT_DTYPE.schema(),
            "layers": {"type": "array", "items": {"$ref": "#/$defs/layer"}, "minItems": 1},
        },
        "required": ["layers"],
        "additionalProperties": False,
    }
    keras_model = {
        "type": "object",
        "description": "The exact output of model.to_json() (Sequential or Functional).",
        "properties": {
            "class_name": {"enum": ["Sequential", "Functional"]},
            "config": {"type": "object"},
        },
        "required": ["class_name", "config"],
    }
    return {"anyOf": [short_model, keras_model]}


def compile_schema() -> dict[str, Any]:
    """Losses, loss weights and metrics may be given per output, by name or in output order."""
    keyed = {"anyOf": [{"type": "array"}, {"type": "object"}]}
    return {
        "type": "object",
        "properties": {
            "optimizer": OPTIMIZER.schema(),
            "loss": {"anyOf": [LOSS.schema(), keyed]},
            "loss_weights": {"anyOf": [keyed, {"type": "null"}]},
            "metrics": {"anyOf": [keyed, {"type": "null"}]},
            "weighted_metrics": {"anyOf": [keyed, {"type": "null"}]},
            "jit_compile": JIT_COMPILE.schema(),
            "steps_per_execution": STEPS_PER_EXECUTION.schema(),
        },
        "required": ["loss"],
        "additionalProperties": False,
    }
