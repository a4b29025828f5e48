"""Predictions in TensorFlow Serving's REST dialect: models are jobs, checkpoints are versions.

`<model>` is a job id, or a job name (its newest succeeded job); a version is a checkpoint's
epoch number; `best`, `latest` and `final` are labels. Every answer about one version carries
`X-Model-Version`.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, request, send_file

from core.cursors import decode_cursor, encode_cursor
from core.errors import FieldError, InvalidRequest, NotFound
from core.jobs import describe_record
from core.serving import catalog, classify, tfserving
from core.serving.cache import LoadedModel
from core.serving.export import export_savedmodel
from core.serving.signature import TensorInfo
from service import servables
from service.auth import can_see
from service.http import json_response, page_args, query_int
from service.servables import MAX_VERSION, answering, manifests, tagged, version_number
from service.state import settings

bp = Blueprint("tfserving", __name__)

# TensorFlow's DataType names, as TF Serving's metadata writes them.
TF_DTYPES = {
    "float16": "DT_HALF",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "bool": "DT_BOOL",
}
DOWNLOAD_FORMATS = ("keras", "savedmodel")
METHODS = ("predict", "classify", "regress")
# More classes than any output a model may have: `k` above the count answers them all.
MAX_K = 1_000_000


def register(app: Flask) -> None:
    app.register_blueprint(bp)


def model_record(manifest: dict) -> dict:
    entries = catalog.version_entries(manifest)
    labels = catalog.label_versions(manifest)
    return {
        "id": manifest["id"],
        "name": manifest.get("name"),
        "status": manifest.get("status"),
        "versions": sorted(entries),
        "labels": labels,
        "default_version": labels.get(catalog.default_label(manifest)),
        "links": {"self": f"/v1/models/{manifest['id']}"},
    }


@bp.get("/v1/models")
def list_models() -> Response:
    """Jobs with a servable version, newest first, `?limit=&cursor=`."""
    limit, cursor = page_args()
    visible = sorted(
        (m for m in manifests().all() if can_see(m.get("owner")) and catalog.version_entries(m)),
        key=_order,
        reverse=True,
    )
    if cursor is not None:
        after = decode_cursor(cursor, str, str)
        visible = [m for m in visible if _order(m) < after]
    page = visible[:limit]
    more = len(visible) > limit
    return json_response(
        {
            "items": [model_record(m) for m in page],
            "next_cursor": encode_cursor(*_order(page[-1])) if more else None,
        }
    )


def _order(manifest: dict) -> tuple[str, str]:
    return (manifest.get("created_at") or "", manifest["id"])


def _version_status(version: int) -> dict:
    return {
        "version": str(version),
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }


@bp.get("/v1/models/<model>")
def model_status(model: str) -> Response:
    """TF Serving's `model_version_status`: every servable version, newest first."""
    found = servables.find(model)
    versions = sorted(catalog.version_entries(found.manifest), reverse=True)
    return tagged(
        json_response({"model_version_status": [_version_status(v) for v in versions]}),
        found.servable.version,
    )


@bp.get("/v1/models/<model>/versions/<version>")
@bp.get("/v1/models/<model>/labels/<label>")
def version_status(model: str, version: str | None = None, label: str | None = None) -> Response:
    servable = servables.find(model, version_number(version), label).servable
    return tagged(
        json_response({"model_version_status": [_version_status(servable.version)]}),
        servable.version,
    )


def _tensor_info(info: TensorInfo, prefix: str) -> dict:
    return {
        "dtype": TF_DTYPES.get(info.dtype, info.dtype),
        "tensor_shape": {
            "dim": [{"size": str(size), "name": ""} for size in info.batch_shape()],
            "unknown_rank": False,
        },
        "name": f"{prefix}{info.name}:0",
    }


def describe(info: TensorInfo) -> dict:
    """One input or output in plain form: name, dtype, shape with -1 for the batch."""
    return {"name": info.name, "dtype": info.dtype, "shape": info.batch_shape()}


@bp.get("/v1/models/<model>/metadata")
@bp.get("/v1/models/<model>/versions/<version>/metadata")
@bp.get("/v1/models/<model>/labels/<label>/metadata")
def model_metadata(model: str, version: str | None = None, label: str | None = None) -> Response:
    """TF Serving's signature_def metadata, plus `inputs`/`outputs` in plain form."""
    found = servables.find(model, version_number(version), label)
    loaded = servables.load(found)
    signature = {
        "inputs": {i.name: _tensor_info(i, "serving_default_") for i in loaded.inputs},
        "outputs": {o.name: _tensor_info(o, "StatefulPartitionedCall:") for o in loaded.outputs},
        "method_name": "tensorflow/serving/predict",
    }
    document = {
        "model_spec": {"name": model, "signature_name": "", "version": _version(loaded)},
        "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
        "inputs": [describe(i) for i in loaded.inputs],
        "outputs": [describe(o) for o in loaded.outputs],
        "labels": servables.labels(found),
        "record": describe_record(found.manifest),
    }
    return tagged(json_response(document), loaded.servable.version)


