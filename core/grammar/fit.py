"""The `fit` section: `Model.fit`'s own argument names, bounded by the settings, and callbacks."""

from __future__ import annotations

from typing import Any

from core.grammar.allowlist import (
    CALLBACK_CLASSES,
    NON_NEGATIVE,
    RATE,
    REFUSED_CALLBACKS,
    monitor_mode,
)
from core.grammar.kinds import (
    INVALID,
    Boolean,
    Integer,
    Kind,
    Nullable,
    Place,
    check_arguments,
    check_class_name,
    keras_object_schema,
)
from core.integers import read_int
from core.settings import Settings

MAX_CALLBACKS = 16
MAX_STEPS = 100_000_000
CALLBACK_KEYS = ("module", "class_name", "config", "registered_name")
CLASS_WEIGHT = NON_NEGATIVE
MAX_CLASSES = 100_000
# Class ids are written as 1 to 9 ASCII digits (the schema's key pattern says the same).
MAX_CLASS_ID = 999_999_999
# Model.fit arguments the request does not take here, each with what to use instead: data is
# named in `data`, and a job's epochs always count from 1 (version N is the model after N
# epochs), so warm start is how a job continues from another's weights.
REFUSED = {
    **{
        key: (where, f"fit.{key} is not read here: {where} names it in the request.")
        for key, where in {
            "x": "data.x",
            "y": "data.y",
            "sample_weight": "data.sample_weight",
            "validation_data": "data.validation",
        }.items()
    },
    "initial_epoch": (
        "warm_start",
        "fit.initial_epoch is not accepted: a job's epochs count from 1. To start from an "
        "earlier job's weights, use warm_start.",
    ),
}


def fit_kinds(settings: Settings) -> dict[str, Kind]:
    """Each fit argument's kind; the bounds come from the settings."""
    batch = Integer(1, settings.max_batch_size)
    steps = Nullable(Integer(1, MAX_STEPS))
    return {
        "batch_size": batch,
        "epochs": Integer(1, settings.max_epochs),
        "validation_split": RATE,
        "shuffle": Boolean(),
        "steps_per_epoch": steps,
        "validation_steps": steps,
        "validation_batch_size": Nullable(batch),
        "validation_freq": Integer(1, settings.max_epochs),
        "class_weight": ClassWeight(),
        "callbacks": Callbacks(),
    }


DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "epochs": 1,
    "validation_split": 0.0,
    "shuffle": True,
    "class_weight": None,
    "steps_per_epoch": None,
    "validation_steps": None,
    "validation_batch_size": None,
    "validation_freq": 1,
    "callbacks": [],
}


def parse_fit(value: Any, place: Place, settings: Settings) -> Any:
    """Normalize `fit` with Keras's defaults filled in; INVALID after recording every error."""
    place = place.inside("fit")
    refused = sorted(REFUSED.keys() & value.keys()) if isinstance(value, dict) else []
    for key in refused:
        place.at(key).refuse(key, *REFUSED[key])
    if refused:
        value = {key: item for key, item in value.items() if key not in REFUSED}
    result = check_arguments(value, fit_kinds(settings), place)
    if result is INVALID or refused:
        return INVALID
    return {**DEFAULTS, **result}


class ClassWeight(Kind):
    """`{"0": 1.0, "1": 5.0}`: JSON keys are strings, so class ids are written as digits."""

    expected = 'an object of class id to weight, e.g. {"0": 1.0, "1": 5.0}'

    def check(self, value: Any, place: Place) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict) or not 1 <= len(value) <= MAX_CLASSES:
            return place.refuse(value, self.expected)
        out = {}
        for key, weight in value.items():
            label = read_int(key, 0, MAX_CLASS_ID)
            if label is None:
                out[key] = place.at(key).refuse(key, 'a class id written as digits, e.g. "0"')
                continue
            out[str(label)] = CLASS_WEIGHT.check(weight, place.at(key))
        return INVALID if INVALID in out.values() else out

    def schema(self) -> dict[str, Any]:
        return {
            "type": ["object", "null"],
            "patternProperties": {"^[0-9]{1,9}$": CLASS_WEIGHT.schema()},
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": MAX_CLASSES,
        }


class Callbacks(Kind):
    """Only the callbacks that change training itself; the service owns files and logging."""

    expected = f"a list of at most {MAX_CALLBACKS} callbacks"

    def check(self, value: Any, place: Place) -> Any:
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > MAX_CALLBACKS:
            return place.refuse(value, self.expected)
        out = [self._callback(item, place.at(index), index) for index, item in enumerate(value)]
        return INVALID if INVALID in out else out

    def _callback(self, item: Any, place: Place, index: int) -> Any:
        if not isinstance(item, dict):
            return place.refuse(item, '{"class_name", "config"}')
        label = item.get("class_name") if isinstance(item.get("class_name"), str) else "?"
        place = place.inside(f"Callback {index + 1} ({label!r})")
        unknown = [key for key in item if key not in CALLBACK_KEYS]
        for key in unknown:
            place.refuse_key(key, list(CALLBACK_KEYS), "key")
        name = check_class_name(item, place, "callback", list(CALLBACK_CLASSES), REFUSED_CALLBACKS)
        if name is None or unknown:
            return INVALID
        at_config = place.at("config").inside(place.owner)
        config = check_arguments(item.get("config"), CALLBACK_CLASSES[name], at_config)
        if config is INVALID:
            return INVALID
        if "mode" in CALLBACK_CLASSES[name]:
            monitor = config.get("monitor", "val_loss")  # both callbacks' default
            config["mode"] = monitor_mode(monitor, config.get("mode", "auto"))
        return {"class_name": name, "config": config}

    def schema(self) -> dict[str, Any]:
        objects = [
            keras_object_schema(name, arguments, closed=True)
            for name, arguments in CALLBACK_CLASSES.items()
        ]
        return {
            "type": ["array", "null"],
            "items": {"anyOf": objects},
            "maxItems": MAX_CALLBACKS,
        }


def check_fit_with_compile(fit: Any, options: Any, place: Place) -> None:
    """ReduceLROnPlateau sets the optimizer's learning rate, which Keras refuses for a
    learning-rate schedule: the job would fail at the first plateau."""
    if INVALID in (fit, options):
        return
    schedule = options["optimizer"]["config"].get("learning_rate")
    if not isinstance(schedule, dict):
        return
    for index, callback in enumerate(fit["callbacks"]):
        if callback["class_name"] == "ReduceLROnPlateau":
            place.at("callbacks").at(index).refuse(
                "ReduceLROnPlateau",
                "no ReduceLROnPlateau with a learning-rate schedule",
                "ReduceLROnPlateau changes the learning rate, and the optimizer's learning rate "
                f"is the schedule {schedule['class_name']}: use one or the other.",
            )
