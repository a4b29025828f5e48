"""Whatever JSON arrives, the grammar answers with the spec or InvalidRequest, never a crash.

Hypothesis puts random JSON at every place of valid requests (both model forms) and checks that
each error it gets is a well-formed field error pointing into the request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import InvalidRequest
from core.grammar import parse_job_request
from core.settings import Settings
from tests.core.grammar.test_grammar import DESIGN_EXAMPLE
from tests.core.grammar.test_model_forms import DATASET, MNIST_LIKE
from tests.service.test_refusals import DELETE, changed
from tests.support.seed_model import build_seed_model

SHORT = {**DESIGN_EXAMPLE, "data": {"dataset": DATASET, "x": "x", "y": "y"}}
KERAS_FORM = {**SHORT, "model": json.loads(build_seed_model().to_json())}
del KERAS_FORM["compile"]

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


PLACES = [(SHORT, p) for p in pointers(SHORT)] + [(KERAS_FORM, p) for p in pointers(KERAS_FORM)]


def answer(body: Any) -> None:
    """Parse; an InvalidRequest must carry errors that render as JSON with pointers."""
    spec, errors = None, []
    try:
        spec = parse_job_request(body, settings=Settings(), manifest_of=MNIST_LIKE)
    except InvalidRequest as error:
        errors = error.errors
        assert errors
    orjson.dumps(spec)
    for field in errors:
        assert field.path.startswith("/")
        assert field.message
        orjson.dumps(field.to_dict())


def test_both_bases_are_valid() -> None:
    # The fuzz tests change one place of these; a base refused as a whole would test nothing.
    for base in (SHORT, KERAS_FORM):
        parse_job_request(base, settings=Settings(), manifest_of=MNIST_LIKE)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(place=st.sampled_from(PLACES), value=JSON | st.just(DELETE))
def test_random_json_anywhere_never_crashes(place: tuple[dict, str], value: Any) -> None:
    base, pointer = place
    answer(changed(base, pointer, value))


@settings(max_examples=100, deadline=None)
@given(body=JSON)
def test_random_bodies_never_crash(body: Any) -> None:
    answer(body)


def test_deep_nesting_is_refused_not_recursed() -> None:
    deep: Any = "relu"
    for _ in range(500):
        deep = {"class_name": "Dense", "config": {"activation": deep}}
    answer(changed(SHORT, "/model/layers/0/config/activation", deep))
