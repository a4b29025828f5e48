"""What the API reads around a body: query parameters, headers, path segments, cursors, JSON
depth, the size of error documents, and Redis going away. Every bad value is a located 4xx
problem document; nothing is a 5xx.
"""

from __future__ import annotations

import base64
import contextlib
import time
from typing import Any
from urllib.parse import quote

import hypothesis
import numpy as np
import pytest
import redis
from hypothesis import strategies as st

from core.errors import PREVIEW_CHARS, preview
from core.jobs import JobStore
from core.storage import DataDir
from service import create_app
from service.http import MAX_JSON_DEPTH
from tests.service.test_validate import request_for
from tests.support.datasets import upload_npz
from tests.support.processes import redis_server

SPEC = {"name": "boundary", "data": {"dataset": None}, "resources": {"gpus": 1}}
MODEL = "0123456789abcdef0123456789abcdef"
# Text `int()` and `str.isdigit()` take, or that comes close: superscripts, Arabic-Indic and
# full-width digits, signs, exponents, spaces, and numbers longer than `int()` accepts.
BAD_INTEGERS = [
    "\N{SUPERSCRIPT TWO}",
    "\N{ARABIC-INDIC DIGIT THREE}",
    "\N{FULLWIDTH DIGIT ONE}\N{FULLWIDTH DIGIT TWO}",
    "-1",
    "+5",
    "1e3",
    " 5",
    "0x10",
    "",
    "1" + "0" * 5000,
    "5\n",
]


def problem(response: Any, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/problem+json"
    return response.get_json()


def located(response: Any, status: int, path: str) -> dict:
    """The one error of a problem document, which sits at `path`."""
    document = problem(response, status)
    [error] = document["errors"]
    assert error["path"] == path
    return error


@pytest.fixture
def job_id(store: JobStore) -> str:
    """A finished (cancelled) job: its event stream ends at once."""
    job_id = store.create(SPEC, owner=None)["id"]
    store.request_cancel(job_id)
    return job_id


@pytest.mark.parametrize("value", BAD_INTEGERS)
@pytest.mark.parametrize(
    ("route", "name"),
    [
        ("/v1/jobs", "limit"),
        ("/v1/datasets", "limit"),
        ("/v1/models", "limit"),
        ("/v1/jobs/{job}/logs", "tail"),
        (f"/v1/models/{MODEL}/download", "version"),
    ],
)
def test_a_bad_integer_query_parameter_is_a_located_422(client, job_id, route, name, value):
    url = f"{route.format(job=job_id)}?{name}={quote(value)}"
    error = located(client.get(url), 422, f"/{name}")
    assert "ASCII digits" in error["expected"]
    assert error["received"] == preview(value)


# An empty or blank segment is another route, or none.
@pytest.mark.parametrize("value", [value for value in BAD_INTEGERS if value.strip()])
@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("get", "/v1/models/{model}/versions/{version}"),
        ("get", "/v1/models/{model}/versions/{version}/metadata"),
        ("get", "/v1/models/{model}/versions/{version}/download"),
        ("post", "/v1/models/{model}/versions/{version}:predict"),
        ("get", "/v2/models/{model}/versions/{version}"),
        ("post", "/v2/models/{model}/versions/{version}/infer"),
    ],
)
def test_a_bad_version_segment_is_a_located_422(client, method, route, value):
    url = route.format(model=MODEL, version=quote(value, safe=""))
    response = getattr(client, method)(url, json={"instances": [[1.0]]})
    assert located(response, 422, "/path/version")["received"] == preview(value)


@pytest.mark.parametrize(
    "value",
    [
        "\N{SUPERSCRIPT TWO}-0",
        "1-\N{ARABIC-INDIC DIGIT THREE}",
        "18446744073709551616-0",
        "1-" + "9" * 5000,
    ],
)
def test_a_last_event_id_past_what_redis_takes_is_a_422(client, job_id, value):
    response = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": value})
    located(response, 422, "/headers/Last-Event-ID")


@pytest.mark.parametrize(
    "value", ["\N{SUPERSCRIPT TWO}", "\N{ARABIC-INDIC DIGIT ONE}0", "9" * 5000, "-1"]
)
def test_a_bad_binary_header_length_is_a_400(client, value):
    response = client.post(
        f"/v2/models/{MODEL}/infer",
        data=b'{"inputs": []}',
        headers={"Inference-Header-Content-Length": value, "Content-Type": "application/json"},
    )
    assert problem(response, 400)["code"] == "malformed_request"


@pytest.fixture
def dataset(client) -> str:
    rng = np.random.default_rng(3)
    return upload_npz(client, {"x": rng.random((12, 8), dtype=np.float32), "y": np.arange(12) % 3})


