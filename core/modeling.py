"""Keras objects from a normalized spec, each made by its own constructor.

The spec was checked against the grammar's allowlist; every class is looked up again in that
allowlist here, and nothing reaches a Keras deserializer (no `from_config`, no `get()` of a dict).
Keras is imported inside the functions so importing this module stays cheap for the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.grammar import allowlist
from core.grammar.shapes import model_with_preprocessing

CALLBACKS = ("EarlyStopping", "ReduceLROnPlateau", "TerminateOnNaN")


def _lookup(value: str, classes: Mapping[str, Any], noun: str) -> str:
    """The allowlisted class for a Keras name (`he_normal` -> HeNormal, `rmsprop` -> RMSprop)."""
    by_key = {name.lower(): name for name in classes}
    name = by_key.get(value.replace("_", "").lower())
    if name is None:
        raise ValueError(f"{noun} {value!r} is not in the allowlist")
    return name


def _construct(value: Any, module: Any, classes: Mapping[str, Any], noun: str) -> Any:
    """An allowlisted object from a name or {"class_name", "config"}; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return getattr(module, _lookup(value, classes, noun))()
    name = value["class_name"]
    if name not in classes:
        raise ValueError(f"{noun} {name!r} is not in the allowlist")
    return getattr(module, name)(**_plain(value.get("config") or {}))


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """Lists as tuples, as Keras's constructors expect for sizes, strides and paddings."""

    def tupled(value: Any) -> Any:
        return tuple(tupled(v) for v in value) if isinstance(value, list) else value

    return {key: tupled(value) for key, value in config.items()}


def make_activation(value: Any) -> Any:
    """A Keras activation function from an allowlisted name."""
    import keras

    if value is None:
        return None
    if value not in allowlist.ACTIVATION_NAMES:
        raise ValueError(f"activation {value!r} is not in the allowlist")
    return getattr(keras.activations, value)


def _layer_arguments(config: dict[str, Any], name: str) -> dict[str, Any]:
    import keras

    out = {}
    for key, value in _plain(config).items():
        if key.endswith("_initializer"):
            value = _construct(
                value, keras.initializers, allowlist.INITIALIZER_CLASSES, "initializer"
            )
        elif key.endswith("_regularizer"):
            value = _construct(
                value, keras.regularizers, allowlist.REGULARIZER_CLASSES, "regularizer"
            )
        elif key.endswith("_constraint"):
            value = _construct(value, keras.constraints, allowlist.CONSTRAINT_CLASSES, "constraint")
        elif key in ("activation", "recurrent_activation"):
            value = make_activation(value)
        elif key in ("layer", "backward_layer") and value is not None:
            value = make_layer({"name": f"{name}_{key}", **value})
        out[key] = value
    return out


def make_layer(layer: dict[str, Any]) -> Any:
    """One Keras layer from {"name", "class_name", "config"} by its constructor."""
    import keras

    class_name = layer["class_name"]
    if class_name not in allowlist.LAYERS and class_name not in allowlist.RNN_LAYERS:
        raise ValueError(f"layer {class_name!r} is not in the allowlist")
    arguments = _layer_arguments(layer["config"], layer["name"])
    return getattr(keras.layers, class_name)(name=layer["name"], **arguments)


def build_model(spec: dict[str, Any]) -> Any:
    """The uncompiled model of a normalized spec, preprocessing layers in front.

    A Sequential request builds a `keras.Sequential`, anything else a Functional model; either
    keeps the model's name (a spec from before names were kept builds a Functional "model").
    Inputs, layers and outputs carry the spec's names, so weights, metadata and `data.x`
    mappings agree in every process.
    """
    import keras

    model = model_with_preprocessing(spec)
    name = spec["model"].get("name") or "model"
    if spec["model"].get("class_name") == "Sequential":
        (given,) = model["inputs"]
        start = keras.Input(shape=tuple(given["shape"]), dtype=given["dtype"], name=given["name"])
        # The layers of a Sequential spec (preprocessing included) form one chain, in order.
        return keras.Sequential([start, *map(make_layer, model["layers"])], name=name)
    tensors = {
        given["name"]: keras.Input(
            shape=tuple(given["shape"]), dtype=given["dtype"], name=given["name"]
        )
        for given in model["inputs"]
    }
    for layer in model["layers"]:
        sources = [tensors[name] for name in layer["inbound"]]
        if layer["class_name"] == "InputLayer":
            tensors[layer["name"]] = sources[0]
            continue
        call = sources if layer["class_name"] in allowlist.MERGE_LAYERS else sources[0]
        tensors[layer["name"]] = make_layer(layer)(call)
    inputs = [tensors[given["name"]] for given in model["inputs"]]
    outputs = [tensors[name] for name in model["outputs"]]
    return keras.Model(
        inputs=inputs[0] if len(inputs) == 1 else inputs,
        outputs=outputs[0] if len(outputs) == 1 else outputs,
        name=name,
    )


