"""Kinds of values the grammar accepts, each able to check a value, describe itself and be a schema.

A kind checks a value at a `Place` (a JSON pointer plus the words that name the object being
read) and returns the normalized value, or records a `FieldError` there and returns `INVALID`.
Errors read like Keras's own: `Layer 2 ('Dense') has units=-3. Expected a positive integer up
to 100000. Received: units=-3`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

from core.errors import MAX_ERRORS, FieldError, escape_pointer, preview, show


class _Invalid:
    """The result of a check that failed; its error is already recorded."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()

MAX_RANK = 8
# The largest float32: Keras makes float32 constants of many arguments and raises past it.
FLOAT32_MAX = 3.4028234663852886e38


@dataclasses.dataclass
class Place:
    """Where a value sits: its JSON pointer, the object that holds it and the key's dotted name."""

    errors: list[FieldError]
    path: str = ""
    owner: str = "The request"
    key: str = ""

    def at(self, token: str | int) -> Place:
        if isinstance(token, int):
            key = f"{self.key}[{token}]"
        else:
            key = f"{self.key}.{token}" if self.key else token
        return Place(self.errors, f"{self.path}/{escape_pointer(token)}", self.owner, key)

    @property
    def full(self) -> bool:
        """As many errors are known as a document lists: later ones are only counted."""
        return len(self.errors) >= MAX_ERRORS

    def inside(self, owner: str) -> Place:
        """The same place, now read as the start of another object (a layer, an optimizer)."""
        return Place(self.errors, self.path, owner, "")

    def refuse(self, value: Any, expected: str, message: str | None = None) -> Any:
        """Record a value that is not what this place accepts; returns INVALID."""
        if self.full:
            self.errors.append(FieldError(self.path or "/", "", expected))
            return INVALID
        if message is None:
            if self.key:
                message = (
                    f"{self.owner} has {self.key}={show(value)}. Expected {expected}. "
                    f"Received: {self.key}={show(value)}"
                )
            else:
                message = f"{self.owner} is {show(value)}. Expected {expected}."
        self.errors.append(FieldError(self.path or "/", message, expected, preview(value)))
        return INVALID

    def refuse_key(self, key: str, allowed: list[str], what: str = "argument") -> None:
        """Record an unknown key, naming the closest allowed ones."""
        if self.full:
            self.errors.append(FieldError(self.path or "/", "", what))
            return
        close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        expected = "one of " + ", ".join(sorted(allowed)) if allowed else "no arguments"
        place = self.at(key)
        self.errors.append(
            FieldError(
                place.path,
                f"{self.owner} has an unknown {what} {key!r}.{hint} Expected {expected}.",
                expected,
                key,
            )
        )


class Kind:
    """A kind of value: `check` normalizes or refuses, `expected` says what is accepted."""

    @property
    def expected(self) -> str:
        return "a value"

    def check(self, value: Any, place: Place) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Integer(Kind):
    low: int | None = None
    high: int | None = None

    @property
    def expected(self) -> str:
        if self.low == 1:
            return "a positive integer" + (f" up to {self.high}" if self.high is not None else "")
        if self.low is not None and self.high is not None:
            return f"an integer from {self.low} to {self.high}"
        if self.low is not None:
            return f"an integer of at least {self.low}"
        if self.high is not None:
            return f"an integer up to {self.high}"
        return "an integer"

    def check(self, value: Any, place: Place) -> Any:
        if not is_int(value):
            return place.refuse(value, self.expected)
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            return place.refuse(value, self.expected)
        return value

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer"}
        if self.low is not None:
            out["minimum"] = self.low
        if self.high is not None:
            out["maximum"] = self.high
        return out


