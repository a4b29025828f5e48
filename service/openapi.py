"""The OpenAPI 3.1 document at `/openapi.json`, and a docs page at `/docs` that renders it.

The job request's schema is the grammar's own (`core.grammar.grammar_schema()`), so the document
cannot drift from what `POST /v1/jobs` accepts. Request schemas are closed where the API refuses
unknown keys; responses are described by the keys they always carry. Every operation declares
its problem documents (RFC 9457) as the `default` response.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import swagger_ui_bundle
from flask import Blueprint, Flask, Response, current_app, send_from_directory

from core import sweeps
from core.archives import COLOR_MODES, MAX_SIDE, ON_BAD_IMAGE
from core.batch import BatchView
from core.datasets import STATUSES as DATASET_STATUSES
from core.downloads import FORMATS
from core.jobs import STATUSES, JobView, Labels, ModelRecord
from core.serving.catalog import LABELS
from core.sweeps import SweepView
from core.typeschema import json_schema
from core.uploads import CHECKSUM_ALGORITHMS
from core.usage import UsageView
from service.http import json_response
from service.uploads import PATCH_TYPE, TUS_EXTENSIONS, TUS_VERSION

bp = Blueprint("openapi", __name__)
DOCS = Path(__file__).parent / "static" / "docs"

ID_PATTERN = "^[0-9a-f]{32}$"
PROBLEM = "application/problem+json"
JSON = "application/json"

# The Keras docs' first model (Dense 32 he_normal, relu, Dense 10, softmax, RMSprop) on a dataset
# with a 784-feature `x` and integer labels `y`.
SEED_MODEL_REQUEST: dict[str, Any] = {
    "name": "seed-mlp",
    "seed": 42,
    "model": {
        "input_shape": [784],
        "layers": [
            {"class_name": "Dense", "config": {"units": 32, "kernel_initializer": "he_normal"}},
            {"class_name": "Activation", "config": {"activation": "relu"}},
            {"class_name": "Dense", "config": {"units": 10}},
            {"class_name": "Activation", "config": {"activation": "softmax"}},
        ],
    },
    "compile": {
        "optimizer": {"class_name": "RMSprop", "config": {"learning_rate": 0.001}},
        "loss": "categorical_crossentropy",
        "metrics": ["accuracy"],
    },
    "fit": {"batch_size": 128, "epochs": 1, "validation_split": 0.1},
    "data": {
        "dataset": "0123456789abcdef0123456789abcdef",
        "x": "x",
        "y": "y",
        "preprocess": {"y": {"one_hot": 10}},
    },
}


def get_document() -> dict:
    """The document, built once per app by `register`."""
    return current_app.extensions["fitserve.openapi"]


@bp.get("/openapi.json")
def openapi_document() -> Response:
    return json_response(get_document())


@bp.get("/docs")
def docs_page() -> Response:
    """Swagger UI over /openapi.json, every file served from this package and swagger-ui-bundle."""
    return send_from_directory(DOCS, "index.html", mimetype="text/html")


@bp.get("/docs/init.js")
def docs_script() -> Response:
    return send_from_directory(DOCS, "init.js", mimetype="text/javascript")


@bp.get("/docs/assets/<path:name>")
def docs_asset(name: str) -> Response:
    return send_from_directory(swagger_ui_bundle.swagger_ui_path, name)


def register(app: Flask) -> None:
    app.extensions["fitserve.openapi"] = build_document()
    app.register_blueprint(bp)


# The document ---------------------------------------------------------------------------------


@functools.cache
def build_document() -> dict:
    """OpenAPI 3.1: every API route, its parameters, bodies, answers and problems (built once
    per process: it depends on the code alone)."""
    from core.grammar import grammar_schema

    grammar = grammar_schema()
    definitions = grammar.pop("$defs", {})
    grammar.pop("$schema", None)
    schemas = {_component_name(name): schema for name, schema in definitions.items()}
    schemas["JobRequest"] = grammar
    schemas.update(_component_schemas())
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "fitserve",
            "version": _version(),
            "description": (
                "Train Keras models from JSON specs on GPU workers and serve their predictions "
                "(TF Serving REST and Open Inference Protocol v2). Every error is an RFC 9457 "
                "problem document whose `errors` locate each bad field by JSON pointer."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{}, {"apiKey": []}],
        "tags": [
            {"name": name}
            for name in (
                "health",
                "datasets",
                "uploads",
                "jobs",
                "batch-predictions",
                "storage",
                "models",
                "v2",
            )
        ],
        "paths": _paths(),
        "components": {
            "schemas": _rebase(schemas),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key, when the server has FITSERVE_API_KEYS set.",
                }
            },
            "responses": {
                "Problem": {
                    "description": "A problem document (RFC 9457).",
                    "content": {PROBLEM: {"schema": _ref("Problem")}},
                }
            },
        },
    }


def _version() -> str:
    try:
        return importlib.metadata.version("fitserve")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _component_name(definition: str) -> str:
    """A grammar definition's name as a component's (`vector_initializer`: VectorInitializer)."""
    return "".join(part.capitalize() for part in definition.split("_"))


def _rebase(value: Any) -> Any:
    """The grammar's `#/$defs/x` references point into components once its $defs move there."""
    if isinstance(value, dict):
        return {
            key: (
                "#/components/schemas/" + _component_name(item.rsplit("/", 1)[1])
                if key == "$ref" and item.startswith("#/$defs/")
                else _rebase(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_rebase(item) for item in value]
    return value


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None, **extra: Any) -> dict:
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
        **extra,
    }


