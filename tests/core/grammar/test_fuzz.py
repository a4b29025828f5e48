"""The grammar fuzzed: whatever arrives is a spec or InvalidRequest, and what validates, trains.

Four kinds of input, each with a fixed example count:
- random JSON anywhere in valid requests (both model forms), and as whole bodies;
- values drawn from the grammar's own tables (`values(kind)` reads a kind of
  core/grammar/allowlist.py: bounds, choices, ranks, catalogs), inside, at the edges and just
  past them, so most requests get deep into the parser;
- values of the wrong structure for every argument of every allowlisted layer, so no shape rule
  ever indexes into something it did not expect;
- requests that parse are built, compiled, trained one step on synthetic data of the dataset's
  shapes and dtypes, and asked for a prediction: a request Keras refuses must never reach a
  worker.
Each refusal carries field errors that point at places in the request (RFC 6901). Finally the
generated JSON Schema and the parsers must agree, section by section.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Iterator
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from core.errors import FieldError, InvalidRequest
from core.grammar import allowlist, grammar_schema, kinds, parse_job_request
from core.grammar.data import CHECKPOINT_KINDS, parse_checkpoint
from core.grammar.fit import Callbacks, ClassWeight, fit_kinds, parse_fit
from core.settings import Settings
from tests.core.grammar.test_grammar import DESIGN_EXAMPLE
from tests.core.grammar.test_model_forms import DATASET, MNIST_LIKE
from tests.service.test_refusals import DELETE, changed
from tests.support.seed_model import build_seed_model

SETTINGS = Settings()
BASE = {**DESIGN_EXAMPLE, "data": {"dataset": DATASET, "x": "x", "y": "y"}}
KERAS_FORM = {**BASE, "model": json.loads(build_seed_model().to_json())}
del KERAS_FORM["compile"]
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Training a model takes a second or so: these run few examples, each a whole job in small,
# and report a failure as drawn (shrinking it would train hundreds of models).
TRAIN = settings(FUZZ, max_examples=20, phases=(Phase.explicit, Phase.generate))

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["relu", "Dense", "keras.layers", "he_normal", "val_loss", "x", DATASET]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
WRONG = st.none() | st.booleans() | st.text(max_size=6) | st.just([]) | st.just({})
BIG = 2**40


# --- checking an answer ------------------------------------------------------------------------


def pointer_tokens(pointer: str) -> list[str]:
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def points_into(body: Any, pointer: str) -> bool:
    """The pointer names a place in `body`: each step exists, until a key the request left out
    (or a null standing for it), or the end of a list (where a missing item would go)."""
    if pointer == "":
        return True
    if not pointer.startswith("/"):
        return False
    target = body
    for token in pointer_tokens(pointer):
        if target is None or (isinstance(target, dict) and token not in target):
            return True
        if isinstance(target, dict):
            target = target[token]
        elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
            target = target[int(token)]
        else:
            return isinstance(target, list) and token == str(len(target))
    return True


def parse(body: Any, manifest_of: Any = MNIST_LIKE) -> dict[str, Any] | None:
    """The spec, or None for a refusal whose errors render as JSON and point into `body`."""
    errors: list[FieldError] = []
    spec = None
    try:
        spec = parse_job_request(body, settings=SETTINGS, manifest_of=manifest_of)
    except InvalidRequest as error:
        errors = error.errors or [FieldError("", "")]
    for field in errors:
        assert field.message, "InvalidRequest without a field error"
        orjson.dumps(field.to_dict())
        if isinstance(body, dict):
            assert points_into(body, field.path), (field.path, field.message)
    orjson.dumps(spec)
    return spec


def test_both_bases_are_valid() -> None:
    assert parse(BASE) is not None
    assert parse(KERAS_FORM) is not None


def test_the_checker_finds_a_pointer_outside_the_request() -> None:
    assert points_into(BASE, "/model/layers/0/config/units")
    assert points_into(BASE, "/model/layers/0/config/missing")
    assert points_into(BASE, "/model/layers/4")
    assert not points_into(BASE, "/model/input_shape/0/units")
    assert not points_into(BASE, "model/layers")
    assert not points_into(BASE, "/model/layers/9/config")


# --- random JSON --------------------------------------------------------------------------------


def pointers(value: Any, prefix: str = "") -> Iterator[str]:
    """Every JSON pointer inside a document, the root's children first."""
    if isinstance(value, dict):
        items = [(key.replace("~", "~0").replace("/", "~1"), item) for key, item in value.items()]
    elif isinstance(value, list):
        items = [(str(index), item) for index, item in enumerate(value)]
    else:
        return
    for token, item in items:
        yield f"{prefix}/{token}"
        yield from pointers(item, f"{prefix}/{token}")


