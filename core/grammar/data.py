"""The request's `data` and `checkpoint`, checked against the dataset manifests only.

No array is loaded here: shapes, rows, labels and NaN/Inf counts come from the manifests, so
a request that cannot train is refused before it is queued.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from core.datasets import PROCESSING, READY, status_of
from core.errors import FieldError, FieldErrors, InvalidRequest, NotFound, show
from core.grammar.allowlist import MONITOR, SCALES, monitor_mode
from core.grammar.kinds import INVALID, Boolean, Choice, Integer, Place
from core.grammar.shapes import rescaled_range, summarize_model, value_ranges
from core.settings import Settings

DATA_KEYS = ("dataset", "x", "y", "sample_weight", "preprocess", "validation", "test")
SPLIT_KEYS = ("dataset", "x", "y")
X_STEPS = ("scale", "offset", "normalize", "reshape")
# preprocess.x becomes a Rescaling layer, whose scale and offset are float32 constants (one, or
# one per feature), or a Normalization layer whose statistics the worker computes.
SCALE = SCALES
NORMALIZE = Boolean()
ONE_HOT = Integer(2, 1_000_000)
RESHAPE_DIM = Integer(1, 1 << 24)
KEEP = Integer(1, 100)
MODE = Choice(("min", "max", "auto"))
CHECKPOINT_KINDS = {"monitor": MONITOR, "mode": MODE, "keep": KEEP}
SPARSE_LOSSES = {"sparse_categorical_crossentropy", "SparseCategoricalCrossentropy"}
SPARSE_METRICS = {
    *SPARSE_LOSSES, "sparse_categorical_accuracy", "SparseCategoricalAccuracy",
    "sparse_top_k_categorical_accuracy", "SparseTopKCategoricalAccuracy",
}  # fmt: skip
# Keras picks the accuracy that fits the targets; every other metric reads the targets as
# they come, without the loss's reshaping, so they need the output's shape. One exception:
# 1-D labels for a one-unit output, which all but these (they read a class axis) take.
ADAPTIVE_METRICS = {"accuracy", "acc"}
CLASS_AXIS_METRICS = {
    "categorical_crossentropy", "CategoricalCrossentropy", "binary_crossentropy",
    "BinaryCrossentropy", "top_k_categorical_accuracy", "TopKCategoricalAccuracy",
}  # fmt: skip

Shape = list[int | None]
ManifestOf = Callable[[str], dict]


def parse_data(
    raw: Any,
    spec: dict[str, Any],
    *,
    settings: Settings,
    manifest_of: ManifestOf,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The normalized `data` of a request, or InvalidRequest with every mismatch found.

    `spec` holds the sections parsed so far (`model`, `compile`, `fit`, INVALID where they
    failed); checks that need a part that failed are skipped, its errors are already reported.
    `summary` is the model's inferred summary when the caller has it (it is inferred otherwise).
    """
    errors = FieldErrors()
    place = Place(errors, "/data", "data")
    if not isinstance(raw, dict):
        place.refuse(raw, 'an object with "dataset", "x" and "y"')
        raise InvalidRequest("The data section is invalid.", errors=errors)
    for key in raw:
        if key not in DATA_KEYS:
            place.refuse_key(key, list(DATA_KEYS), "key")
    model = _Model.of(spec, summary)
    main = _Split(raw, place, model, manifest_of, default_names=None)
    preprocess_x, one_hot, steps_at = _parse_preprocess(
        raw.get("preprocess"), place.at("preprocess"), model
    )
    main.check_x(preprocess_x)
    main.check_per_feature(preprocess_x, steps_at)
    main.check_y(one_hot)
    weights = main.array_of(raw.get("sample_weight"), place.at("sample_weight"), "sample weights")
    main.check_weights(weights, place.at("sample_weight"))
    main.check_rows()
    _check_fit_against_data(spec.get("fit"), main, weights, raw.get("validation") is not None)
    out: dict[str, Any] = {
        "dataset": main.dataset_id,
        "x": main.x,
        "y": main.y,
        "sample_weight": weights,
        "one_hot": one_hot,
        "preprocess": {"x": preprocess_x},
        "validation": None,
        "test": None,
    }
    for part in ("validation", "test"):
        if raw.get(part) is not None:
            split = _Split(raw[part], place.at(part), model, manifest_of, default_names=main)
            split.check_x(preprocess_x)
            split.check_y(one_hot)
            split.check_rows()
            out[part] = {"dataset": split.dataset_id, "x": split.x, "y": split.y}
    if errors:
        raise InvalidRequest(f"The data section has {len(errors)} error(s).", errors=errors)
    return out


