"""The grammar fuzzed with values drawn from its own tables, not only from random JSON.

`values(kind)` reads a kind of core/grammar/allowlist.py (bounds, choices, ranks, catalogs) and
draws values inside it, at its edges and just past them, so most requests get deep into the parser:
whole layers of every allowlisted class with any subset of their arguments, optimizers, losses,
metrics and callbacks from their catalogs. tests/core/grammar/test_grammar_fuzz.py puts random JSON
anywhere; this file puts nearly-right values everywhere. Every request must parse, or be refused
with InvalidRequest whose field errors point at places in that request (RFC 6901).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import InvalidRequest
from core.grammar import allowlist, kinds, parse_job_request
from core.settings import Settings
from tests.core.grammar.test_grammar import DESIGN_EXAMPLE
from tests.core.grammar.test_grammar_fuzz import JSON
from tests.core.grammar.test_model_forms import DATASET, MNIST_LIKE
from tests.service.test_refusals import DELETE, changed

BASE = {**DESIGN_EXAMPLE, "data": {"dataset": DATASET, "x": "x", "y": "y"}}
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
WRONG = st.none() | st.booleans() | st.text(max_size=6) | st.just([]) | st.just({})
BIG = 2**40


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


def catalog(kind: kinds.Catalog, exact: bool) -> st.SearchStrategy:
    """A name, or `{"class_name", "config"}` of a class with any subset of its arguments."""
    options = [st.sampled_from(list(kind.names) + list(kind.classes))] if kind.names else []
    for name, arguments in kind.classes.items():
        options.append(
            st.fixed_dictionaries(
                {"class_name": st.just(name), "config": config_of(arguments, exact)},
                optional={"module": st.sampled_from(["keras"] if exact else ["keras", "os"])},
            )
        )
    return st.one_of(options) if options else WRONG


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
        case kinds.Padding(rank, high):
            drawn = int_tuples(rank, 0, min(high, 2), exact)
        case kinds.Shape():
            drawn = st.lists(st.integers(1, 9), min_size=1, max_size=4)
        case kinds.Axes():
            drawn = st.integers(-2, 2) | st.lists(st.integers(-2, 2), min_size=1, max_size=2)
        case kinds.Catalog():
            drawn = catalog(kind, exact)
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
TARGET_SHAPES = st.sampled_from([[32], [8, 4], [4, 4, 2], [2, 2, 2, 4]])
CALLBACKS = st.one_of(
    [
        st.fixed_dictionaries({"class_name": st.just(name), "config": config_of(arguments, exact)})
        for name, arguments in allowlist.CALLBACK_CLASSES.items()
        for exact in (True, False)
    ]
)


def pointer_tokens(pointer: str) -> list[str]:
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def points_into(body: Any, pointer: str) -> bool:
    """The pointer names a place in `body`: each step exists, until a key the request left out
    (or a null standing for it), or the end of a list (where a missing item would go)."""
    if pointer == "":
        return True
    if not pointer.startswith("/"):
        return False
    tokens = pointer_tokens(pointer)
    target = body
    for token in tokens:
        if target is None or (isinstance(target, dict) and token not in target):
            return True
        if isinstance(target, dict):
            target = target[token]
        elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
            target = target[int(token)]
        else:
            return isinstance(target, list) and token == str(len(target))
    return True


def answer(body: dict) -> None:
    """Parse; a refusal must carry errors located in `body`."""
    errors = []
    try:
        parse_job_request(body, settings=Settings(), manifest_of=MNIST_LIKE)
    except InvalidRequest as error:
        errors = error.errors or [None]
    for field in errors:
        assert field is not None, "InvalidRequest without a field error"
        assert field.message
        assert points_into(body, field.path), (field.path, field.message)


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
    data=st.data(), name=st.sampled_from(LAYER_NAMES), target=TARGET_SHAPES, mutate=st.booleans()
)
def test_any_allowlisted_layer_with_drawn_arguments(data, name, target, mutate) -> None:
    """A layer of each class with valid arguments, or with one argument a near-miss."""
    arguments = allowlist.LAYERS[name]
    config = data.draw(config_of(arguments))
    if mutate:
        config = mutated(data, config, arguments)
    answer(around({"class_name": name, "config": config}, target))


@settings(FUZZ, max_examples=100)
@given(data=st.data(), name=st.sampled_from(LAYER_NAMES), target=TARGET_SHAPES)
def test_what_the_grammar_accepts_keras_builds(data, name, target) -> None:
    """A request that parses must build and compile: one Keras refuses must never reach a GPU."""
    from core.modeling import build_model, compile_model

    config = data.draw(config_of(allowlist.LAYERS[name]))
    try:
        spec = parse_job_request(
            around({"class_name": name, "config": config}, target),
            settings=Settings(),
            manifest_of=MNIST_LIKE,
        )
    except InvalidRequest:
        return
    compile_model(build_model(spec), spec)


@FUZZ
@given(
    optimizer=values(allowlist.OPTIMIZER) | values(allowlist.OPTIMIZER, exact=False),
    loss=values(allowlist.LOSS) | values(allowlist.LOSS, exact=False),
    metrics=st.lists(values(allowlist.METRIC) | values(allowlist.METRIC, exact=False), max_size=3),
    callbacks=st.lists(CALLBACKS, max_size=2),
)
def test_compile_and_fit_objects_from_their_catalogs(optimizer, loss, metrics, callbacks) -> None:
    body = changed(BASE, "/compile/optimizer", optimizer)
    body = changed(body, "/compile/loss", loss)
    body = changed(body, "/compile/metrics", metrics)
    answer(changed(body, "/fit/callbacks", callbacks))


@settings(FUZZ, max_examples=100)
@given(
    optimizer=values(allowlist.OPTIMIZER) | values(allowlist.OPTIMIZER, exact=False),
    loss=values(allowlist.LOSS),
    metrics=st.lists(values(allowlist.METRIC), max_size=2),
    callbacks=st.lists(CALLBACKS, max_size=2),
)
def test_what_the_grammar_accepts_keras_compiles(optimizer, loss, metrics, callbacks) -> None:
    """Optimizers, schedules, losses, metrics and callbacks that parse are made without error."""
    from core.modeling import build_callbacks, build_model, compile_model

    body = changed(BASE, "/compile/optimizer", optimizer)
    body = changed(body, "/compile/loss", loss)
    body = changed(body, "/compile/metrics", metrics)
    try:
        spec = parse_job_request(
            changed(body, "/fit/callbacks", callbacks),
            settings=Settings(),
            manifest_of=MNIST_LIKE,
        )
    except InvalidRequest:
        return
    compile_model(build_model(spec), spec)
    build_callbacks(spec)


def request_places(value: Any, prefix: str = "") -> list[str]:
    """Every pointer into the base request."""
    if isinstance(value, dict):
        items = [(key, item) for key, item in value.items()]
    elif isinstance(value, list):
        items = [(str(index), item) for index, item in enumerate(value)]
    else:
        return []
    out = []
    for token, item in items:
        out.append(f"{prefix}/{token}")
        out += request_places(item, f"{prefix}/{token}")
    return out


@FUZZ
@given(data=st.data())
def test_each_key_and_value_of_a_valid_request_mutated(data: st.DataObject) -> None:
    """Drop a key, or swap a value for a near-miss of the same shape."""
    pointer = data.draw(st.sampled_from(request_places(BASE)))
    original = BASE
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
    answer(changed(BASE, pointer, data.draw(st.just(DELETE) | near)))


def test_the_checker_finds_a_pointer_outside_the_request() -> None:
    assert points_into(BASE, "/model/layers/0/config/units")
    assert points_into(BASE, "/model/layers/0/config/missing")
    assert points_into(BASE, "/model/layers/4")
    assert not points_into(BASE, "/model/input_shape/0/units")
    assert not points_into(BASE, "model/layers")
    assert not points_into(BASE, "/model/layers/9/config")
