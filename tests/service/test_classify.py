""":classify and :regress in TF Serving's shapes, unknown methods, and the labels in metadata."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from core.storage import DataDir
from tests.support.models import MULTI, copy_job, keep_labels, write_model_job

CLASSES = ["setosa", "versicolor", "virginica"]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = np.random.default_rng(11).normal(size=(4, 4)).astype("float32")


def build(units: int, activation: str | None) -> Any:
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((4,), name="input")
    return keras.Sequential(
        [inputs, keras.layers.Dense(units, activation=activation, name="output")], name="m"
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Jobs of each kind written once (saving converts to ONNX), with their Keras models."""
    data = DataDir(tmp_path_factory.mktemp("classify-models"))
    models = {
        "species": build(3, "softmax"),
        "binary": build(1, "sigmoid"),
        "linear": build(1, None),
        "old": build(3, "softmax"),
    }
    ids = {kind: write_model_job(data, model) for kind, model in models.items()}
    keep_labels(data, ids["species"], CLASSES, FEATURES)
    keep_labels(data, ids["binary"], None, None)
    keep_labels(data, ids["linear"], None, FEATURES)
    return {"data": data, "ids": ids, "keras": models}


@pytest.fixture
def models(built, settings) -> dict[str, Any]:
    """The jobs copied into this test's data folder; ids and Keras models by kind."""
    for job_id in built["ids"].values():
        copy_job(built["data"], DataDir(settings.data_dir), job_id)
    return built


def scores(models: dict, kind: str) -> np.ndarray:
    return np.asarray(models["keras"][kind](ROWS, training=False))


def test_classify_names_classes_best_first(client, models):
    response = client.post(
        f"/v1/models/{models['ids']['species']}:classify", json={"instances": ROWS.tolist()}
    )
    assert response.status_code == 200, response.get_json()
    assert response.headers["X-Model-Version"] == "1"
    result = response.get_json()["result"]
    want = scores(models, "species")
    for row, pairs in zip(want, result, strict=True):
        assert [name for name, _ in pairs] == [CLASSES[i] for i in np.argsort(-row)]
        assert np.allclose([score for _, score in pairs], np.sort(row)[::-1], atol=1e-6)


def test_classify_top_k_and_its_bad_values(client, models):
    path = f"/v1/models/{models['ids']['species']}/labels/final:classify"
    top = client.post(f"{path}?k=1", json={"inputs": ROWS.tolist()}).get_json()["result"]
    assert [len(pairs) for pairs in top] == [1] * len(ROWS)
    assert [pairs[0][0] for pairs in top] == [
        CLASSES[i] for i in scores(models, "species").argmax(1)
    ]
    for bad in ("0", "-1", "x", "\u0661"):
        response = client.post(f"{path}?k={bad}", json={"instances": ROWS.tolist()})
        assert response.status_code == 422, bad
        assert response.get_json()["errors"][0]["path"] == "/k"


def test_classify_takes_examples_by_csv_column(client, models):
    examples = [dict(zip(FEATURES[1:], row[1:], strict=True)) for row in ROWS.tolist()]
    context = {FEATURES[0]: 0.5}
    response = client.post(
        f"/v1/models/{models['ids']['species']}:classify",
        json={"examples": examples, "context": context},
    )
    assert response.status_code == 200, response.get_json()
    rows = np.concatenate([np.full((len(ROWS), 1), 0.5, "float32"), ROWS[:, 1:]], axis=1)
    want = np.asarray(models["keras"]["species"](rows, training=False))
    got = response.get_json()["result"]
    assert [pairs[0][0] for pairs in got] == [CLASSES[i] for i in want.argmax(1)]