class _Model:
    """What the data checks need of the parsed model: names, shapes, dtypes and losses."""

    def __init__(self, spec: dict[str, Any], summary: dict[str, Any]) -> None:
        self.model = spec["model"]
        self.inputs = {i["name"]: i for i in spec["model"]["inputs"]}
        self.outputs = {o["name"]: o["shape"][1:] for o in summary["outputs"]}
        self.shapes = {i["name"]: i["shape"][1:] for i in summary["inputs"]}
        self.losses = _losses(spec.get("compile"), list(self.outputs))
        self.metrics = _metric_names(spec.get("compile"), list(self.outputs))
        self.embeddings = [
            layer for layer in spec["model"]["layers"] if layer["class_name"] == "Embedding"
        ]

    def outputs_for(self, rows: dict[str, Shape]) -> dict[str, Shape]:
        """Output shapes once variable input dims take the arrays' sizes; InvalidRequest if the
        layers cannot take those sizes (a Reshape that fit a variable length may not fit 7)."""
        if all(None not in self.shapes[name] for name in rows):
            return self.outputs
        inputs = [{**i, "shape": rows.get(i["name"], i["shape"])} for i in self.model["inputs"]]
        summary = summarize_model({**self.model, "inputs": inputs})
        return {o["name"]: o["shape"][1:] for o in summary["outputs"]}

    @classmethod
    def of(cls, spec: dict[str, Any], summary: dict[str, Any] | None) -> _Model | None:
        """None when the model did not parse or infer: its errors are reported already."""
        if spec.get("model") in (None, INVALID):
            return None
        try:
            return cls(spec, summary or summarize_model(spec["model"]))
        except InvalidRequest:
            return None


def _losses(options: Any, outputs: list[str]) -> dict[str, str | None]:
    """Each output's loss name (a class name for an object), None when unknown."""
    loss = options.get("loss") if isinstance(options, dict) else None
    if isinstance(loss, dict) and "class_name" not in loss:
        return {o: _loss_name(loss.get(o)) for o in outputs}
    return dict.fromkeys(outputs, _loss_name(loss))


def _metric_names(options: Any, outputs: list[str]) -> dict[str, list[str]]:
    """Each output's metric names (class names for objects), metrics and weighted ones."""
    out: dict[str, list[str]] = {name: [] for name in outputs}
    if not isinstance(options, dict):
        return out
    for key in ("metrics", "weighted_metrics"):
        given = options.get(key) or []
        per_output = given if isinstance(given, dict) else dict.fromkeys(outputs, given)
        for name, metrics in per_output.items():
            out.setdefault(name, []).extend(filter(None, map(_loss_name, metrics)))
    return out


def _metric_problem(output: Shape, targets: Shape, metrics: list[str]) -> tuple[str, str] | None:
    """(message, expected) when a metric cannot read the targets an output trains on: sparse
    metrics read class ids against several units, the others targets of the output's shape."""
    one_unit = output[-1:] == [1]
    per_class = targets == output and not one_unit
    labels_of_one_unit = one_unit and targets == output[:-1]
    for metric in metrics:
        if metric in SPARSE_METRICS and per_class:
            return (
                f"metric {metric} reads class ids, and the targets have one value per class "
                f"(rows of shape {targets})",
                "metrics without 'sparse' for one-hot targets",
            )
        if metric in SPARSE_LOSSES and one_unit:
            return (
                f"metric {metric} reads a score per class, and the output has one unit",
                "a metric for one unit, such as binary_accuracy",
            )
        if metric in SPARSE_METRICS or metric in ADAPTIVE_METRICS or targets == output:
            continue
        if not labels_of_one_unit or metric in CLASS_AXIS_METRICS:
            return (
                f"metric {metric} compares the targets with the output value by value, and the "
                f"targets have rows of shape {targets} where the output gives {output}",
                "accuracy or a sparse_ metric for class ids, or targets of the output's shape "
                "(data.preprocess.y.one_hot)",
            )
    return None


