"""TF Serving's `:classify` and `:regress` over a model that predicts.

`:classify` answers `{"result": [[[class, score], ...] per row]}`, best first, with the class
names the job kept from its training data (else the ids as strings); `:regress` answers
`{"result": [value per row]}`. Both take the predict body, or TF Serving's own
`{"examples": [{feature: value}], "context": {...}}`, whose features are the model's input
names or, for one input read from a CSV, the CSV's column names.

A model whose output is not what the verb needs is refused before any pass, with what it has and
which verb fits it instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from core.errors import FieldError, InvalidRequest, PayloadTooLarge, pointer, preview
from core.jobs import Labels
from core.serving.signature import Batch, TensorInfo
from core.serving.tfserving import invalid, parse_predict, parse_rows

Scores = Literal["scores", "sigmoid"]
EXAMPLE_KEYS = ("examples", "context", "signature_name")


def output_activation(model: Any) -> str | None:
    """The name of the activation that makes a one-output model's output (`softmax`,
    `sigmoid`, `linear`...), None when the last layer has none (a Dense sets `linear`)."""
    if len(model.outputs) != 1:
        return None
    layer = model.outputs[0]._keras_history.operation
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None)


def _not_fitting(verb: str, detail: str, expected: str, received: Any) -> InvalidRequest:
    return InvalidRequest(
        detail,
        errors=[FieldError("", detail, expected, preview(received))],
        code=f"not_{verb}",
    )


def _described(outputs: Sequence[TensorInfo]) -> list[dict]:
    return [{"name": info.name, "shape": info.batch_shape()} for info in outputs]


def score_kind(outputs: Sequence[TensorInfo], activation: str | None) -> Scores:
    """How the one output holds class scores: one per class (rank 2, two or more units), or one
    sigmoid unit for class 1 of two. Anything else is a 422 that says why and what fits."""
    expected = (
        "one output of shape [-1, classes] (classes ≥ 2), or [-1, 1] with a sigmoid activation"
    )
    if len(outputs) != 1:
        raise _not_fitting(
            "classifier",
            f"This model has {len(outputs)} outputs; :classify needs one output of class scores. "
            "Use :predict.",
            expected,
            _described(outputs),
        )
    (info,) = outputs
    if len(info.shape) != 1 or info.shape[0] is None:
        raise _not_fitting(
            "classifier",
            f"The output {info.name!r} has shape {info.batch_shape()}, not one score per class "
            "([-1, classes]). Use :predict.",
            expected,
            _described(outputs),
        )
    if info.shape[0] >= 2:
        return "scores"
    if activation == "sigmoid":
        return "sigmoid"
    raise _not_fitting(
        "classifier",
        f"The output {info.name!r} is one unit without a sigmoid ({activation or 'none'}): a "
        "regression, not class scores. Use :regress.",
        expected,
        _described(outputs),
    )


def check_regression(outputs: Sequence[TensorInfo]) -> None:
    """A 422 unless the model has one output of one value per row."""
    shapes = [info.shape for info in outputs]
    if len(outputs) == 1 and shapes[0] in ((), (1,)):
        return
    raise _not_fitting(
        "regressor",
        f"This model's outputs are {_described(outputs)}; :regress needs one output of one value "
        "per row ([-1, 1]). Use :predict"
        + (", or :classify for class scores." if len(outputs) == 1 else "."),
        "one output of shape [-1, 1]",
        _described(outputs),
    )


def class_scores(array: np.ndarray, kind: Scores) -> np.ndarray:
    """Rows x classes: the output itself, or [1 - p, p] for one sigmoid unit."""
    scores = np.asarray(array, dtype=np.float64).reshape(len(array), -1)
    return np.concatenate([1.0 - scores, scores], axis=1) if kind == "sigmoid" else scores


def render_classify(scores: np.ndarray, classes: list[str] | None, k: int | None) -> dict:
    """TF Serving's classify answer: per row, [class, score] pairs by score, the top `k`."""
    names = classes if classes and len(classes) == scores.shape[1] else None
    labels = names or [str(index) for index in range(scores.shape[1])]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return {
        "result": [
            [[labels[index], float(row[index])] for index in ranks]
            for row, ranks in zip(scores, order, strict=True)
        ]
    }


def render_regress(array: np.ndarray) -> dict:
    """TF Serving's regress answer: one value per row."""
    return {"result": [float(value) for value in np.asarray(array).reshape(-1)]}


def parse_request(body: Any, inputs: Sequence[TensorInfo], labels: Labels, max_rows: int) -> Batch:
    """A classify or regress body: TF Serving's `examples`, or a predict body."""
    if isinstance(body, dict) and "examples" in body:
        return parse_examples(body, inputs, labels, max_rows)
    return parse_predict(body, inputs, max_rows)[0]


def parse_examples(
    body: dict, inputs: Sequence[TensorInfo], labels: Labels, max_rows: int
) -> Batch:
    """`{"examples": [{feature: value}], "context": {feature: value}}` as rows of the inputs.

    The context's features join every example's, as TF Serving does. Features are the model's
    input names, or, for a model of one input trained on a CSV, that CSV's feature columns (each
    a number, taken in the columns' order).
    """
    unknown = sorted(set(body) - set(EXAMPLE_KEYS))
    if unknown:
        raise invalid(
            pointer(unknown[0]), f"Unknown key {unknown[0]!r}.", ", ".join(EXAMPLE_KEYS), unknown
        )
    if body.get("signature_name") not in (None, "", "serving_default"):
        raise invalid(
            "/signature_name",
            "This model has one signature, serving_default.",
            "serving_default",
            body["signature_name"],
        )
    examples, context = body["examples"], body.get("context", {})
    if not isinstance(context, dict):
        raise invalid("/context", "context is an object of features.", "an object", context)
    if not isinstance(examples, list) or not examples:
        raise invalid("/examples", "examples must be a non-empty list.", "a list", examples)
    if len(examples) > max_rows:
        raise PayloadTooLarge(f"A request may carry at most {max_rows} rows; got {len(examples)}.")
    names = [info.name for info in inputs]
    features = labels.get("features")
    columns = features if len(inputs) == 1 and features else None
    expected = f"an object with keys {columns or names}"
    instances = []
    for index, example in enumerate(examples):
        if not isinstance(example, dict):
            raise invalid(pointer("examples", index), "An example is an object.", expected, example)
        merged = context | example
        wanted = columns or names
        missing = [name for name in wanted if name not in merged]
        extra = sorted(set(merged) - set(wanted))
        if missing or extra:
            faults = ([f"lacks {missing}"] if missing else []) + (
                [f"has unknown features {extra[:20]}"] if extra else []
            )
            raise invalid(
                pointer("examples", index, (missing or extra)[0]),
                f"Example {index} {' and '.join(faults)}; its features are "
                + ("the CSV's columns." if columns else "the model's input names."),
                expected,
                sorted(merged),
            )
        instances.append([merged[name] for name in columns] if columns else merged)
    try:
        return parse_rows(instances, inputs, max_rows)
    except InvalidRequest as error:  # the rows were built from the examples, row for row
        error.errors = [_in_examples(field) for field in error.errors]
        raise


def _in_examples(field: FieldError) -> FieldError:
    if field.path == "/instances" or field.path.startswith("/instances/"):
        return FieldError(
            "/examples" + field.path[len("/instances") :],
            field.message,
            field.expected,
            field.received,
        )
    return field