@pytest.mark.parametrize("key", [*BAD_INTEGERS[:6], "1" * 5000])
def test_a_class_weight_key_that_is_not_ascii_digits_is_a_422(client, dataset, key):
    body = request_for(dataset)
    body["fit"]["class_weight"] = {key: 1.0}
    response = client.post("/v1/jobs:validate", json=body)
    error = located(response, 422, f"/fit/class_weight/{key}")
    assert "digits" in error["expected"]


def nested(depth: int) -> str:
    """A JSON value whose arrays nest `depth` levels deep."""
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 300, 1000, 5000])
@pytest.mark.parametrize(
    ("route", "headers"),
    [
        ("/v1/jobs", {"Idempotency-Key": "deep"}),
        ("/v1/jobs:validate", {}),
        ("/v1/datasets", {"Idempotency-Key": "deep"}),
        (f"/v1/models/{MODEL}:predict", {}),
        (f"/v2/models/{MODEL}/infer", {}),
    ],
)
def test_a_body_nested_past_the_cap_is_a_400(client, route, headers, depth):
    body = '{"model": ' + nested(depth) + "}"
    response = client.post(route, data=body, content_type="application/json", headers=headers)
    document = problem(response, 400)
    assert document["code"] == "malformed_request"
    assert f"more than {MAX_JSON_DEPTH} levels" in document["detail"]


def test_a_body_at_the_cap_is_parsed_and_its_deep_value_shown_bounded(client, dataset):
    body = request_for(dataset)
    deep: Any = "x" * 5000
    for _ in range(MAX_JSON_DEPTH - 5):
        deep = [deep]
    body["model"]["layers"][0]["config"]["units"] = deep
    response = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "at-the-cap"})
    error = located(response, 422, "/model/layers/0/config/units")
    assert error["received"].startswith("[[[[")
    assert error["received"].endswith("...")
    assert len(error["received"]) <= PREVIEW_CHARS
    assert len(error["message"]) < 400


def test_twenty_thousand_errors_make_a_small_document(client, dataset):
    body = request_for(dataset)
    body["compile"]["metrics"] = [f"no_such_metric_{i}" for i in range(20_000)]
    started = time.monotonic()
    response = client.post("/v1/jobs:validate", json=body)
    elapsed = time.monotonic() - started
    document = problem(response, 422)
    assert len(document["errors"]) == 50
    assert len(document["errors"]) + document["errors_omitted"] > 20_000
    assert len(response.get_data()) < 200_000
    assert elapsed < 3