PLACES = [(BASE, p) for p in pointers(BASE)] + [(KERAS_FORM, p) for p in pointers(KERAS_FORM)]


@settings(FUZZ, max_examples=300)
@given(place=st.sampled_from(PLACES), value=JSON | st.just(DELETE))
def test_random_json_anywhere_never_crashes(place: tuple[dict, str], value: Any) -> None:
    base, pointer = place
    parse(changed(base, pointer, value))


@settings(FUZZ, max_examples=100)
@given(body=JSON)
def test_random_bodies_never_crash(body: Any) -> None:
    parse(body)


def test_deep_nesting_is_refused_not_recursed() -> None:
    deep: Any = "relu"
    for _ in range(500):
        deep = {"class_name": "Dense", "config": {"activation": deep}}
    assert parse(changed(BASE, "/model/layers/0/config/activation", deep)) is None


# --- values drawn from the grammar's tables -------------------------------------------------


def edges(low: float | None, high: float | None) -> list[float]:
    """A kind's bounds and the values just past them."""
    out: list[float] = []
    for bound in (low, high):
        if bound is not None:
            out += [bound, bound - 1, bound + 1]
    return out


def integers(kind: kinds.Integer, exact: bool) -> st.SearchStrategy:
    low = -BIG if kind.low is None else kind.low
    high = BIG if kind.high is None else kind.high
    inside = st.integers(low, min(high, low + 64)) | st.sampled_from([low, high])
    if exact:
        return inside
    return inside | st.sampled_from([int(e) for e in edges(kind.low, kind.high)] or [0])


def numbers(kind: kinds.Number, exact: bool) -> st.SearchStrategy:
    inside = st.floats(
        kind.low,
        kind.high,
        allow_nan=False,
        allow_infinity=False,
        exclude_min=kind.low_open and kind.low is not None,
        exclude_max=kind.high_open and kind.high is not None,
    )
    if exact:
        return inside
    return inside | st.sampled_from(edges(kind.low, kind.high) or [0.0]) | st.integers(-3, 3)


def int_tuples(rank: int, low: int, high: int, exact: bool) -> st.SearchStrategy:
    item = st.integers(low, min(high, low + 3))
    if exact:
        return item | st.lists(item, min_size=rank, max_size=rank)
    item = item | st.sampled_from([low - 1, high, high + 1])
    return item | st.lists(item, min_size=max(rank - 1, 0), max_size=rank + 1)


def paddings(rank: int, exact: bool) -> st.SearchStrategy:
    item = st.integers(0, 2)
    pair = st.lists(item, min_size=2, max_size=2)
    if rank == 1:
        drawn = item | pair
    else:
        drawn = item | st.lists(item, min_size=rank, max_size=rank)
        drawn |= st.lists(pair, min_size=rank, max_size=rank)
    if exact:
        return drawn
    return drawn | st.lists(item | pair, max_size=rank + 1) | st.sampled_from([-1, 1025])


def catalog(kind: kinds.Catalog, exact: bool) -> st.SearchStrategy:
    """A name, or `{"class_name", "config"}` of a class with any subset of its arguments."""
    names = list(kind.bare_names) if exact else [*kind.names, *kind.classes]
    options = [st.sampled_from(names)] if names else []
    for name, arguments in kind.classes.items():
        options.append(
            st.fixed_dictionaries(
                {"class_name": st.just(name), "config": config_of(arguments, exact)},
                optional={"module": st.sampled_from(["keras"] if exact else ["keras", "os"])},
            )
        )
    return st.one_of(options) if options else WRONG


def class_weights(exact: bool) -> st.SearchStrategy:
    keys = st.from_regex(r"[0-9]{1,2}", fullmatch=True)
    if not exact:
        keys |= st.sampled_from(["", "a", "-1", "1234567890"])
    weights = numbers(kinds.Number(0), exact)
    return st.none() | st.dictionaries(keys, weights, min_size=0 if not exact else 1, max_size=4)