def _loss_name(loss: Any) -> str | None:
    if isinstance(loss, str):
        return loss
    if isinstance(loss, dict):
        return loss.get("class_name")
    return None


def _not_ready(dataset_id: str, manifest: dict) -> str:
    """Why a dataset that is not ready cannot train yet, and what to do."""
    if status_of(manifest) == PROCESSING:
        return (
            f"Dataset {dataset_id} is still processing; submit the job once "
            f"GET /v1/datasets/{dataset_id} shows status ready."
        )
    reason = show((manifest.get("error") or {}).get("message"))
    return f"Dataset {dataset_id} failed ({reason}); fix the data and upload it again."


class _Split:
    """One dataset reference (the main data, validation or test) and its arrays' checks."""

    def __init__(
        self,
        raw: Any,
        place: Place,
        model: _Model | None,
        manifest_of: ManifestOf,
        default_names: _Split | None,
    ) -> None:
        self.place, self.model, self.errors = place, model, place.errors
        self.used: list[tuple[str, Place]] = []
        self.paths: dict[tuple[str, str], Place] = {}
        self.x: dict[str, str] = {}
        self.y: dict[str, str] = {}
        self.dataset_id, self.manifest = None, None
        self.outputs = model.outputs if model else {}
        if default_names is not None and not isinstance(raw, dict):
            place.refuse(raw, 'an object with "dataset" (and "x", "y" when named differently)')
            return
        if default_names is not None:
            for key in raw:
                if key not in SPLIT_KEYS:
                    place.refuse_key(key, list(SPLIT_KEYS), "key")
        self.dataset_id, self.manifest = self._load(raw.get("dataset"), manifest_of)
        names_of = default_names or self
        self.x = self._mapping(raw, "x", None if model is None else list(model.inputs), names_of)
        self.y = self._mapping(raw, "y", None if model is None else list(model.outputs), names_of)

    def _load(self, value: Any, manifest_of: ManifestOf) -> tuple[str | None, dict | None]:
        at = self.place.at("dataset")
        if not isinstance(value, str):
            at.refuse(value, "the id of one of your datasets (32 hex characters)")
            return None, None
        try:
            manifest = manifest_of(value)
        except NotFound:
            self.errors.append(
                FieldError(
                    at.path,
                    f"There is no dataset {show(value)} among yours. Upload it with "
                    "POST /v1/datasets, or list yours with GET /v1/datasets.",
                    "the id of one of your datasets",
                    value,
                )
            )
            return value, None
        if status_of(manifest) != READY:
            message = _not_ready(value, manifest)
            self.errors.append(
                FieldError(
                    at.path, message, "the id of a dataset with status ready", status_of(manifest)
                )
            )
            return value, None
        return value, manifest

    def _mapping(
        self, raw: dict[str, Any], key: str, names: list[str] | None, default: _Split
    ) -> dict[str, str]:
        """`"x": "array"` for a single input, or `{model name: array}` covering every name."""
        at = self.place.at(key)
        value = raw.get(key)
        if value is None and default is not self:
            value = dict(getattr(default, key))
        what = "inputs" if key == "x" else "outputs"
        if isinstance(value, str):
            if names is not None and len(names) != 1:
                at.refuse(
                    value,
                    f"an object mapping each of the model's {what} ({', '.join(names)}) to an "
                    "array name",
                )
                return {}
            value, places = {names[0] if names else "": value}, None
        elif isinstance(value, dict) and value:
            places = at
        else:
            at.refuse(value, f"an array name, or an object mapping the model's {what} to arrays")
            return {}
        out = {}
        for name, array in value.items():
            if names is not None and name not in names:
                at.refuse_key(name, names, what[:-1])
                continue
            where = at if places is None else places.at(name)
            self.paths[(key, name)] = where
            checked = self.array_of(array, where, f"{key} arrays")
            if checked is not None:
                out[name] = checked
        missing = [name for name in names or () if name not in value]
        if missing:
            at.refuse(
                value,
                f"an array for every {what[:-1]} ({', '.join(names or ())})",
                f"No array is named for the model's {what[:-1]} {', '.join(missing)}. Map "
                f"every {what[:-1]} to an array: {{{', '.join(repr(n) for n in names or ())}}}.",
            )
        return out

    def array_of(self, value: Any, at: Place, what: str) -> str | None:
        """A named array of this dataset, checked for NaN and Inf; None when absent or bad."""
        if value is None:
            return None
        arrays = (self.manifest or {}).get("arrays", {})
        if not isinstance(value, str):
            at.refuse(value, f"the name of an array of the dataset for {what}")
            return None
        if self.manifest is None:
            return value
        if value not in arrays:
            expected = "one of " + ", ".join(sorted(arrays))
            at.refuse(
                value,
                expected,
                f"The dataset {self.dataset_id} has no array {show(value)}. Expected {expected}. "
                f"Received: {show(value)}",
            )
            return None
        stats = arrays[value].get("stats") or {}
        nan, inf = stats.get("nan", 0), stats.get("inf", 0)
        if nan or inf:
            at.refuse(
                value,
                "an array without NaN or Inf values",
                f"The array {show(value)} holds {nan} NaN and {inf} Inf values; clean it "
                "(drop or impute those rows) and upload it again.",
            )
        self.used.append((value, at))
        return value

    def _array(self, name: str) -> dict[str, Any] | None:
        return (self.manifest or {}).get("arrays", {}).get(name)

    def check_x(self, preprocess: dict[str, dict[str, Any]]) -> None:
        """Each input's declared shape against its array's shape (after any reshape)."""
        if self.model is None:
            return
        before, rows, ranges = len(self.errors), {}, {}
        for name, array in self.x.items():
            entry = self._array(array)
            if entry is None:
                continue
            at = self.paths[("x", name)]
            rows_shape = entry["shape"][1:]
            steps = preprocess.get(name) or {}
            rows[name] = steps.get("reshape") or rows_shape
            if steps.get("reshape") is not None:
                # The built model takes the training array's raw rows; every split must match.
                raw_shape = steps.setdefault("raw_shape", rows_shape)
                if rows_shape != raw_shape:
                    at.refuse(
                        array,
                        f"an array whose rows have shape {raw_shape}",
                        f"Array {array!r} has rows of shape {rows_shape} but the training "
                        f"array of input {name!r} has rows of shape {raw_shape}.",
                    )
                else:
                    _check_reshape(
                        at, array, rows_shape, steps["reshape"], self.model.shapes[name], name
                    )
            elif not _fits(rows_shape, self.model.shapes[name]):
                expected = f"an array whose rows have shape {self.model.shapes[name]}"
                at.refuse(
                    array,
                    expected,
                    f"Input {name!r} takes rows of shape {self.model.shapes[name]} but array "
                    f"{array!r} has rows of shape {rows_shape} (array shape {entry['shape']}). "
                    "Change the model's input shape, or reshape with data.preprocess.x.reshape.",
                )
            stats = entry.get("stats") or {}
            if stats.get("max") is not None and stats.get("min") is not None:
                ranges[name] = (stats["min"], stats["max"])
            dtype = self.model.inputs[name]["dtype"]
            if dtype.startswith(("int", "uint")) and stats.get("integer_valued") is False:
                at.refuse(
                    array,
                    "an array of whole numbers",
                    f"Input {name!r} takes {dtype} values but array {array!r} holds fractions.",
                )
        self._check_token_ids(ranges, preprocess)
        if len(self.errors) == before and len(rows) == len(self.model.inputs):
            self._check_with_rows(self.model, rows)

    def _check_with_rows(self, model: _Model, rows: dict[str, Shape]) -> None:
        try:
            self.outputs = model.outputs_for(rows)
        except InvalidRequest as error:
            first = error.errors[0]
            self.place.at("x").refuse(
                self.x,
                "arrays whose sizes every layer can take",
                f"With the arrays' row shapes ({', '.join(f'{k}: {v}' for k, v in rows.items())})"
                f" in place of the model's variable sizes, {first.message}.",
            )

    def _check_token_ids(
        self, ranges: dict[str, tuple[float, float]], preprocess: dict[str, dict[str, Any]]
    ) -> None:
        """Token ids at or past an Embedding's input_dim, or below 0, fail on CPU and read zeros
        on GPU: the arrays' ranges, as preprocessing and Rescaling layers change them, must fit."""
        model = self.model
        if model is None or not model.embeddings:
            return
        scaled = {name: _rescaled(r, preprocess.get(name) or {}) for name, r in ranges.items()}
        found = value_ranges(model.model, scaled)
        for layer in model.embeddings:
            source = found.get(layer["inbound"][0])
            size = layer["config"]["input_dim"]
            if source is None or (source.low > -1 and source.high < size):
                continue
            for name in sorted(source.inputs):
                array = self.x[name]
                low, high = ranges[name]
                self.paths[("x", name)].refuse(
                    array,
                    f"token ids from 0 to {size - 1}",
                    f"Array {array!r} holds values from {low} to {high}, which reach Embedding "
                    f"{layer['name']!r} as ids from {source.low:g} to {source.high:g}; its "
                    f"input_dim={size} takes ids 0 to {size - 1}.",
                )

    def check_per_feature(
        self, preprocess: dict[str, dict[str, Any]], places: dict[str, Place]
    ) -> None:
        """A list of scales or offsets has one value per feature: the array's last axis."""
        for name, steps in preprocess.items():
            entry = self._array(self.x.get(name, ""))
            if entry is None:
                continue
            features = entry["shape"][-1] if len(entry["shape"]) > 1 else 1
            for key in ("scale", "offset"):
                value = steps.get(key)
                if isinstance(value, list) and len(value) != features:
                    places[name].at(key).refuse(
                        value,
                        f"a number, or a list of {features} numbers",
                        f"data.preprocess.x.{key} lists {len(value)} values, and array "
                        f"{self.x[name]!r} has {features} features (its last axis, of rows "
                        f"of shape {entry['shape'][1:]}): give one value per feature, or one "
                        "number for all.",
                    )

    def check_y(self, one_hot: dict[str, int]) -> None:
        """Each output's units against its targets: shape, class count or one-hot count."""
        if self.model is None:
            return
        for name, array in self.y.items():
            entry = self._array(array)
            if entry is None:
                continue
            at = self.paths[("y", name)]
            problem = _target_problem(
                self.outputs[name],
                entry,
                self.model.losses.get(name),
                one_hot.get(name),
                (self.manifest or {}).get("classes", {}).get(array),
            )
            if problem is None:
                targets = [one_hot[name]] if name in one_hot else entry["shape"][1:]
                problem = _metric_problem(
                    self.outputs[name], targets, self.model.metrics.get(name, [])
                )
            if problem:
                message, expected = problem
                at.refuse(array, expected, f"Output {name!r} and array {array!r}: {message}")

    def check_weights(self, array: str | None, at: Place) -> None:
        """Keras multiplies each output's loss per row, of the output's shape less its class
        axis, by the row's weights: one value, or one per position of that shape."""
        entry = None if array is None else self._array(array)
        if entry is None or self.model is None:
            return
        given = _without_ones(entry["shape"][1:])
        for name, output in self.outputs.items():
            if given and not _fits(given, _without_ones(output[:-1])):
                at.refuse(
                    array,
                    "an array of one weight per row (or per position of a sequence output)",
                    f"Array {array!r} has rows of shape {entry['shape'][1:]}, and output "
                    f"{name!r} has a loss per row of shape {output[:-1]}: a weight array needs "
                    "one value per row"
                    + (f" or rows of shape {output[:-1]}." if output[:-1] else "."),
                )
                return

    def rows(self) -> int | None:
        """The rows of this split's first array, None when none could be read."""
        for array, _ in self.used:
            entry = self._array(array)
            if entry and entry["shape"]:
                return entry["shape"][0]
        return None

    def check_rows(self) -> None:
        """Every array this split uses has the same number of rows."""
        rows = {}
        for array, _ in self.used:
            entry = self._array(array)
            if entry and entry["shape"]:
                rows[array] = entry["shape"][0]
        if len(set(rows.values())) > 1:
            listed = ", ".join(f"{a!r} has {n}" for a, n in rows.items())
            self.place.refuse(
                sorted(rows),
                "x, y and sample_weight arrays with the same number of rows",
                f"The arrays do not have the same number of rows: {listed}.",
            )


