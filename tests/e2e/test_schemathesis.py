"""Schemathesis against the real stack, driven by the server's own /openapi.json.

A stack of its own (gunicorn with two workers, a Celery worker, Redis) with FITSERVE_MAX_EPOCHS=1
and a quota of two live jobs, so the jobs that valid examples create train one epoch each. The
document's examples point at placeholder ids; the test points them at a real dataset and a
trained model, so they pass validation into jobs and reach real predictions. Each operation
runs its examples, then MAX_EXAMPLES generated cases (a few minutes in all on two cores).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.openapi import SEED_MODEL_REQUEST, build_document
from tests.support.seed_model import make_blobs
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 100
NEGATIVE_EXAMPLES = 40
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# A tus PATCH body is raw bytes, serialized as application/octet-stream is.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose jobs may train one epoch at most, two at a time."""
    settings = {"FITSERVE_MAX_EPOCHS": "1", "FITSERVE_MAX_ACTIVE_JOBS_PER_KEY": "2"}
    with running_stack(tmp_path_factory.mktemp("schemathesis"), "schemathesis", settings) as stack:
        yield stack


@pytest.fixture(scope="module")
def api_schema(small_stack: Stack):
    """The served document, its examples pointed at a real dataset and a trained model.

    Deletions keep generated ids, so the examples' dataset and model outlive the run.
    """
    x, y = make_blobs(256)
    dataset = small_stack.upload(x=x, y=y)
    example = copy.deepcopy(SEED_MODEL_REQUEST)
    example["data"]["dataset"] = dataset
    model = small_stack.submit({**example, "name": "served"})["id"]
    assert small_stack.wait_finished(model)["status"] == "succeeded"
    document = requests.get(small_stack.url("/openapi.json"), timeout=30).json()
    for path in ("/v1/jobs", "/v1/jobs:validate"):
        content = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        content["examples"]["seed_model"]["value"] = example
    real = {"dataset_id": dataset, "job_id": model, "model": model}
    for item in document["paths"].values():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []) if method != "delete" else []:
                if parameter["in"] == "path" and parameter["name"] in real:
                    parameter["example"] = real[parameter["name"]]
    row = x[:1].tolist()
    schemas = document["components"]["schemas"]
    schemas["PredictRequest"]["example"] = {"instances": row}
    schemas["BatchPredictionRequest"]["example"] |= {"model": model, "dataset": dataset}
    schemas["InferRequest"]["example"]["inputs"][0] |= {"shape": [1, 784], "data": row[0]}
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=small_stack.api)
    return schema


# Collected from the same function that serves /openapi.json (test_openapi checks they agree).
OPERATIONS = [
    pytest.param(
        path,
        method.upper(),
        bool(operation.get("parameters") or operation.get("requestBody")),
        id=f"{method.upper()} {path}",
    )
    for path, item in build_document()["paths"].items()
    for method, operation in item.items()
]


@pytest.mark.parametrize(("path", "method", "takes_input"), OPERATIONS)
def test_api_conforms_to_its_document(api_schema, path: str, method: str, takes_input: bool):
    """The document's examples, then generated cases: no 5xx, every answer as documented."""
    operation = api_schema[path][method]
    for strategy in operation.get_strategies_from_examples():
        check_cases(strategy, MAX_EXAMPLES)
    check_cases(operation.as_strategy(), MAX_EXAMPLES)
    if takes_input:
        # Requests that break the document: refused with a problem, never a 5xx.
        check_cases(operation.as_strategy(GenerationMode.NEGATIVE), NEGATIVE_EXAMPLES)


def check_cases(strategy, examples: int) -> None:
    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=60)

    run()


def test_the_seed_example_became_a_job_that_trained(small_stack: Stack) -> None:
    """Runs after the generated cases (same module): the example's jobs exist and finish."""
    jobs = requests.get(small_stack.url("/v1/jobs?limit=500"), timeout=30).json()["items"]
    seeded = [job for job in jobs if job["name"] == SEED_MODEL_REQUEST["name"]]
    assert seeded, f"no job from the document's example among {[j['name'] for j in jobs]}"
    finished = small_stack.wait_finished(seeded[-1]["id"])
    assert finished["status"] == "succeeded", finished
    assert finished["progress"]["epoch"] == 1