@dataclasses.dataclass(frozen=True)
class Number(Kind):
    """A finite number, optionally bounded; open bounds exclude the end itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    @property
    def expected(self) -> str:
        if FLOAT32_MAX in (self.high, -(self.low or 0)):
            plain = dataclasses.replace(
                self,
                low=None if self.low == -FLOAT32_MAX else self.low,
                high=None if self.high == FLOAT32_MAX else self.high,
            )
            return f"{plain.expected} within float32's range (up to {FLOAT32_MAX:.4g})"
        if self.low is None and self.high is None:
            return "a finite number"
        if self.low == 0 and self.high is None:
            return "a positive number" if self.low_open else "a number of at least 0"
        if self.high is None:
            return f"a number {'greater than' if self.low_open else 'of at least'} {self.low}"
        if self.low is None:
            return f"a number {'below' if self.high_open else 'up to'} {self.high}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"a number in {left}{self.low}, {self.high}{right}"

    def check(self, value: Any, place: Place) -> Any:
        if not is_number(value) or not math.isfinite(value):
            return place.refuse(value, self.expected)
        low_bad = self.low is not None and (
            value < self.low or (self.low_open and value == self.low)
        )
        high_bad = self.high is not None and (
            value > self.high or (self.high_open and value == self.high)
        )
        if low_bad or high_bad:
            return place.refuse(value, self.expected)
        return float(value)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "number"}
        if self.low is not None:
            out["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            out["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        return out


@dataclasses.dataclass(frozen=True)
class Boolean(Kind):
    expected = "true or false"

    def check(self, value: Any, place: Place) -> Any:
        return value if isinstance(value, bool) else place.refuse(value, self.expected)

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclasses.dataclass(frozen=True)
class Text(Kind):
    """A string matching a pattern (whole string), e.g. a name."""

    pattern: str = r"[A-Za-z0-9._-]{1,100}"
    described: str = "a name of 1 to 100 letters, digits, '.', '_' or '-'"

    @property
    def expected(self) -> str:
        return self.described

    def check(self, value: Any, place: Place) -> Any:
        if isinstance(value, str) and re.fullmatch(self.pattern, value):
            return value
        return place.refuse(value, self.expected)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": f"^{self.pattern}$"}


@dataclasses.dataclass(frozen=True)
class Choice(Kind):
    """One of a fixed set of JSON scalars (strings, or true/false)."""

    values: tuple[Any, ...]

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(show(v) for v in self.values)

    def check(self, value: Any, place: Place) -> Any:
        for allowed in self.values:
            if value == allowed and type(value) is type(allowed):
                return value
        return place.refuse(value, self.expected)

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.values)}


@dataclasses.dataclass(frozen=True)
class Nullable(Kind):
    inner: Kind

    @property
    def expected(self) -> str:
        return f"{self.inner.expected} or null"

    def check(self, value: Any, place: Place) -> Any:
        if value is None:
            return None
        # The inner kind's refusal should mention null too, so check first and reword.
        sink = Place([], place.path, place.owner, place.key)
        result = self.inner.check(value, sink)
        if result is INVALID:
            if len(sink.errors) == 1 and sink.errors[0].path == (place.path or "/"):
                return place.refuse(value, self.expected)
            place.errors.extend(sink.errors)
        return result

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [self.inner.schema(), {"type": "null"}]}


@dataclasses.dataclass(frozen=True)
class Either(Kind):
    """The first of several kinds that accepts the value (kinds are tried quietly)."""

    kinds: tuple[Kind, ...]
    described: str

    @property
    def expected(self) -> str:
        return self.described

    def check(self, value: Any, place: Place) -> Any:
        deeper: list[FieldError] = []
        for kind in self.kinds:
            sink = Place([], place.path, place.owner, place.key)
            result = kind.check(value, sink)
            if result is not INVALID:
                return result
            if all(error.path != place.path for error in sink.errors):
                # The value had this kind's form but wrong parts: those errors say more.
                deeper = deeper or sink.errors
        if deeper:
            place.errors.extend(deeper)
            return INVALID
        return place.refuse(value, self.expected)

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [kind.schema() for kind in self.kinds], "description": self.described}


@dataclasses.dataclass(frozen=True)
class ListOf(Kind):
    """A list of items of one kind, its length bounded."""

    item: Kind
    low: int = 0
    high: int = 64
    described: str | None = None

    @property
    def expected(self) -> str:
        if self.described:
            return self.described
        size = f"{self.low} to {self.high}" if self.low != self.high else str(self.low)
        return f"a list of {size} items, each {self.item.expected}"

    def check(self, value: Any, place: Place) -> Any:
        if not isinstance(value, list) or not self.low <= len(value) <= self.high:
            return place.refuse(value, self.expected)
        items = [self.item.check(item, place.at(i)) for i, item in enumerate(value)]
        return INVALID if any(item is INVALID for item in items) else items

    def schema(self) -> dict[str, Any]:
        return {
            "type": "array",
            "items": self.item.schema(),
            "minItems": self.low,
            "maxItems": self.high,
        }


@dataclasses.dataclass(frozen=True)
class TextMap(Kind):
    """An object of string keys to string values (user tags), its size bounded."""

    key: Text
    value: Text
    high: int = 20

    @property
    def expected(self) -> str:
        return (
            f"an object of at most {self.high} entries, keys {self.key.expected}, "
            f"values {self.value.expected}"
        )

    def check(self, value: Any, place: Place) -> Any:
        if not isinstance(value, dict) or len(value) > self.high:
            return place.refuse(value, self.expected)
        out = {}
        for key, item in value.items():
            at = place.at(key)
            if self.key.check(key, Place([], at.path)) is INVALID:
                place.errors.append(
                    FieldError(
                        at.path,
                        f"{place.owner} has a tag key {show(key)}. Expected {self.key.expected}.",
                        self.key.expected,
                        preview(key),
                    )
                )
                continue
            out[key] = self.value.check(item, at)
        return INVALID if len(out) < len(value) or INVALID in out.values() else out

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "maxProperties": self.high,
            "propertyNames": self.key.schema(),
            "additionalProperties": self.value.schema(),
        }


@dataclasses.dataclass(frozen=True)
class IntTuple(Kind):
    """An integer, or a list of `rank` integers, in [low, high]; normalized to the list."""

    rank: int
    low: int = 1
    high: int = 1024

    @property
    def expected(self) -> str:
        return f"an integer from {self.low} to {self.high}, or a list of {self.rank} such integers"

    def check(self, value: Any, place: Place) -> Any:
        items = [value] * self.rank if is_int(value) else value
        if (
            not isinstance(items, list)
            or len(items) != self.rank
            or not all(is_int(v) and self.low <= v <= self.high for v in items)
        ):
            return place.refuse(value, self.expected)
        return list(items)

    def schema(self) -> dict[str, Any]:
        single = {"type": "integer", "minimum": self.low, "maximum": self.high}
        many = {"type": "array", "items": single, "minItems": self.rank, "maxItems": self.rank}
        return {"anyOf": [single, many]}


@dataclasses.dataclass(frozen=True)
class Padding(Kind):
    """Keras padding/cropping: an int, `rank` ints, or `rank` pairs of ints (before, after)."""

    rank: int
    high: int = 1024

    @property
    def expected(self) -> str:
        if self.rank == 1:
            return f"an integer from 0 to {self.high}, or a [before, after] pair of them"
        return (
            f"an integer from 0 to {self.high}, a list of {self.rank} such integers, "
            f"or a list of {self.rank} [before, after] pairs"
        )

    def check(self, value: Any, place: Place) -> Any:
        def small(v: Any) -> bool:
            return is_int(v) and 0 <= v <= self.high

        def pair(v: Any) -> bool:
            return isinstance(v, list) and len(v) == 2 and all(map(small, v))

        if small(value):
            return value
        # One axis takes one [before, after] pair; several take a size or a pair per axis.
        if self.rank == 1:
            return list(value) if pair(value) else place.refuse(value, self.expected)
        if isinstance(value, list) and len(value) == self.rank:
            if all(small(v) for v in value):
                return list(value)
            if all(pair(v) for v in value):
                return [list(v) for v in value]
        return place.refuse(value, self.expected)

    def schema(self) -> dict[str, Any]:
        single = {"type": "integer", "minimum": 0, "maximum": self.high}
        pair = {"type": "array", "items": single, "minItems": 2, "maxItems": 2}
        if self.rank == 1:
            return {"anyOf": [single, pair]}
        per_axis = [
            {"type": "array", "items": item, "minItems": self.rank, "maxItems": self.rank}
            for item in (single, pair)
        ]
        return {"anyOf": [single, *per_axis]}


@dataclasses.dataclass(frozen=True)
class Shape(Kind):
    """A shape without the batch axis: positive integers, null where `variable` allows."""

    variable: bool = False
    allow_minus_one: bool = False
    high: int = 1 << 24

    @property
    def expected(self) -> str:
        dims = f"positive integers up to {self.high}"
        if self.variable:
            dims += " or null"
        if self.allow_minus_one:
            dims += " (one may be -1)"
        return f"a list of 1 to {MAX_RANK} {dims}"

    def check(self, value: Any, place: Place) -> Any:
        def dim(v: Any) -> bool:
            if v is None:
                return self.variable
            return is_int(v) and (1 <= v <= self.high or (self.allow_minus_one and v == -1))

        if (
            not isinstance(value, list)
            or not 1 <= len(value) <= MAX_RANK
            or not all(dim(v) for v in value)
            or sum(1 for v in value if v == -1) > 1
        ):
            return place.refuse(value, self.expected)
        return list(value)

    def schema(self) -> dict[str, Any]:
        dim: dict[str, Any] = {"type": "integer", "maximum": self.high}
        dim["minimum"] = -1 if self.allow_minus_one else 1
        item = {"anyOf": [dim, {"type": "null"}]} if self.variable else dim
        return {"type": "array", "items": item, "minItems": 1, "maxItems": MAX_RANK}


@dataclasses.dataclass(frozen=True)
class Axes(Kind):
    """An axis or a list of axes (negative counts from the end)."""

    single_only: bool = False

    @property
    def expected(self) -> str:
        axis = f"an integer from -{MAX_RANK} to {MAX_RANK}"
        return axis if self.single_only else f"{axis} or a list of such integers"

    def check(self, value: Any, place: Place) -> Any:
        def axis(v: Any) -> bool:
            return is_int(v) and -MAX_RANK <= v <= MAX_RANK

        if axis(value):
            return value
        many = isinstance(value, list) and 1 <= len(value) <= MAX_RANK
        if not self.single_only and many and all(axis(v) for v in value):
            return list(value)
        return place.refuse(value, self.expected)

    def schema(self) -> dict[str, Any]:
        axis = {"type": "integer", "minimum": -MAX_RANK, "maximum": MAX_RANK}
        if self.single_only:
            return axis
        return {"anyOf": [axis, {"type": "array", "items": axis, "maxItems": MAX_RANK}]}


@dataclasses.dataclass(frozen=True)
class Marked(Kind):
    """`inner` as it is, marked for check_arguments by the subclass: Dropped or Required."""

    inner: Kind

    @property
    def expected(self) -> str:
        return self.inner.expected

    def check(self, value: Any, place: Place) -> Any:
        return self.inner.check(value, place)

    def schema(self) -> dict[str, Any]:
        return self.inner.schema()


class Dropped(Marked):
    """A key Keras's serializer writes that we check and then leave out of the normalized form."""