def _check_fit_against_data(fit: Any, main: _Split, weights: str | None, validation: bool) -> None:
    """`fit` arguments that Keras checks against the arrays only once training starts."""
    if not isinstance(fit, dict):
        return
    at = Place(main.errors).at("fit").inside("fit")
    class_weight = fit.get("class_weight")
    if class_weight is not None and weights is not None:
        at.at("class_weight").refuse(
            class_weight,
            "class_weight or data.sample_weight, not both",
            "fit.class_weight and data.sample_weight both weigh the rows, and Keras takes only "
            "one: drop one of them.",
        )
    elif class_weight is not None and main.model is not None:
        shapes = list(main.model.outputs.values())
        if len(shapes) > 1 or len(shapes[0]) > 1:
            at.at("class_weight").refuse(
                class_weight,
                "class_weight for a model with one output of one class axis",
                "fit.class_weight weighs rows by their class, which Keras reads only for a model "
                "with a single output of shape (batch, classes); this model's outputs are "
                + ", ".join(str([None, *shape]) for shape in shapes)
                + ". Use data.sample_weight instead.",
            )
    rows, share = main.rows(), fit.get("validation_split") or 0.0
    if rows is None or not share or validation:
        return
    # Keras's own split: the first floor(rows * (1 - split)) rows train, the rest validate.
    train = math.floor(rows * (1.0 - share))
    if train in (0, rows):
        at.at("validation_split").refuse(
            share,
            f"a split leaving rows to train on and to validate with ({rows} rows)",
            f"fit.validation_split={share} splits the {rows} rows into {train} to train on and "
            f"{rows - train} to validate with; both need at least one row.",
        )