def _page(item: dict) -> dict:
    return _object({"items": {"type": "array", "items": item}, "next_cursor": _text_or_null()})


def _text_or_null() -> dict:
    return {"type": ["string", "null"]}


def _component_schemas() -> dict[str, dict]:
    field_error = _object(
        {"path": {"type": "string"}, "message": {"type": "string"}},
        {"expected": {}, "received": {}},
    )
    any_object = {"type": "object"}
    job_id = {"type": "string", "pattern": ID_PATTERN}
    return {
        "Problem": _object(
            {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
                "code": {"type": "string"},
            },
            {
                "request_id": _text_or_null(),
                "error": {"type": "string"},
                "errors": {"type": "array", "items": _ref("FieldError")},
            },
        ),
        "FieldError": field_error,
        "Dataset": _object(
            {
                "id": job_id,
                "created_at": {"type": "string"},
                "source": any_object,
                "rows": {"type": ["integer", "null"]},
                "bytes": {"type": "integer"},
                "arrays": {"type": "object", "additionalProperties": any_object},
            },
            {
                "owner": _text_or_null(),
                "classes": {
                    "type": "object",
                    "description": "Label array -> class names, in id order (CSV strings, "
                    "image folders).",
                },
                "features": {
                    "type": "object",
                    "description": "Feature array -> a CSV's column names, in column order.",
                },
                "status": {
                    "enum": list(DATASET_STATUSES),
                    "description": "processing (an archive or import being read), ready, or "
                    "failed; absent in manifests from before statuses, which are ready.",
                },
                "error": _nullable(
                    _object(
                        {"message": {"type": "string"}},
                        {"member": _text_or_null(), "code": {"type": "string"}, "errors": {}},
                    )
                ),
                "options": any_object,
                "skipped": _object(
                    {"count": {"type": "integer"}, "members": {"type": "array"}},
                    description="Archive members skipped with on_bad_image=skip.",
                ),
            },
        ),
        "DatasetPage": _page(_ref("Dataset")),
        "ImportDataset": _object(
            {
                "import": {
                    "type": "string",
                    "description": "A file or folder inside FITSERVE_IMPORT_DIR (admin keys).",
                }
            },
            {"label": {"type": "string"}, "name": {"type": "string"}, **_image_options()},
            additionalProperties=False,
        ),
        "UploadDataset": _object(
            {
                "upload": {
                    "type": "string",
                    "pattern": ID_PATTERN,
                    "description": "A finished resumable upload (/v1/uploads).",
                }
            },
            {"label": {"type": "string"}, "name": {"type": "string"}, **_image_options()},
            additionalProperties=False,
        ),
        "JsonDataset": {
            "type": "object",
            "properties": {
                "arrays": {
                    "type": "object",
                    "description": "Array name -> nested lists of numbers (or label strings).",
                    "additionalProperties": {"type": "array"},
                }
            },
            "required": ["arrays"],
            "additionalProperties": False,
            "example": {"arrays": {"x": [[0.1, 0.2], [0.3, 0.4]], "y": [0, 1]}},
        },
        "BatchPredictionRequest": {
            "type": "object",
            "properties": {
                "model": {"type": "string", "description": "A job id, or a job name."},
                "version": {
                    "anyOf": [{"type": "integer", "minimum": 1}, {"enum": list(LABELS)}],
                    "description": "A version or label (default: final, else latest).",
                },
                "dataset": {"type": "string", "pattern": ID_PATTERN},
                "x": {
                    "anyOf": [
                        {"type": "string"},
                        {"type": "object", "additionalProperties": {"type": "string"}},
                    ],
                    "description": "The array the model reads (default x), or a map from "
                    "each model input to an array.",
                },
                "batch_size": {"type": "integer", "minimum": 1},
            },
            "required": ["model", "dataset"],
            "additionalProperties": False,
            "example": {
                "model": "seed-mlp",
                "dataset": "0123456789abcdef0123456789abcdef",
                "x": "x",
                "batch_size": 4096,
            },
        },
        "BatchPrediction": json_schema(BatchView),
        "BatchPredictionPage": _page(_ref("BatchPrediction")),
        "Job": json_schema(JobView),
        "Usage": json_schema(UsageView),
        "JobPage": _page(_ref("Job")),
        "SweepRequest": _sweep_request(),
        "Sweep": json_schema(SweepView),
        "SweepPage": _page(_ref("Sweep")),
        "ModelRecord": json_schema(ModelRecord),
        "ModelLabels": json_schema(Labels),
        "JobMetrics": _object(
            {
                "epochs": {"type": "array", "items": {"type": "integer"}},
                "history": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "array",
                        "items": {"type": ["number", "null"]},
                    },
                },
            }
        ),
        "JobEvent": {
            "type": "object",
            "description": "One Server-Sent Event. `event` is its kind: status (status, "
            "previous, reason), attempt_started, training_started, epoch (epoch, metrics), "
            "checkpoint (version, partial), stopped (reason, epoch, best_epoch, monitor: why "
            "training ended), interrupted (reason, epoch: a shutdown), requeued. `data` is the "
            "event as JSON, with `kind` and `time`; `id` is what Last-Event-ID takes.",
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
                "event": {"type": "string"},
                "data": {"type": "string", "contentMediaType": JSON},
                "retry": {"type": "integer"},
            },
        },
        "JobLogs": _object({"lines": {"type": "array", "items": {"type": "string"}}}),
        "ModelSummary": any_object,
        "PredictRequest": {
            "type": "object",
            "description": "TF Serving's row (`instances`) or columnar (`inputs`) format.",
            "properties": {
                "instances": {"type": "array"},
                "inputs": {},
                "signature_name": {"enum": ["", "serving_default"]},
            },
            "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
            "additionalProperties": False,
            "example": {"instances": [[0.0, 0.5, 1.0]]},
        },
        "PredictResponse": {
            "type": "object",
            "properties": {"predictions": {}, "outputs": {}},
        },
        "ModelStatus": _object(
            {"model_version_status": {"type": "array", "items": any_object, "minItems": 1}}
        ),
        "ModelMetadata": _object(
            {
                "model_spec": any_object,
                "metadata": any_object,
                "inputs": {"type": "array", "items": any_object},
                "outputs": {"type": "array", "items": any_object},
                "labels": _ref("ModelLabels"),
                "record": _ref("ModelRecord"),
            }
        ),
        "ClassifyRequest": {
            "description": "A predict body, or TF Serving's `examples` (with an optional shared "
            "`context`), each an object of features: the model's input names, or the CSV "
            "columns a one-input model was trained on.",
            "oneOf": [
                _ref("PredictRequest"),
                _object(
                    {"examples": {"type": "array", "items": {"type": "object"}, "minItems": 1}},
                    {
                        "context": {"type": "object"},
                        "signature_name": {"enum": ["", "serving_default"]},
                    },
                    additionalProperties=False,
                ),
            ],
            "example": {"examples": [{"sepal_length": 5.1, "sepal_width": 3.5}]},
        },
        "ClassifyResponse": _object(
            {
                "result": {
                    "type": "array",
                    "description": "Per row, [class, score] pairs, best first; a class is its "
                    "name where the training labels had names, else its id as a string.",
                    "items": {
                        "type": "array",
                        "items": {
                            "type": "array",
                            "description": "[class, score]",
                            "items": {"type": ["string", "number"]},
                            "minItems": 2,
                            "maxItems": 2,
                        },
                    },
                }
            }
        ),
        "RegressResponse": _object(
            {"result": {"type": "array", "items": {"type": "number"}}},
        ),
        "ModelPage": _page(any_object),
        "InferTensor": _object(
            {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string"},
            },
            {"data": {"type": "array"}, "parameters": any_object},
        ),
        "InferRequest": _object(
            {"inputs": {"type": "array", "items": _ref("InferTensor"), "minItems": 1}},
            {
                "id": {"type": "string"},
                "parameters": any_object,
                "outputs": {
                    "type": "array",
                    "items": _object({"name": {"type": "string"}}, {"parameters": any_object}),
                },
            },
            example={
                "id": "1",
                "inputs": [
                    {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [0, 0.5, 1]}
                ],
            },
        ),
        "InferResponse": _object(
            {
                "model_name": {"type": "string"},
                "outputs": {"type": "array", "items": any_object},
            },
            {"model_version": {"type": "string"}, "id": {"type": "string"}},
        ),
        "V2ModelMetadata": _object(
            {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": any_object},
                "outputs": {"type": "array", "items": any_object},
                "parameters": _ref("ModelLabels"),
                "record": _ref("ModelRecord"),
            }
        ),
    }