@bp.post("/v1/models/<model>:predict")
@bp.post("/v1/models/<model>/versions/<version>:predict")
@bp.post("/v1/models/<model>/labels/<label>:predict")
def predict(model: str, version: str | None = None, label: str | None = None) -> Response:
    """`{"instances": ...}` -> `{"predictions": ...}`, `{"inputs": ...}` -> `{"outputs": ...}`."""
    body = servables.prediction_body()
    loaded = servables.load(servables.find(model, version_number(version), label))
    with answering(loaded.servable.version):
        batch, layout = tfserving.parse_predict(body, loaded.inputs, settings().max_predict_rows)
        outputs = loaded.run(batch)
    answer = tfserving.render_predict(outputs, loaded.outputs, layout)
    return tagged(json_response(answer), loaded.servable.version)


@bp.post("/v1/models/<model>:classify")
@bp.post("/v1/models/<model>/versions/<version>:classify")
@bp.post("/v1/models/<model>/labels/<label>:classify")
def classify_rows(model: str, version: str | None = None, label: str | None = None) -> Response:
    """The predict body (or `examples`) -> `{"result": [[[class, score], ...] per row]}`, best
    first, the top `?k=` (default all), named as the training labels were."""
    k = query_int("k", MAX_K, 1, MAX_K)
    body = servables.prediction_body()
    found = servables.find(model, version_number(version), label)
    loaded = servables.load(found)
    kept = servables.labels(found)
    with answering(loaded.servable.version):
        kind = classify.score_kind(loaded.outputs, classify.output_activation(loaded.model))
        batch = classify.parse_request(body, loaded.inputs, kept, settings().max_predict_rows)
        outputs = loaded.run(batch)
    scores = classify.class_scores(outputs[loaded.outputs[0].name], kind)
    answer = classify.render_classify(scores, kept["classes"], k)
    return tagged(json_response(answer), loaded.servable.version)


@bp.post("/v1/models/<model>:regress")
@bp.post("/v1/models/<model>/versions/<version>:regress")
@bp.post("/v1/models/<model>/labels/<label>:regress")
def regress_rows(model: str, version: str | None = None, label: str | None = None) -> Response:
    """The predict body (or `examples`) of a one-value model -> `{"result": [value per row]}`."""
    body = servables.prediction_body()
    found = servables.find(model, version_number(version), label)
    loaded = servables.load(found)
    with answering(loaded.servable.version):
        classify.check_regression(loaded.outputs)
        batch = classify.parse_request(
            body, loaded.inputs, servables.labels(found), settings().max_predict_rows
        )
        outputs = loaded.run(batch)
    answer = classify.render_regress(outputs[loaded.outputs[0].name])
    return tagged(json_response(answer), loaded.servable.version)


@bp.post("/v1/models/<model>")
@bp.post("/v1/models/<model>/versions/<version>")
@bp.post("/v1/models/<model>/labels/<label>")
def unknown_method(model: str, version: str | None = None, label: str | None = None) -> Response:
    """A POST whose `:method` is none of TF Serving's: a 404 that lists them (Flask would answer
    405, as if POST were the fault)."""
    last = label or version or model
    known = ", ".join(f":{name}" for name in METHODS)
    if ":" not in last:
        raise NotFound(
            f"POST needs a method after the model, one of {known} "
            "(for example /v1/models/<model>:predict).",
            code="unknown_method",
        )
    method = last.rpartition(":")[2]
    raise NotFound(
        f"Unknown method :{method[:64]}; the methods are {known}.", code="unknown_method"
    )


@bp.get("/v1/models/<model>/download")
@bp.get("/v1/models/<model>/versions/<version>/download")
@bp.get("/v1/models/<model>/labels/<label>/download")
def download(model: str, version: str | None = None, label: str | None = None) -> Response:
    """`?format=keras` (the checked file as saved) or `savedmodel` (a `.tar.gz`)."""
    fmt = request.args.get("format", "keras")
    if fmt not in DOWNLOAD_FORMATS:
        raise _bad_query("format", f"one of {list(DOWNLOAD_FORMATS)}", fmt)
    number = version_number(version)
    if "version" in request.args:
        number, label = query_int("version", 0, 0, MAX_VERSION), None
    found = servables.find(model, number, label)
    servable = found.servable
    name = f"{servable.job_id}-v{servable.version}"
    with answering(servable.version):
        if fmt == "keras":
            response = send_file(
                servable.verified_path(),
                mimetype="application/octet-stream",
                as_attachment=True,
                download_name=f"{name}.keras",
                etag=str(servable.entry.get("sha256")),
            )
        else:
            response = send_file(
                export_savedmodel(
                    servables.model_cache().get(servable), settings().export_cache_bytes
                ),
                mimetype="application/gzip",
                as_attachment=True,
                download_name=f"{name}.savedmodel.tar.gz",
            )
    return tagged(response, servable.version)


def _version(loaded: LoadedModel) -> str:
    return str(loaded.servable.version)


def _bad_query(name: str, expected: str, received: str) -> InvalidRequest:
    return InvalidRequest(
        f"Bad query parameter {name}.",
        errors=[FieldError(f"/{name}", f"{name} is not valid", expected, received)],
    )