def test_examples_by_input_name_and_their_refusals(client, models):
    path = f"/v1/models/{models['ids']['old']}:classify"
    named = client.post(path, json={"examples": [{"input": row} for row in ROWS.tolist()]})
    assert named.status_code == 200, named.get_json()
    assert len(named.get_json()["result"]) == len(ROWS)
    unknown = client.post(path, json={"examples": [{"petal": 1.0}]})
    assert unknown.status_code == 422
    assert unknown.get_json()["errors"][0]["path"] == "/examples/0/input"
    not_numbers = client.post(path, json={"examples": [{"input": ["a", "b", "c", "d"]}]})
    assert not_numbers.status_code == 422
    assert not_numbers.get_json()["errors"][0]["path"].startswith("/examples/0")


def test_a_job_from_before_labels_answers_ids(client, models):
    job = models["ids"]["old"]
    response = client.post(f"/v1/models/{job}:classify", json={"instances": ROWS.tolist()})
    assert response.status_code == 200
    assert {name for pairs in response.get_json()["result"] for name, _ in pairs} == {
        "0",
        "1",
        "2",
    }
    metadata = client.get(f"/v1/models/{job}/metadata").get_json()
    assert metadata["labels"] == {"classes": None, "features": None}


def test_one_sigmoid_unit_classifies_two_classes(client, models):
    response = client.post(
        f"/v1/models/{models['ids']['binary']}:classify", json={"instances": ROWS.tolist()}
    )
    assert response.status_code == 200
    p = scores(models, "binary")[:, 0]
    for probability, pairs in zip(p, response.get_json()["result"], strict=True):
        assert dict(pairs) == pytest.approx({"1": probability, "0": 1 - probability}, abs=1e-6)


def test_regress_answers_one_value_per_row(client, models):
    response = client.post(
        f"/v1/models/{models['ids']['linear']}:regress", json={"instances": ROWS.tolist()}
    )
    assert response.status_code == 200, response.get_json()
    assert np.allclose(response.get_json()["result"], scores(models, "linear")[:, 0], atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "method", "says"),
    [
        ("linear", "classify", ":regress"),
        ("species", "regress", ":classify"),
        (MULTI, "classify", ":predict"),
        (MULTI, "regress", ":predict"),
    ],
)
def test_a_model_that_does_not_fit_the_method_is_a_clear_problem(
    client, models, library, settings, kind, method, says
):
    if kind == MULTI:
        source, ids = library
        copy_job(source, DataDir(settings.data_dir), ids[MULTI])
        job = ids[MULTI]
        body: dict = {"instances": [{"image": [[0.0] * 3] * 2, "meta": [0.0, 0.0]}]}
    else:
        job, body = models["ids"][kind], {"instances": ROWS.tolist()}
    response = client.post(f"/v1/models/{job}:{method}", json=body)
    assert response.status_code == 422
    problem = response.get_json()
    assert response.mimetype == "application/problem+json"
    assert problem["code"] == ("not_classifier" if method == "classify" else "not_regressor")
    assert says in problem["detail"]
    assert problem["error"] == problem["detail"]


@pytest.mark.parametrize("suffix", [":explain", "/versions/1:transform", "/labels/final:score", ""])
def test_an_unknown_method_is_a_404_that_lists_the_methods(client, models, suffix):
    response = client.post(f"/v1/models/{models['ids']['species']}{suffix}", json={})
    assert response.status_code == 404
    problem = response.get_json()
    assert problem["code"] == "unknown_method"
    assert ":predict, :classify, :regress" in problem["detail"]


def test_metadata_lists_classes_and_features(client, models):
    job = models["ids"]["species"]
    tfs = client.get(f"/v1/models/{job}/metadata").get_json()
    assert tfs["labels"] == {"classes": CLASSES, "features": FEATURES}
    oip = client.get(f"/v2/models/{job}").get_json()
    assert oip["parameters"] == {"classes": CLASSES, "features": FEATURES}


def test_a_sequential_model_serves_from_onnx_and_exports(client, models, settings):
    from core.serving.export import onnx_path

    job = models["ids"]["species"]
    assert onnx_path(DataDir(settings.data_dir).job(job) / "model.keras").is_file()
    exported = client.get(f"/v1/models/{job}/download?format=savedmodel")
    assert exported.status_code == 200
    assert exported.mimetype == "application/gzip"