def config_of(arguments: dict[str, kinds.Kind], exact: bool = True) -> st.SearchStrategy:
    """Required arguments present, the others sometimes, each drawn from its kind."""
    required = {k: v for k, v in arguments.items() if isinstance(v, kinds.Required)}
    optional = {k: v for k, v in arguments.items() if k not in required}

    def drawn(kind: kinds.Kind) -> st.SearchStrategy:
        return st.deferred(lambda: values(kind, exact))

    return st.fixed_dictionaries(
        {name: drawn(kind) for name, kind in required.items()},
        optional={name: drawn(kind) for name, kind in optional.items()},
    )


def values(kind: kinds.Kind, exact: bool = True) -> st.SearchStrategy:
    """Values a kind accepts (`exact`), or also its edges, values past them, other types."""
    match kind:
        case kinds.Required(inner) | kinds.Dropped(inner):
            drawn = values(inner, exact)
        case kinds.Nullable(inner):
            drawn = st.none() | values(inner, exact)
        case kinds.Either(options, _):
            drawn = st.one_of([values(option, exact) for option in options])
        case kinds.Integer():
            drawn = integers(kind, exact)
        case kinds.Number():
            drawn = numbers(kind, exact)
        case kinds.Boolean():
            drawn = st.booleans()
        case kinds.Text(pattern, _):
            drawn = st.from_regex(pattern, fullmatch=True)
        case kinds.Choice(options):
            drawn = st.sampled_from(list(options))
        case kinds.ListOf(item, low, high, _):
            drawn = st.lists(values(item, exact), min_size=low, max_size=min(high, low + 3))
        case kinds.IntTuple(rank, low, high):
            drawn = int_tuples(rank, low, high, exact)
        case kinds.Padding(rank, _):
            drawn = paddings(rank, exact)
        case kinds.Shape():
            drawn = st.lists(st.integers(1, 9), min_size=1, max_size=4)
        case kinds.Axes():
            drawn = st.integers(-2, 2) | st.lists(st.integers(-2, 2), min_size=1, max_size=2)
        case kinds.Catalog():
            drawn = catalog(kind, exact)
        case ClassWeight():
            drawn = class_weights(exact)
        case Callbacks():
            drawn = st.lists(st.deferred(lambda: CALLBACKS), max_size=2)
        case _:
            drawn = JSON
    return drawn if exact else st.one_of(drawn, drawn, drawn, WRONG)


def mutated(data: st.DataObject, document: dict, arguments: dict[str, kinds.Kind]) -> dict:
    """`document` with one argument of its table dropped or set to a near-miss of its kind."""
    name = data.draw(st.sampled_from(sorted(arguments)))
    value = data.draw(st.just(DELETE) | values(arguments[name], exact=False))
    if value is DELETE:
        return {key: item for key, item in document.items() if key != name}
    return {**document, name: value}


LAYER_NAMES = sorted(allowlist.LAYERS)
# Dense(32)'s output reshaped for layers of every rank: vectors, sequences, images, volumes.
TARGETS = [[32], [8, 4], [4, 4, 2], [2, 2, 2, 4]]
CALLBACKS = st.one_of(
    [
        st.fixed_dictionaries({"class_name": st.just(name), "config": config_of(arguments, exact)})
        for name, arguments in allowlist.CALLBACK_CLASSES.items()
        for exact in (True, False)
    ]
)


def around(layer: dict, target: list[int]) -> dict:
    """The base request with `layer` between a Reshape to `target` and a Flatten."""
    dense, _, *head = BASE["model"]["layers"]
    layers = [
        dense,
        {"class_name": "Reshape", "config": {"target_shape": target}},
        layer,
        {"class_name": "Flatten", "config": {}},
        *head,
    ]
    return changed(BASE, "/model/layers", layers)


@FUZZ
@given(
    data=st.data(),
    name=st.sampled_from(LAYER_NAMES),
    target=st.sampled_from(TARGETS),
    mutate=st.booleans(),
)
def test_any_allowlisted_layer_with_drawn_arguments(data, name, target, mutate) -> None:
    """A layer of each class with valid arguments, or with one argument a near-miss."""
    arguments = allowlist.LAYERS[name]
    config = data.draw(config_of(arguments))
    if mutate:
        config = mutated(data, config, arguments)
    parse(around({"class_name": name, "config": config}, target))


def compiled(optimizer: Any, loss: Any, metrics: Any, callbacks: Any) -> dict:
    body = changed(BASE, "/compile/optimizer", optimizer)
    body = changed(body, "/compile/loss", loss)
    body = changed(body, "/compile/metrics", metrics)
    return changed(body, "/fit/callbacks", callbacks)