def _rescaled(found: tuple[float, float], steps: dict[str, Any]) -> tuple[float, float]:
    """An array's range after `preprocess.x`'s scale and offset (a Rescaling layer)."""
    scale = 1.0 if steps.get("scale") is None else steps["scale"]
    return rescaled_range(*found, scale, steps.get("offset") or 0.0)


def _without_ones(shape: Shape) -> Shape:
    """A shape less its axes of size 1, which Keras squeezes or broadcasts."""
    return [size for size in shape if size != 1]


def _fits(given: Sequence[int | None], wanted: Sequence[int | None]) -> bool:
    """Same rank, and equal where the model's dimension is known."""
    return len(given) == len(wanted) and all(
        w is None or g == w for g, w in zip(given, wanted, strict=True)
    )


def _check_reshape(
    at: Place, array: str, rows_shape: list[int], target: list[int], wanted: Shape, name: str
) -> None:
    if math.prod(rows_shape) != math.prod(target):
        at.refuse(
            array,
            f"rows of {math.prod(target)} values",
            f"Array {array!r} has rows of shape {rows_shape} ({math.prod(rows_shape)} values), "
            f"which cannot be reshaped to {target} ({math.prod(target)} values).",
        )
    elif not _fits(target, wanted):
        at.refuse(
            array,
            f"a reshape to the input's shape {wanted}",
            f"data.preprocess.x.reshape gives rows of shape {target} but input {name!r} takes "
            f"{wanted}.",
        )