BAD_CURSORS = [
    "nope",
    "²",
    "x" * 10_000,
    base64.urlsafe_b64encode(b'["a"]').decode(),
    base64.urlsafe_b64encode(b"[1.5, 2]").decode(),
    base64.urlsafe_b64encode(b'{"a": 1}').decode(),
    base64.urlsafe_b64encode(b"[" * 300 + b"]" * 300).decode(),
    "2026-01-01T00:00:00Z_" + "0" * 32,
    "1.5:" + "0" * 32,
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/datasets", "/v1/models"])
def test_a_bad_cursor_is_a_422_at_cursor_for_every_list(client, job_id, route, cursor):
    error = located(client.get(f"{route}?cursor={quote(cursor)}"), 422, "/cursor")
    assert error["expected"] == "a next_cursor"


@pytest.fixture
def doomed_redis(tmp_path):
    """A redis-server of this test's own, and the way to stop it (teardown stops it otherwise)."""
    with contextlib.ExitStack() as stack:
        yield stack.enter_context(redis_server(tmp_path / "redis")), stack.close


def test_routes_answer_503_while_redis_is_down(settings, doomed_redis):
    url, stop = doomed_redis
    down = settings.with_overrides(redis_url=url)
    app = create_app(down)
    data = DataDir(down.data_dir)
    job = JobStore(redis.Redis.from_url(url), data, down).create(SPEC, owner=None)
    client = app.test_client()
    assert client.get("/v1/jobs").status_code == 200
    stop()
    for method, route in (
        ("get", f"/v1/jobs/{job['id']}/events"),
        ("get", "/v1/jobs"),
        ("post", f"/v1/jobs/{job['id']}:cancel"),
    ):
        document = problem(getattr(client, method)(route), 503)
        assert document["code"] == "unavailable"
        assert "Redis" in document["detail"]


LISTS = ("limit", "cursor")
# Each route with the query parameters it reads; `{segment}` is drawn too.
ROUTES = [
    ("/v1/jobs", (*LISTS, "status")),
    ("/v1/datasets", LISTS),
    ("/v1/models", LISTS),
    ("/v1/jobs/{job}", ()),
    ("/v1/jobs/{job}/logs", ("tail",)),
    ("/v1/jobs/{job}/metrics", ()),
    ("/v1/jobs/{job}/events", ("last_event_id",)),
    ("/v1/datasets/{segment}", ()),
    ("/v1/jobs/{segment}", ()),
    ("/v1/jobs/{segment}/logs", ("tail",)),
    ("/v1/models/{segment}", ()),
    ("/v1/models/{segment}/metadata", ()),
    ("/v1/models/{model}/versions/{segment}", ()),
    ("/v1/models/{model}/versions/{segment}/metadata", ()),
    ("/v1/models/{model}/labels/{segment}", ()),
    ("/v1/models/{model}/download", ("format", "version")),
    ("/v1/models/{model}/versions/{segment}/download", ("format", "version")),
    ("/v2/models/{segment}", ()),
    ("/v2/models/{model}/versions/{segment}", ()),
    ("/v2/models/{model}/versions/{segment}/ready", ()),
]
HEADER_NAMES = ["Idempotency-Key", "Last-Event-ID", "X-Request-ID"]
# Superscripts, a circled digit, Arabic-Indic, Devanagari, full-width and mathematical digits:
# `str.isdigit()` takes them all, `int()` only some.
ODD_DIGITS = [chr(c) for c in (0xB2, 0xB9, 0x2460, 0x663, 0x6F3, 0x967, 0xFF11, 0x1D7D9)]
DIGITS = st.one_of(
    st.sampled_from("0123456789"),
    st.sampled_from(ODD_DIGITS),
    # Decimal digits of every script (Nd) and other numerals (No).
    st.characters(categories=["Nd", "No"]),
)
# Numbers as text in every shape a careless or hostile client sends.
NUMBERISH = st.one_of(
    st.sampled_from(ODD_DIGITS),
    st.text(DIGITS, min_size=1, max_size=12),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.floats(allow_nan=True).map(str),
    st.text(max_size=40),
)
HEADER_VALUE = st.one_of(NUMBERISH, st.text(st.characters(min_codepoint=32, max_codepoint=126)))


def latin1(value: str) -> str:
    """A header value as it can travel: one line of Latin-1 (superscript digits among them);
    other characters as their UTF-8 bytes."""
    line = value.replace("\r", " ").replace("\n", " ")
    try:
        return line.encode("latin-1").decode("latin-1")
    except UnicodeEncodeError:
        return line.encode("utf-8", "replace").decode("latin-1")


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, str], dict[str, str]]:
    """A route with a drawn path segment, some of its query parameters and some headers."""
    route, names = draw(st.sampled_from(ROUTES))
    segment = draw(NUMBERISH.filter(lambda text: text.strip() not in ("", ".", "..")))
    query = draw(st.dictionaries(st.sampled_from(names), NUMBERISH)) if names else {}
    headers = draw(st.dictionaries(st.sampled_from(HEADER_NAMES), HEADER_VALUE, max_size=2))
    return route.replace("{segment}", quote(segment, safe="")), query, headers


@hypothesis.settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(drawn=requests())
def test_no_query_header_or_segment_makes_a_5xx(client, job_id, drawn):
    route, query, headers = drawn
    query_string = "&".join(f"{name}={quote(value)}" for name, value in query.items())
    response = client.get(
        f"{route.format(job=job_id, model=MODEL)}?{query_string}",
        headers={name: latin1(value) for name, value in headers.items()},
    )
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        assert response.mimetype == "application/problem+json"
        document = response.get_json()
        assert document["status"] == response.status_code
        for error in document.get("errors", []):
            assert error["path"].startswith("/")


POSTS = [
    ("/v1/jobs", {"name": "x"}),
    ("/v1/jobs:validate", {"name": "x"}),
    ("/v1/datasets", {"arrays": {"x": [1, 2]}}),
    ("/v1/models/{model}/versions/{segment}:predict", {"instances": [[1.0]]}),
    ("/v2/models/{model}/versions/{segment}/infer", {"inputs": []}),
]


@hypothesis.settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(
    post=st.sampled_from(POSTS),
    segment=NUMBERISH.filter(lambda text: text.strip() not in ("", ".", "..")),
    headers=st.fixed_dictionaries(
        {
            "Idempotency-Key": HEADER_VALUE,
            "Inference-Header-Content-Length": NUMBERISH,
            "X-Request-ID": HEADER_VALUE,
        }
    ),
)
def test_no_header_of_a_post_makes_a_5xx(client, post, segment, headers):
    route, body = post
    url = route.format(model=MODEL, segment=quote(segment, safe=""))
    response = client.post(
        url, json=body, headers={name: latin1(value) for name, value in headers.items()}
    )
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        assert response.mimetype == "application/problem+json"