@FUZZ
@given(
    optimizer=values(allowlist.OPTIMIZER) | values(allowlist.OPTIMIZER, exact=False),
    loss=values(allowlist.LOSS) | values(allowlist.LOSS, exact=False),
    metrics=st.lists(values(allowlist.METRIC) | values(allowlist.METRIC, exact=False), max_size=3),
    callbacks=st.lists(CALLBACKS, max_size=2),
)
def test_compile_and_fit_objects_from_their_catalogs(optimizer, loss, metrics, callbacks) -> None:
    parse(compiled(optimizer, loss, metrics, callbacks))


def request_places(value: Any, prefix: str = "") -> list[str]:
    """Every pointer into the base request."""
    return list(pointers(value, prefix))


@FUZZ
@given(data=st.data())
def test_each_key_and_value_of_a_valid_request_mutated(data: st.DataObject) -> None:
    """Drop a key, or swap a value for a near-miss of the same shape."""
    pointer = data.draw(st.sampled_from(request_places(BASE)))
    original: Any = BASE
    for token in pointer_tokens(pointer):
        original = original[int(token)] if isinstance(original, list) else original[token]
    if isinstance(original, bool):
        near = st.sampled_from([not original, 0, "yes"])
    elif isinstance(original, int | float):
        near = st.sampled_from([0, -1, original * 1000, -original, str(original), 2**63, 0.5])
    elif isinstance(original, str):
        near = st.sampled_from([original.upper(), original + "_", "", " " + original, "../x"])
    else:
        near = WRONG | JSON
    parse(changed(BASE, pointer, data.draw(st.just(DELETE) | near)))


# --- structure before rules ---------------------------------------------------------------------

# Values of the wrong structure: strings (a bare class name where an object belongs), lists of
# every short length and nesting, objects (a nested layer, half of one), null, booleans and
# numbers past every bound.
WRONG_STRUCTURES: list[Any] = [
    "LSTM",
    "",
    [],
    [1],
    [1, 2, 3],
    [[1, 2]],
    [[1], [2]],
    [[1, 2], [3, 4], [5, 6]],
    [None],
    {},
    {"class_name": "LSTM"},
    {"class_name": "LSTM", "config": {"units": [2]}},
    None,
    True,
    2**63,
    -(10**30),
    1e308,
    0.5,
]


@functools.cache
def simplest_config(name: str) -> tuple[dict[str, Any], list[int]]:
    """The layer's required arguments at their simplest valid values, and an input shape it
    takes with them (so the wrong value is the only thing wrong, and shape rules are reached)."""
    arguments = allowlist.LAYERS[name]
    config = {
        key: find(values(kind), lambda _: True)
        for key, kind in arguments.items()
        if isinstance(kind, kinds.Required)
    }
    for target in TARGETS:
        try:
            parse_job_request(
                around({"class_name": name, "config": config}, target),
                settings=SETTINGS,
                manifest_of=MNIST_LIKE,
            )
        except InvalidRequest:
            continue
        return config, target
    return config, TARGETS[1]


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_wrong_structures_are_refused_for_every_argument(name: str) -> None:
    """Every argument of the layer, given each wrong structure: a refusal or a valid request,
    never another exception (an IndexError in a shape rule, a TypeError in a formula)."""
    config, target = simplest_config(name)
    for argument in allowlist.LAYERS[name]:
        for value in WRONG_STRUCTURES:
            body = around({"class_name": name, "config": {**config, argument: value}}, target)
            try:
                parse_job_request(body, settings=SETTINGS, manifest_of=MNIST_LIKE)
            except InvalidRequest:
                pass
            except Exception as error:
                pytest.fail(f"{name}.{argument}={value!r} raised {error!r}")


def test_a_bare_string_for_a_nested_layer_is_a_refusal() -> None:
    body = around({"class_name": "Bidirectional", "config": {"layer": "LSTM"}}, [8, 4])
    with pytest.raises(InvalidRequest) as refused:
        parse_job_request(body, settings=SETTINGS, manifest_of=MNIST_LIKE)
    (error,) = refused.value.errors
    assert error.path == "/model/layers/2/config/layer"
    assert "comes as an object" in error.message