def _sweep_request() -> dict:
    """`POST /v1/sweeps`'s body, from the constants `core.sweeps.parse_sweep` checks against."""
    bounds = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    scalar = {"type": ["string", "number", "boolean", "null"]}
    dimension = {
        "oneOf": [
            _object({"float": bounds}, {"log": {"type": "boolean"}}, additionalProperties=False),
            _object(
                {"int": {**bounds, "items": {"type": "integer"}}},
                {"step": {"type": "integer", "minimum": 1}},
                additionalProperties=False,
            ),
            _object(
                {
                    "choice": {
                        "type": "array",
                        "items": scalar,
                        "minItems": 1,
                        "maxItems": sweeps.MAX_CHOICES,
                    }
                },
                additionalProperties=False,
            ),
        ]
    }
    return _object(
        {
            "base": _ref("JobRequest"),
            "space": {
                "type": "object",
                "description": "JSON pointers into `base` -> the values each may take. Trial 0 "
                "is `base` itself, so each dimension holds the base's value.",
                "minProperties": 1,
                "maxProperties": sweeps.MAX_DIMENSIONS,
                "additionalProperties": dimension,
            },
            "objective": _object(
                {"metric": {"type": "string"}},
                {"mode": {"enum": list(sweeps.MODES)}},
                additionalProperties=False,
            ),
        },
        {
            "name": {"type": "string", "minLength": 1, "maxLength": sweeps.MAX_NAME_CHARS},
            "sampler": {"enum": list(sweeps.SAMPLERS)},
            "pruner": {"enum": list(sweeps.PRUNERS)},
            "max_trials": {"type": "integer", "minimum": 1},
            "max_concurrent": {"type": "integer", "minimum": 1},
            "seed": {"type": "integer", "minimum": 0, "maximum": sweeps.MAX_SEED},
            "priority": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        additionalProperties=False,
    )


# Paths ----------------------------------------------------------------------------------------


def _path_parameter(name: str, schema: dict, description: str) -> dict:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def _query(name: str, schema: dict, description: str) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


JOB_ID = _path_parameter("job_id", {"type": "string", "pattern": ID_PATTERN}, "A job id.")
SWEEP_ID = _path_parameter("sweep_id", {"type": "string", "pattern": ID_PATTERN}, "A sweep id.")
UPLOAD_ID = _path_parameter(
    "upload_id", {"type": "string", "pattern": ID_PATTERN}, "A resumable upload's id."
)


def _tus_header(name: str, schema: dict, description: str, *, required: bool = True) -> dict:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "schema": schema,
        "description": description,
    }