class Required(Marked):
    """An argument the constructor cannot do without."""


def check_arguments(
    config: Any, arguments: Mapping[str, Kind], place: Place, what: str = "argument"
) -> Any:
    """Check a `config` object against a table of argument kinds; every error is recorded.

    Unknown keys are refused, required ones demanded, `Dropped` ones checked and left out.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        return place.refuse(config, "an object of arguments")
    out: dict[str, Any] = {}
    bad = False
    for key, value in config.items():
        kind = arguments.get(key)
        if kind is None:
            place.refuse_key(key, list(arguments), what)
            bad = True
            continue
        result = kind.check(value, place.at(key))
        if result is INVALID:
            bad = True
        elif not isinstance(kind, Dropped):
            out[key] = result
    for key, kind in arguments.items():
        if isinstance(kind, Required) and key not in config:
            place.errors.append(
                FieldError(
                    place.at(key).path,
                    f"{place.owner} needs {place.key + '.' if place.key else ''}{key}. "
                    f"Expected {kind.expected}.",
                    kind.expected,
                    None,
                )
            )
            bad = True
    return INVALID if bad else out


# What Keras's serializer writes beside every object's class and config.
KERAS_ENVELOPE: dict[str, Any] = {
    "module": {"type": "string", "pattern": r"^keras(\..+)?$"},
    "registered_name": {"type": "null"},
}


def keras_object_schema(
    class_name: str, arguments: Mapping[str, Kind], *, closed: bool, envelope: bool = True
) -> dict[str, Any]:
    """The schema of `{class_name, config}` as Keras writes it for an allowlisted class, with
    its `module` and `registered_name` unless `envelope` is False (the caller spells them)."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "class_name": {"const": class_name},
            "config": arguments_schema(arguments),
            **(KERAS_ENVELOPE if envelope else {}),
        },
        "required": ["class_name"],
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def arguments_schema(arguments: Mapping[str, Kind]) -> dict[str, Any]:
    """The JSON Schema of a `config` object read by `check_arguments` (null reads as {})."""
    return {
        "type": ["object", "null"],
        "properties": {key: kind.schema() for key, kind in arguments.items()},
        "required": [key for key, kind in arguments.items() if isinstance(kind, Required)],
        "additionalProperties": False,
    }