@pytest.mark.parametrize(
    ("name", "argument", "value"),
    [
        ("ZeroPadding1D", "padding", [3]),
        ("Cropping1D", "cropping", [[1, 1]]),
        ("ZeroPadding2D", "padding", [1]),
        ("Cropping2D", "cropping", [[1, 1]]),
    ],
)
def test_a_short_list_where_a_pair_belongs_is_a_refusal(name, argument, value) -> None:
    target = [8, 4] if name.endswith("1D") else [4, 4, 2]
    body = around({"class_name": name, "config": {argument: value}}, target)
    with pytest.raises(InvalidRequest) as refused:
        parse_job_request(body, settings=SETTINGS, manifest_of=MNIST_LIKE)
    assert [e.path for e in refused.value.errors] == [f"/model/layers/2/config/{argument}"]


# --- what validates, trains ---------------------------------------------------------------------


def synthetic(spec: dict[str, Any], manifest_of: Any, rows: int) -> tuple[Any, Any]:
    """x and y of the dataset's shapes, dtypes and value ranges (its manifest's statistics)."""
    rng = np.random.default_rng(0)
    arrays = manifest_of(spec["data"]["dataset"])["arrays"]

    def drawn(name: str) -> np.ndarray:
        entry = arrays[name]
        stats, shape = entry["stats"], (rows, *entry["shape"][1:])
        if stats.get("labels"):
            labels = rng.integers(0, len(stats["labels"]), shape[:1])
            return np.eye(shape[-1], dtype=entry["dtype"])[labels % shape[-1]]
        return rng.uniform(stats["min"], stats["max"], shape).astype(entry["dtype"])

    def single(names: dict[str, str]) -> Any:
        made = {model_name: drawn(array) for model_name, array in names.items()}
        return next(iter(made.values())) if len(made) == 1 else made

    return single(spec["data"]["x"]), single(spec["data"]["y"])


def train_and_predict(spec: dict[str, Any], manifest_of: Any = MNIST_LIKE) -> None:
    """Build, compile, one epoch of a few steps with the request's fit arguments, one prediction."""
    import keras

    from core.modeling import build_callbacks, build_model, compile_model, fit_arguments

    keras.utils.set_random_seed(0)
    x, y = synthetic(spec, manifest_of, rows=16)
    arguments = {**fit_arguments(spec), "epochs": 1, "verbose": 0}
    arguments["batch_size"] = min(arguments["batch_size"], 8)
    with warnings.catch_warnings():
        # Keras's advice about the drawn values (a monitor this run does not log, steps past
        # the data) is not a failure; errors and numeric warnings (an overflowing cast) are.
        warnings.simplefilter("ignore", UserWarning)
        model = build_model(spec)
        compile_model(model, spec)
        model.fit(x, y, callbacks=build_callbacks(spec), **arguments)
        predicted = model.predict_on_batch(x[:2] if not isinstance(x, dict) else x)
    assert len(predicted) in (2, len(spec["model"]["outputs"]))


def test_the_base_request_trains_and_predicts() -> None:
    spec = parse(BASE)
    assert spec is not None
    train_and_predict(spec)


@TRAIN
@given(data=st.data(), name=st.sampled_from(LAYER_NAMES), target=st.sampled_from(TARGETS))
def test_what_validates_with_any_layer_trains(data, name, target) -> None:
    """A request that parses, with a layer of any class and any of its arguments, trains a step
    and predicts: one Keras refuses must never reach a worker."""
    config = data.draw(config_of(allowlist.LAYERS[name]))
    spec = parse(around({"class_name": name, "config": config}, target))
    if spec is not None:
        train_and_predict(spec)


@TRAIN
@given(
    optimizer=values(allowlist.OPTIMIZER),
    loss=values(allowlist.LOSS),
    metrics=st.lists(values(allowlist.METRIC), max_size=2),
    fit=config_of(fit_kinds(SETTINGS)),
)
def test_what_validates_with_any_compile_and_fit_trains(optimizer, loss, metrics, fit) -> None:
    """Optimizers, schedules, losses, metrics, callbacks and fit arguments that parse train."""
    body = compiled(optimizer, loss, metrics, [])
    spec = parse(changed(body, "/fit", {**fit, "epochs": 1}))
    if spec is not None:
        train_and_predict(spec)


# --- schema and parsers agree -------------------------------------------------------------------

SCHEMA = grammar_schema(SETTINGS)


def schema_accepts(section: str, value: Any) -> bool:
    subschema = {**SCHEMA["properties"][section], "$defs": SCHEMA["$defs"]}
    validator = jsonschema.Draft202012Validator(subschema)
    return validator.is_valid(value)


def section_errors(check: Any) -> list[FieldError]:
    errors: list[FieldError] = []
    try:
        check(kinds.Place(errors))
    except InvalidRequest as error:
        errors.extend(error.errors)
    return errors