TUS_RESUMABLE = _tus_header(
    "Tus-Resumable", {"const": TUS_VERSION}, "The tus version the client speaks (else 412)."
)
_HEADER_INT = {"type": "string", "pattern": "^[0-9]{1,18}$"}
_TUS_ANSWER = {"Tus-Resumable": {"schema": {"const": TUS_VERSION}}}


def _tus_answer(description: str, headers: Sequence[str]) -> dict:
    """An empty tus answer and the headers it carries."""
    named = {name: {"schema": {"type": "string"}} for name in headers}
    return {"description": description, "headers": {**_TUS_ANSWER, **named}}


def _tus_operation(
    summary: str, status: int, answer: dict, parameters: Sequence[dict], **extra: Any
) -> dict:
    operation = _operation(summary, "uploads", {}, parameters=parameters)
    operation["responses"] = {str(status): answer, **operation["responses"]}
    return operation | extra


def _upload_paths() -> dict[str, dict]:
    """The tus 1.0 routes: empty answers whose meaning is in their headers."""
    chunk = {
        PATCH_TYPE: {
            "schema": {"type": "string", "format": "binary"},
            "description": "The next bytes of the file, from Upload-Offset.",
        }
    }
    checksum = _tus_header(
        "Upload-Checksum",
        {"type": "string"},
        f"'<algorithm> <base64 digest>' of this chunk, algorithm one of {CHECKSUM_ALGORITHMS}; "
        "a mismatch is a 460 and the chunk is discarded.",
        required=False,
    )
    options = _operation("The tus server's capabilities.", "uploads", {})
    options["responses"] = {
        "204": _tus_answer(
            f"tus {TUS_VERSION}: {TUS_EXTENSIONS}",
            ["Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm"],
        ),
        **options["responses"],
    }
    return {
        "/v1/uploads": {
            "options": options,
            "post": _tus_operation(
                "Create a resumable upload (tus 1.0 creation); it expires unless written to.",
                201,
                _tus_answer("Created", ["Location", "Upload-Expires"]),
                [
                    TUS_RESUMABLE,
                    _tus_header("Upload-Length", _HEADER_INT, "The file's size in bytes."),
                    _tus_header(
                        "Upload-Metadata",
                        {"type": "string"},
                        "Comma-separated 'key base64value' pairs (filename is kept).",
                        required=False,
                    ),
                ],
            ),
        },
        "/v1/uploads/{upload_id}": {
            "head": _tus_operation(
                "The offset to resume from.",
                200,
                _tus_answer(
                    "The upload's state",
                    ["Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Expires"],
                ),
                [UPLOAD_ID, TUS_RESUMABLE],
            ),
            "patch": _tus_operation(
                "Append a chunk at Upload-Offset (409 if it is not the upload's offset).",
                204,
                _tus_answer("Appended", ["Upload-Offset", "Upload-Expires"]),
                [
                    UPLOAD_ID,
                    TUS_RESUMABLE,
                    _tus_header("Upload-Offset", _HEADER_INT, "The upload's current offset."),
                    checksum,
                ],
                requestBody={"required": True, "content": chunk},
            ),
            "delete": _tus_operation(
                "Remove an upload (tus termination).",
                204,
                _tus_answer("Removed", []),
                [UPLOAD_ID, TUS_RESUMABLE],
            ),
        },
    }