def check_module(value: Any, place: Place) -> bool:
    """`module` must be `keras` or below it: the serializer's own modules, nothing else."""
    if value is None or (
        isinstance(value, str) and (value == "keras" or value.startswith("keras."))
    ):
        return True
    place.refuse(value, "'keras' or a module starting with 'keras.'")
    return False


def check_class_name(
    obj: dict[str, Any],
    place: Place,
    noun: str,
    allowed: list[str],
    refused: Mapping[str, str] | None = None,
    registered_names: tuple[str, ...] = (),
) -> str | None:
    """Read `class_name`, `module` and `registered_name` of a serialized object.

    Returns the class name, or None after recording why it is refused. `registered_name` is
    accepted only as null, or as one of `registered_names` (what Keras itself writes there).
    """
    ok = check_module(obj.get("module"), place.at("module"))
    registered = obj.get("registered_name")
    if registered is not None and registered not in registered_names:
        expected = "null" + "".join(f" or {name!r}" for name in registered_names)
        place.at("registered_name").refuse(
            registered,
            expected,
            f"{place.owner} has registered_name={show(registered)}: custom registered objects "
            f"are not accepted. Expected {expected}.",
        )
        ok = False
    name = obj.get("class_name")
    if not isinstance(name, str) or name not in allowed:
        spot = place.at("class_name")
        if isinstance(name, str) and refused and name in refused:
            spot.refuse(
                name, f"one of {', '.join(allowed)}", f"{name} is refused: {refused[name]}."
            )
        else:
            close = difflib.get_close_matches(name, allowed, n=3) if isinstance(name, str) else []
            expected = "one of " + ", ".join(close or allowed)
            spot.refuse(
                name,
                expected,
                f"{place.owner} has an unknown {noun} {show(name)}. Expected {expected}.",
            )
        return None
    return name if ok else None