def parse_resources(value: Any, place: kinds.Place) -> None:
    kinds.check_arguments(
        value, allowlist.resource_kinds(SETTINGS.max_gpus_per_job), place.at("resources")
    )


SECTION_PARSERS = {
    "resources": parse_resources,
    "fit": lambda value, place: parse_fit(value, place.at("fit"), SETTINGS),
    # With validation data, so a `val_` monitor is not refused for want of it.
    "checkpoint": lambda value, place: parse_checkpoint(
        value, {"data": {"validation": {}}, "fit": {"callbacks": []}}, settings=SETTINGS
    ),
}
SECTION_KINDS = {
    "resources": allowlist.resource_kinds(SETTINGS.max_gpus_per_job),
    "fit": fit_kinds(SETTINGS),
    "checkpoint": CHECKPOINT_KINDS,
}
# Valid sections (each argument inside its kind) and near-misses (some at or past the edges).
SECTION_VALUES = {
    section: config_of(arguments) | config_of(arguments, exact=False)
    for section, arguments in SECTION_KINDS.items()
}


@settings(FUZZ, max_examples=150)
@given(data=st.data(), section=st.sampled_from(sorted(SECTION_PARSERS)))
def test_schema_and_parser_agree_on_closed_sections(data, section) -> None:
    """resources, fit and checkpoint are checked by their kinds alone: the schema accepts
    exactly what the parser accepts."""
    value = data.draw(SECTION_VALUES[section] | WRONG, label=section)
    errors = section_errors(lambda place: SECTION_PARSERS[section](value, place))
    assert schema_accepts(section, value) == (not errors), (section, value, errors)


def layer_objects(exact: bool) -> st.SearchStrategy:
    return st.sampled_from(LAYER_NAMES).flatmap(
        lambda name: st.fixed_dictionaries(
            {"class_name": st.just(name), "config": config_of(allowlist.LAYERS[name], exact)}
        )
    )


OPEN_SECTIONS = {
    "model": st.fixed_dictionaries(
        {"input_shape": values(kinds.Shape(), exact=False)},
        optional={"layers": st.lists(layer_objects(exact=False), min_size=1, max_size=3)},
    )
    | WRONG,
    "compile": st.fixed_dictionaries(
        {"loss": values(allowlist.LOSS, exact=False)},
        optional={
            "optimizer": values(allowlist.OPTIMIZER, exact=False),
            "metrics": st.lists(values(allowlist.METRIC, exact=False), max_size=2),
            "jit_compile": st.sampled_from([True, False, "auto", "yes"]),
            "steps_per_execution": st.integers(-1, 10_001),
        },
    )
    | WRONG,
    "data": st.fixed_dictionaries({"dataset": st.just(DATASET), "x": st.just("x")}) | JSON,
}


@settings(FUZZ, max_examples=150)
@given(data=st.data(), section=st.sampled_from(sorted(OPEN_SECTIONS)))
def test_schema_accepts_what_the_parser_accepts_in_open_sections(data, section) -> None:
    """model, compile and data are also checked against the model's outputs and the datasets,
    which no schema knows: what the parser accepts, the schema accepts (and what the schema
    refuses, the parser refuses)."""
    value = data.draw(OPEN_SECTIONS[section], label=section)
    try:
        parse_job_request(
            changed(BASE, f"/{section}", value), settings=SETTINGS, manifest_of=MNIST_LIKE
        )
    except InvalidRequest as error:
        if any(e.path.startswith(f"/{section}") for e in error.errors):
            return
    assert schema_accepts(section, value), (section, value)


def test_checkpoint_mode_auto_is_in_the_schema_and_the_parser() -> None:
    value = {"monitor": "val_accuracy", "mode": "auto"}
    assert schema_accepts("checkpoint", value)
    spec = parse(changed(BASE, "/checkpoint", value))
    assert spec is not None
    assert spec["checkpoint"]["mode"] == "max"


def test_initial_epoch_is_refused_with_warm_start_named() -> None:
    body = changed(BASE, "/fit/initial_epoch", 3)
    with pytest.raises(InvalidRequest) as refused:
        parse_job_request(body, settings=SETTINGS, manifest_of=MNIST_LIKE)
    (error,) = refused.value.errors
    assert error.path == "/fit/initial_epoch"
    assert "warm_start" in error.message
    assert not schema_accepts("fit", {"initial_epoch": 3})