def _target_problem(
    output: Shape,
    entry: dict[str, Any],
    loss: str | None,
    one_hot: int | None,
    classes: list[str] | None,
) -> tuple[str, str] | None:
    """(message, expected) when an array cannot be the targets of an output, else None."""
    rows = entry["shape"][1:]
    units = output[-1] if output else None
    labels_shape = rows in (output[:-1], [*output[:-1], 1])
    stats = entry.get("stats") or {}
    if one_hot is not None or loss in SPARSE_LOSSES:
        count = one_hot if one_hot is not None else units
        if not labels_shape or not stats.get("integer_valued"):
            return (
                f"class labels are expected (whole numbers, rows of shape {output[:-1]}), but "
                f"the array has rows of shape {rows}"
                + ("" if stats.get("integer_valued") else " and holds fractions"),
                "an array of integer class labels",
            )
        # min and max cover finite values only: None when an array has none.
        found = len(classes) if classes else int(stats.get("max") or 0) + 1
        if (stats.get("min") or 0) < 0:
            return ("labels must be 0 or more", "class labels from 0")
        if one_hot is not None and units is not None and units != one_hot:
            return (
                f"the output has {units} units but data.preprocess.y.one_hot is {one_hot}",
                f"one_hot equal to the output's units ({units})",
            )
        if count is not None and found > count:
            room = (
                f"data.preprocess.y.one_hot is {count}"
                if one_hot is not None
                else f"the output has {count} units"
            )
            return (
                f"the labels hold {found} classes (0..{found - 1}) but {room}",
                f"at most {count} classes",
            )
        return None
    if _fits(rows, output):
        return None
    if labels_shape and units == 1:
        return None
    hint = (
        "; for class labels use sparse_categorical_crossentropy or data.preprocess.y.one_hot"
        if labels_shape and stats.get("integer_valued")
        else ""
    )
    return (
        f"the output gives rows of shape {output} but the array has rows of shape {rows}{hint}",
        f"an array whose rows have shape {output}",
    )