@dataclasses.dataclass(frozen=True)
class Catalog(Kind):
    """An allowlisted object: a name (`"he_normal"`) or `{"class_name", "config"}` of a class.

    `names` are the string forms Keras resolves; `classes` maps class names to their arguments.
    A class may also be given by its bare class name as a string, as Keras allows.
    """

    noun: str
    names: tuple[str, ...]
    classes: Mapping[str, Mapping[str, Kind]]
    object_keys: tuple[str, ...] = ("module", "class_name", "config", "registered_name")

    @property
    def expected(self) -> str:
        parts = []
        if self.names:
            parts.append("a name, one of " + ", ".join(self.names))
        if self.classes:
            parts.append(
                '{"class_name", "config"} with class_name one of ' + ", ".join(self.classes)
            )
        return f"an allowlisted {self.noun}: " + "; or ".join(parts)

    @property
    def bare_names(self) -> tuple[str, ...]:
        """The names a string may give: Keras's names, and the classes that need no argument
        (a class with a required argument, an RNN's units, must come as an object)."""
        bare = [
            name
            for name, arguments in self.classes.items()
            if not any(isinstance(kind, Required) for kind in arguments.values())
        ]
        return (*self.names, *bare)

    def check(self, value: Any, place: Place) -> Any:
        if isinstance(value, str):
            if value in self.bare_names:
                return value
            if value in self.classes:
                return place.refuse(
                    value,
                    f'{{"class_name": {show(value)}, "config": {{...}}}}',
                    f"{place.owner} has {place.key or 'a value'}={show(value)}: {value} needs "
                    f"arguments, so it comes as an object. Expected "
                    f'{{"class_name": {show(value)}, "config": {{...}}}}.',
                )
            allowed = list(self.bare_names)
            close = [] if place.full else difflib.get_close_matches(value, allowed, n=3)
            known = ", ".join(close or allowed)
            if not allowed:
                return place.refuse(value, self.expected)
            return place.refuse(value, f"a known {self.noun}, one of {known}")
        if not isinstance(value, dict):
            return place.refuse(value, self.expected)
        bad = [key for key in value if key not in self.object_keys]
        for key in bad:
            place.refuse_key(key, list(self.object_keys), "key")
        name = check_class_name(value, place, self.noun, list(self.classes) + list(self.names))
        if name is None or bad:
            return INVALID
        if name not in self.classes:
            # A function given as an object (an activation): it takes no arguments.
            if value.get("config") not in (None, {}):
                return place.at("config").refuse(value["config"], "no arguments")
            return name
        inner = place.at("config")
        config = check_arguments(value.get("config"), self.classes[name], inner)
        return INVALID if config is INVALID else {"class_name": name, "config": config}

    def schema(self) -> dict[str, Any]:
        objects = [
            keras_object_schema(name, arguments, closed=True)
            for name, arguments in self.classes.items()
        ]
        names = [{"enum": list(self.bare_names)}] if self.bare_names else []
        return {"anyOf": [*names, *objects], "description": f"an allowlisted {self.noun}"}