def make_optimizer(value: Any) -> Any:
    """An optimizer by its constructor; a learning-rate schedule likewise."""
    import keras

    if isinstance(value, str):
        value = {"class_name": value, "config": {}}
    name = _lookup(value["class_name"], allowlist.OPTIMIZER_CLASSES, "optimizer")
    config = _plain(value.get("config") or {})
    rate = config.get("learning_rate")
    if isinstance(rate, dict):
        config["learning_rate"] = _construct(
            rate, keras.optimizers.schedules, allowlist.SCHEDULE_CLASSES, "schedule"
        )
    return getattr(keras.optimizers, name)(**config)


def _per_output(value: Any, make: Any) -> Any:
    """Apply `make` to one item, a list, or a map of output names to either."""
    if isinstance(value, dict) and "class_name" not in value:
        return {output: _per_output(item, make) for output, item in value.items()}
    if isinstance(value, list):
        return [_per_output(item, make) for item in value]
    return make(value)


def _make_loss(value: Any) -> Any:
    import keras

    # A name goes to Keras as a string: it resolves built-in names from its own fixed table.
    if isinstance(value, str):
        return value
    return _construct(value, keras.losses, allowlist.LOSS_CLASSES, "loss")


def _make_metric(value: Any) -> Any:
    import keras

    # 'accuracy' must stay a string: Keras picks the accuracy that fits the loss.
    if isinstance(value, str):
        return value
    return _construct(value, keras.metrics, allowlist.METRIC_CLASSES, "metric")


def compile_model(model: Any, spec: dict[str, Any]) -> None:
    """Compile `model` with the spec's optimizer, losses, metrics and options."""
    options = spec["compile"]
    metrics = options.get("metrics")
    weighted = options.get("weighted_metrics")
    model.compile(
        optimizer=make_optimizer(options["optimizer"]),
        loss=_per_output(options["loss"], _make_loss),
        loss_weights=options.get("loss_weights"),
        metrics=None if metrics is None else _per_output(metrics, _make_metric),
        weighted_metrics=None if weighted is None else _per_output(weighted, _make_metric),
        jit_compile=options.get("jit_compile", "auto"),
        steps_per_execution=options.get("steps_per_execution", 1),
    )


def build_callbacks(spec: dict[str, Any]) -> list[Any]:
    """The user's EarlyStopping, ReduceLROnPlateau and TerminateOnNaN callbacks."""
    import keras

    callbacks = []
    for item in spec["fit"].get("callbacks") or []:
        name = item["class_name"]
        if name not in CALLBACKS:
            raise ValueError(f"callback {name!r} is not in the allowlist")
        callbacks.append(getattr(keras.callbacks, name)(**(item.get("config") or {})))
    return callbacks


FIT_KEYS = (
    "batch_size",
    "epochs",
    "validation_split",
    "shuffle",
    "class_weight",
    "steps_per_epoch",
    "validation_steps",
    "validation_batch_size",
    "validation_freq",
)


def fit_arguments(spec: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `Model.fit` other than the data and the callbacks."""
    fit = spec["fit"]
    out = {key: fit[key] for key in FIT_KEYS if fit.get(key) is not None}
    if "class_weight" in out:
        # JSON object keys are strings; Keras wants the class ids as integers.
        out["class_weight"] = {int(label): weight for label, weight in out["class_weight"].items()}
    return out