DATASET_ID = _path_parameter(
    "dataset_id", {"type": "string", "pattern": ID_PATTERN}, "A dataset id."
)
BATCH_ID = _path_parameter(
    "batch_id", {"type": "string", "pattern": ID_PATTERN}, "A batch prediction id."
)
MODEL = _path_parameter(
    "model",
    {"type": "string", "pattern": ID_PATTERN},
    "A model: the id of the job that made it, or of a sweep (its best trial's job).",
)
VERSION = _path_parameter(
    "version", {"type": "integer", "minimum": 1}, "A checkpoint version (epochs completed)."
)
LABEL = _path_parameter("label", {"enum": list(LABELS)}, "A version label.")
V2_VERSION = _path_parameter(
    "version",
    {"anyOf": [{"type": "string", "pattern": "^[1-9][0-9]{0,8}$"}, {"enum": list(LABELS)}]},
    "A version number or label.",
)
PAGE = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "Items per page."),
    _query("cursor", {"type": "string"}, "The next_cursor of the previous page."),
]
IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
    "description": "Repeat a submit safely: the same key answers with the first result.",
}


def _operation(
    summary: str,
    tag: str,
    answers: Mapping[int, tuple[str, str | tuple[str, ...] | None, dict | None]],
    *,
    parameters: Sequence[dict] = (),
    body: dict | None = None,
) -> dict:
    """One operation: `answers` maps a status to (description, media type(s), schema)."""
    responses: dict[str, Any] = {}
    for status, (description, media, schema) in answers.items():
        responses[str(status)] = {"description": description}
        if media is not None:
            kinds = (media,) if isinstance(media, str) else media
            responses[str(status)]["content"] = {kind: {"schema": schema or {}} for kind in kinds}
    responses["default"] = {"$ref": "#/components/responses/Problem"}
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    return operation


def _image_options() -> dict[str, dict]:
    """The image archive options, from the parser's own choices (core.archives)."""
    return {
        "image_size": {
            "type": "string",
            "pattern": r"^\s*[0-9]+\s*,\s*[0-9]+\s*$",
            "description": f"Archives: 'H,W', each 1 to {MAX_SIDE}; every image resized to it.",
        },
        "color_mode": {"enum": list(COLOR_MODES), "default": "rgb"},
        "crop_to_aspect_ratio": {"enum": ["true", "false"], "default": "false"},
        "on_bad_image": {"enum": list(ON_BAD_IMAGE), "default": "refuse"},
    }


def _json(schema_name: str, description: str = "OK") -> tuple[str, str, dict]:
    return (description, JSON, _ref(schema_name))


def _job_body() -> dict:
    return {
        JSON: {
            "schema": _ref("JobRequest"),
            "examples": {
                "seed_model": {"summary": "The Keras docs' seed MLP", "value": SEED_MODEL_REQUEST}
            },
        }
    }


def _clone_operation() -> dict:
    """`:clone`: a merge patch over the job's raw request, or the `{"patch", "set"}` envelope."""
    patch = {
        "type": "object",
        "description": "A JSON Merge Patch (RFC 7396) over the job's request: null removes a "
        "key, an object merges, anything else replaces.",
    }
    envelope = _object(
        {},
        {
            "patch": patch,
            "set": {
                "type": "object",
                "description": "JSON pointers into the request (after the patch) and the value "
                "each sets; they reach array elements, which a merge patch replaces whole.",
                "propertyNames": {"pattern": "^/"},
            },
        },
        additionalProperties=False,
    )
    operation = _operation(
        "Submit a new job from this job's request with changes; the new job has cloned_from.",
        "jobs",
        {
            202: _json("Job", "Queued"),
            200: _json("Job", "Cloned earlier (Idempotency-Key)"),
        },
        parameters=[JOB_ID, IDEMPOTENCY],
        body={
            "application/merge-patch+json": {"schema": patch},
            JSON: {
                "schema": {
                    "anyOf": [envelope, patch],
                    "description": "With a top-level patch or set key, the envelope; "
                    "otherwise a merge patch.",
                },
                "examples": {
                    "patch": {"value": {"fit": {"epochs": 20}}},
                    "set": {"value": {"set": {"/model/layers/0/config/units": 64}}},
                },
            },
        },
    )
    operation["requestBody"]["required"] = False
    return operation