def _parse_preprocess(
    raw: Any, place: Place, model: _Model | None
) -> tuple[dict[str, dict[str, Any]], dict[str, int], dict[str, Place]]:
    """`preprocess.x` steps per input, `preprocess.y.one_hot` per output, and where each
    input's steps are in the request."""
    if raw is None:
        return {}, {}, {}
    if not isinstance(raw, dict):
        place.refuse(raw, 'an object with "x" and/or "y"')
        return {}, {}, {}
    for key in raw:
        if key not in ("x", "y"):
            place.refuse_key(key, ["x", "y"], "key")
    inputs = None if model is None else list(model.inputs)
    steps = _per_name(raw.get("x"), place.at("x"), inputs, X_STEPS)
    x = {name: _parse_steps(value, at) for name, (value, at) in steps.items()}
    outputs = None if model is None else list(model.outputs)
    targets = _per_name(raw.get("y"), place.at("y"), outputs, ("one_hot",))
    one_hot = {}
    for name, (value, at) in targets.items():
        count = ONE_HOT.check(value.get("one_hot"), at.at("one_hot"))
        if count is not INVALID:
            one_hot[name] = count
    places = {name: at for name, (_, at) in steps.items()}
    return {k: v for k, v in x.items() if v}, one_hot, places


def _per_name(
    raw: Any, place: Place, names: list[str] | None, keys: tuple[str, ...]
) -> dict[str, tuple[dict[str, Any], Place]]:
    """The single form ({"scale": ...}) for a one-input model, or {name: {...}} per name."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        place.refuse(raw, "an object with " + ", ".join(keys))
        return {}
    if all(key in keys for key in raw):
        if names is not None and len(names) != 1:
            place.refuse(raw, f"an object per name ({', '.join(names)})")
            return {}
        return {names[0] if names else "": (raw, place)}
    out = {}
    for name, value in raw.items():
        at = place.at(name)
        if names is not None and name not in names:
            place.refuse_key(name, names + list(keys), "name")
        elif not isinstance(value, dict):
            at.refuse(value, "an object with " + ", ".join(keys))
        else:
            for key in value:
                if key not in keys:
                    at.refuse_key(key, list(keys), "key")
            out[name] = (value, at)
    return out


def _parse_steps(raw: dict[str, Any], place: Place) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("scale", "offset"):
        if raw.get(key) is not None:
            value = SCALE.check(raw[key], place.at(key))
            if value is not INVALID:
                out[key] = value
    if raw.get("normalize") is not None:
        normalize = NORMALIZE.check(raw["normalize"], place.at("normalize"))
        if normalize is True and ("scale" in out or "offset" in out):
            place.at("normalize").refuse(
                normalize,
                "normalize without scale or offset",
                "data.preprocess.x.normalize centers and scales each feature by the training "
                "data's own mean and variance, so a scale or offset before it changes nothing: "
                "give normalize alone, or scale and offset alone.",
            )
        elif normalize is True:
            out["normalize"] = True
    if raw.get("reshape") is not None:
        target = raw["reshape"]
        at = place.at("reshape")
        if not isinstance(target, list) or not 1 <= len(target) <= 8:
            at.refuse(target, "a list of 1 to 8 positive integers")
        elif all(RESHAPE_DIM.check(d, at.at(i)) is not INVALID for i, d in enumerate(target)):
            out["reshape"] = list(target)
    if not out:
        return {}
    return {"scale": None, "offset": None, "reshape": None, **out}


def parse_checkpoint(raw: Any, spec: dict[str, Any], *, settings: Settings) -> dict[str, Any]:
    """`checkpoint` with its defaults: monitor, mode ("min"/"max") and how many to keep.

    The monitor defaults to the EarlyStopping monitor, else `val_loss` when there is validation
    data, else `loss`; a `val_` monitor without validation data is refused.
    """
    errors = FieldErrors()
    place = Place(errors, "/checkpoint", "checkpoint")
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        place.refuse(raw, 'an object with "monitor", "mode" and "keep"')
        raise InvalidRequest("The checkpoint section is invalid.", errors=errors)
    for key in raw:
        if key not in CHECKPOINT_KINDS:
            place.refuse_key(key, list(CHECKPOINT_KINDS), "key")
    validation = _has_validation(spec)
    monitor, at = _default_monitor(spec, validation, errors)
    if "monitor" in raw:
        monitor, at = MONITOR.check(raw["monitor"], place.at("monitor")), place.at("monitor")
    if isinstance(monitor, str) and monitor.startswith("val_") and validation is False:
        at.refuse(
            monitor,
            "a metric without 'val_', or validation data",
            f"{monitor!r} needs validation data, and the request has none: set "
            "fit.validation_split or data.validation, or monitor 'loss'.",
        )
    mode = MODE.check(raw.get("mode", "auto"), place.at("mode"))
    keep = KEEP.check(raw.get("keep", settings.keep_checkpoints), place.at("keep"))
    if errors:
        raise InvalidRequest("The checkpoint section is invalid.", errors=errors)
    return {"monitor": monitor, "mode": monitor_mode(monitor, mode), "keep": keep}


def _has_validation(spec: dict[str, Any]) -> bool | None:
    """Whether the job validates; None when the sections that say so did not parse."""
    data, fit = spec.get("data"), spec.get("fit")
    if isinstance(data, dict) and data.get("validation") is not None:
        return True
    if not isinstance(fit, dict) or not isinstance(data, dict):
        return None
    return (fit.get("validation_split") or 0) > 0


def _default_monitor(
    spec: dict[str, Any], validation: bool | None, errors: list[FieldError]
) -> tuple[str, Place]:
    fit = spec.get("fit")
    callbacks = (fit.get("callbacks") or []) if isinstance(fit, dict) else []
    for index, callback in enumerate(callbacks):
        if callback.get("class_name") == "EarlyStopping":
            # Keras's EarlyStopping watches val_loss unless told otherwise.
            monitor = (callback.get("config") or {}).get("monitor", "val_loss")
            at = Place(errors, f"/fit/callbacks/{index}/config/monitor", "EarlyStopping")
            return monitor, at
    return ("val_loss" if validation else "loss"), Place(errors, "/checkpoint/monitor")