def _paths() -> dict[str, dict]:
    predict_body = {JSON: {"schema": _ref("PredictRequest")}}
    infer_body = {
        JSON: {"schema": _ref("InferRequest")},
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": "The binary tensor data extension: a JSON header of "
            "Inference-Header-Content-Length bytes, then the tensors.",
        },
    }
    download = {
        200: (
            "The model file: .keras, or a SavedModel as a .tar.gz.",
            ("application/octet-stream", "application/gzip"),
            {"type": "string", "format": "binary"},
        )
    }
    download_query = [
        _query("format", {"enum": ["keras", "savedmodel"]}, "The file format."),
        _query("version", {"type": "integer", "minimum": 1}, "A version, instead of the path's."),
    ]
    paths: dict[str, dict] = {
        "/healthz": {
            "get": _operation(
                "The process answers.", "health", {200: ("OK", JSON, {"type": "object"})}
            )
        },
        "/readyz": {
            "get": _operation(
                "Redis and the data folder are usable; the workers seen.",
                "health",
                {200: ("Ready", JSON, {"type": "object"})},
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics of every API process.",
                "health",
                {200: ("Metrics", "text/plain", {"type": "string"})},
            )
        },
        "/openapi.json": {
            "get": _operation(
                "This document.", "health", {200: ("OpenAPI 3.1", JSON, {"type": "object"})}
            )
        },
        "/v1/datasets": {
            "post": _operation(
                "Upload a dataset (.npz, .npy, .csv, image archive, JSON arrays), make one of a "
                "finished resumable upload, or import one.",
                "datasets",
                {
                    201: _json("Dataset", "Stored (status ready)"),
                    202: _json("Dataset", "An image archive or import, status processing"),
                    200: _json("Dataset", "Stored earlier (Idempotency-Key)"),
                },
                parameters=[IDEMPOTENCY],
                body={
                    "multipart/form-data": {
                        "schema": _object(
                            {"file": {"type": "string", "format": "binary"}},
                            {
                                "label": {
                                    "type": "string",
                                    "description": "CSV: the label column.",
                                },
                                "name": {
                                    "type": "string",
                                    "description": ".npy: the array's name.",
                                },
                                **_image_options(),
                            },
                        )
                    },
                    JSON: {
                        "schema": {
                            "oneOf": [
                                _ref("JsonDataset"),
                                _ref("UploadDataset"),
                                _ref("ImportDataset"),
                            ]
                        }
                    },
                },
            ),
            "get": _operation(
                "Datasets, newest first.", "datasets", {200: _json("DatasetPage")}, parameters=PAGE
            ),
        },
        "/v1/datasets/{dataset_id}": {
            "get": _operation(
                "A dataset's manifest.",
                "datasets",
                {200: _json("Dataset")},
                parameters=[DATASET_ID],
            ),
            "delete": _operation(
                "Delete a dataset no live job uses.",
                "datasets",
                {204: ("Deleted", None, None)},
                parameters=[DATASET_ID],
            ),
        },
        "/v1/datasets/{dataset_id}/download": {
            "get": _operation(
                "Download a dataset, streamed: every array as .npz, one as .npy, or a CSV "
                "with a header (a column per feature).",
                "datasets",
                {
                    200: (
                        "The file",
                        ("application/zip", "application/octet-stream", "text/csv"),
                        {"type": "string", "format": "binary"},
                    )
                },
                parameters=[
                    DATASET_ID,
                    _query("format", {"enum": list(FORMATS)}, "The file format (default npz)."),
                    _query("array", {"type": "string"}, "npy: the array (needed if several)."),
                ],
            ),
        },
        "/v1/batch-predictions": {
            "post": _operation(
                "Score a stored dataset with a model on the workers; the result is a dataset.",
                "batch-predictions",
                {202: _json("BatchPrediction", "Queued")},
                body={JSON: {"schema": _ref("BatchPredictionRequest")}},
            ),
            "get": _operation(
                "Batch predictions, newest first.",
                "batch-predictions",
                {200: _json("BatchPredictionPage")},
                parameters=PAGE,
            ),
        },
        "/v1/batch-predictions/{batch_id}": {
            "get": _operation(
                "A batch prediction: status, rows done, result dataset.",
                "batch-predictions",
                {200: _json("BatchPrediction")},
                parameters=[BATCH_ID],
            ),
            "delete": _operation(
                "Delete a finished batch prediction (its result dataset stays).",
                "batch-predictions",
                {204: ("Deleted", None, None)},
                parameters=[BATCH_ID],
            ),
        },
        "/v1/batch-predictions/{batch_id}:cancel": {
            "post": _operation(
                "Cancel a batch prediction (a running one stops after its current chunk).",
                "batch-predictions",
                {202: _json("BatchPrediction", "Cancelling or cancelled")},
                parameters=[BATCH_ID],
            ),
        },
        "/v1/jobs:validate": {
            "post": _operation(
                "Check a job request; the model's summary.",
                "jobs",
                {200: _json("ModelSummary")},
                body=_job_body(),
            ),
        },
        "/v1/jobs": {
            "post": _operation(
                "Submit a training job.",
                "jobs",
                {
                    202: _json("Job", "Queued"),
                    200: _json("Job", "Submitted earlier (Idempotency-Key)"),
                },
                parameters=[IDEMPOTENCY],
                body=_job_body(),
            ),
            "get": _operation(
                "Jobs, newest first.",
                "jobs",
                {200: _json("JobPage")},
                parameters=[
                    *PAGE,
                    _query("status", {"enum": list(STATUSES)}, "Only jobs in this status."),
                    {
                        **_query(
                            "tag",
                            {"type": "array", "items": {"type": "string", "pattern": "^[^:]+:"}},
                            "Only jobs carrying this tag, as key:value; repeat it for several "
                            "(every one must match).",
                        ),
                        "style": "form",
                        "explode": True,
                    },
                ],
            ),
        },
        "/v1/jobs/{job_id}": {
            "get": _operation(
                "A job, its progress and its model record.",
                "jobs",
                {200: _json("Job")},
                parameters=[JOB_ID],
            ),
            "delete": _operation(
                "Delete a finished job and its files.",
                "jobs",
                {204: ("Deleted", None, None)},
                parameters=[JOB_ID],
            ),
        },
        "/v1/jobs/{job_id}/metrics": {
            "get": _operation(
                "Each epoch's metrics.", "jobs", {200: _json("JobMetrics")}, parameters=[JOB_ID]
            ),
        },
        "/v1/jobs/{job_id}/logs": {
            "get": _operation(
                "The tail of the job's training log.",
                "jobs",
                {200: _json("JobLogs")},
                parameters=[
                    JOB_ID,
                    _query("tail", {"type": "integer", "minimum": 1, "maximum": 10_000}, "Lines."),
                ],
            ),
        },
        "/v1/jobs/{job_id}/events": {
            "get": _operation(
                "Server-Sent Events: status changes, epochs and checkpoints. Reconnect with "
                "Last-Event-ID to miss nothing.",
                "jobs",
                {
                    200: ("An event stream", "text/event-stream", _ref("JobEvent")),
                    204: ("The job is over and Last-Event-ID was its last event.", None, None),
                },
                parameters=[
                    JOB_ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"},
                        "description": "The id of the last event received.",
                    },
                ],
            ),
        },
        "/v1/jobs/{job_id}:clone": {"post": _clone_operation()},
        "/v1/jobs/{job_id}:cancel": {
            "post": _operation(
                "Cancel a job.",
                "jobs",
                {202: _json("Job", "Cancelling or cancelled")},
                parameters=[JOB_ID],
            ),
        },
        "/v1/sweeps": {
            "post": _operation(
                "Submit a hyperparameter sweep: each trial is a job made from `base`.",
                "sweeps",
                {202: _json("Sweep", "Running")},
                body={JSON: {"schema": _ref("SweepRequest")}},
            ),
            "get": _operation(
                "Sweeps, newest first.", "sweeps", {200: _json("SweepPage")}, parameters=PAGE
            ),
        },
        "/v1/sweeps/{sweep_id}": {
            "get": _operation(
                "A sweep: its trials, their states and objectives, and its best job.",
                "sweeps",
                {200: _json("Sweep")},
                parameters=[SWEEP_ID],
            ),
            "delete": _operation(
                "Delete a finished sweep and its study (its trials' jobs stay).",
                "sweeps",
                {204: ("Deleted", None, None)},
                parameters=[SWEEP_ID],
            ),
        },
        "/v1/sweeps/{sweep_id}:cancel": {
            "post": _operation(
                "Cancel a sweep: no new trial starts and the live ones are cancelled.",
                "sweeps",
                {202: _json("Sweep", "Cancelling")},
                parameters=[SWEEP_ID],
            ),
        },
        "/v1/jobs/{job_id}:pin": {
            "post": _operation(
                "Keep a finished job past FITSERVE_JOB_TTL_SECONDS until unpinned.",
                "jobs",
                {200: _json("Job", "Pinned")},
                parameters=[JOB_ID],
            ),
        },
        "/v1/jobs/{job_id}:unpin": {
            "post": _operation(
                "Let a pinned job expire again, FITSERVE_JOB_TTL_SECONDS after it finished.",
                "jobs",
                {200: _json("Job", "Unpinned")},
                parameters=[JOB_ID],
            ),
        },
        "/v1/usage": {
            "get": _operation(
                "What this key stores (datasets, jobs, checkpoints, export caches) against its "
                "quota (FITSERVE_STORAGE_QUOTA_BYTES; past it, new uploads and jobs are 507).",
                "storage",
                {200: _json("Usage")},
            ),
        },
        "/v1/models": {
            "get": _operation(
                "Models (jobs with a servable version).",
                "models",
                {200: _json("ModelPage")},
                parameters=PAGE,
            ),
        },
    }
    for suffix, parameters in (
        ("", [MODEL]),
        ("/versions/{version}", [MODEL, VERSION]),
        ("/labels/{label}", [MODEL, LABEL]),
    ):
        base = "/v1/models/{model}" + suffix
        paths[base] = {
            "get": _operation(
                "TF Serving model status.",
                "models",
                {200: _json("ModelStatus")},
                parameters=parameters,
            ),
            "post": _operation(
                "Any other method than :predict, :classify or :regress (for example "
                "`:explain`): a 404 problem that lists them.",
                "models",
                {404: ("Unknown method (code `unknown_method`).", PROBLEM, _ref("Problem"))},
                parameters=parameters,
            ),
        }
        paths[base + "/metadata"] = {
            "get": _operation(
                "TF Serving metadata and the model record.",
                "models",
                {200: _json("ModelMetadata")},
                parameters=parameters,
            )
        }
        paths[base + ":predict"] = {
            "post": _operation(
                "TF Serving predict.",
                "models",
                {200: _json("PredictResponse")},
                parameters=parameters,
                body=predict_body,
            )
        }
        paths[base + ":classify"] = {
            "post": _operation(
                "TF Serving classify: each row's classes with their scores, best first.",
                "models",
                {200: _json("ClassifyResponse")},
                parameters=[
                    *parameters,
                    _query(
                        "k",
                        {"type": "integer", "minimum": 1},
                        "Only the k most likely classes of each row (default: all).",
                    ),
                ],
                body={JSON: {"schema": _ref("ClassifyRequest")}},
            )
        }
        paths[base + ":regress"] = {
            "post": _operation(
                "TF Serving regress: one value per row, for a model of one output of one unit.",
                "models",
                {200: _json("RegressResponse")},
                parameters=parameters,
                body={JSON: {"schema": _ref("ClassifyRequest")}},
            )
        }
        paths[base + "/download"] = {
            "get": _operation(
                "Download the model.", "models", download, parameters=[*parameters, *download_query]
            )
        }
    paths["/v2"] = {
        "get": _operation("OIP server metadata.", "v2", {200: ("OK", JSON, {"type": "object"})})
    }
    paths["/v2/health/live"] = {
        "get": _operation("OIP liveness.", "v2", {200: ("OK", JSON, {"type": "object"})})
    }
    paths["/v2/health/ready"] = {
        "get": _operation("OIP readiness.", "v2", {200: ("OK", JSON, {"type": "object"})})
    }
    for suffix, parameters in (("", [MODEL]), ("/versions/{version}", [MODEL, V2_VERSION])):
        base = "/v2/models/{model}" + suffix
        paths[base] = {
            "get": _operation(
                "OIP model metadata and the model record.",
                "v2",
                {200: _json("V2ModelMetadata")},
                parameters=parameters,
            )
        }
        paths[base + "/ready"] = {
            "get": _operation(
                "OIP model readiness (loads it).",
                "v2",
                {200: ("OK", JSON, {"type": "object"})},
                parameters=parameters,
            )
        }
        paths[base + "/infer"] = {
            "post": _operation(
                "OIP inference (JSON, or the binary tensor data extension).",
                "v2",
                {200: _json("InferResponse")},
                parameters=[
                    *parameters,
                    {
                        "name": "Inference-Header-Content-Length",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "Bytes of JSON before the binary tensors.",
                    },
                ],
                body=infer_body,
            )
        }
    paths.update(_upload_paths())
    for path, item in paths.items():
        if not path.startswith(("/v1", "/v2")):
            for operation in item.values():
                operation["security"] = []
    return paths
