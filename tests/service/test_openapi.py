"""/openapi.json covers every route, closes what the API closes, and its examples are valid."""

from __future__ import annotations

import re

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from core.grammar import grammar_schema
from service.openapi import SEED_MODEL_REQUEST
from tests.support.datasets import upload_npz

# Routes that are pages for people, not the API.
PAGES = re.compile(r"^/($|docs|static/|sign-|jobs/|datasets$|compare$|sweeps)")


@pytest.fixture
def document(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json


def validator(document: dict, name: str) -> Draft202012Validator:
    """A validator of one component schema, resolving the document's own references."""
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:fitserve", resource)
    schema = {"$ref": f"urn:fitserve#/components/schemas/{name}"}
    return Draft202012Validator(schema, registry=registry)


def flask_paths(app) -> set[str]:
    return {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for rule in app.url_map.iter_rules()
        if not PAGES.match(rule.rule)
    }


def test_every_api_route_is_documented_and_nothing_else(app, document: dict):
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == flask_paths(app)
    for path, item in document["paths"].items():
        methods = {
            method.lower()
            for rule in app.url_map.iter_rules()
            if re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule) == path
            for method in rule.methods - {"HEAD", "OPTIONS"}
        }
        # Flask answers HEAD and OPTIONS on every route; those the tus routes define themselves
        # are documented.
        assert set(item) - {"head", "options"} == methods, path
    assert {"head", "patch", "delete"} <= set(document["paths"]["/v1/uploads/{upload_id}"])
    assert {"options", "post"} <= set(document["paths"]["/v1/uploads"])


def test_every_operation_declares_its_problem_documents(document: dict):
    problem = document["components"]["responses"]["Problem"]
    assert "application/problem+json" in problem["content"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["responses"]["default"] == {
                "$ref": "#/components/responses/Problem"
            }, (method, path)


def test_the_job_request_is_the_grammar_and_closed(document: dict):
    schemas = document["components"]["schemas"]
    grammar = grammar_schema()
    assert schemas["JobRequest"]["additionalProperties"] is False
    assert set(schemas["JobRequest"]["properties"]) == set(grammar["properties"])
    assert schemas["Layer"]["anyOf"][0]["properties"]["class_name"] == {"const": "InputLayer"}
    assert "$defs" not in str(schemas["JobRequest"])
    assert schemas["PredictRequest"]["additionalProperties"] is False


def test_the_examples_are_valid_against_their_schemas(document: dict):
    example = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert example["examples"]["seed_model"]["value"] == SEED_MODEL_REQUEST
    validator(document, "JobRequest").validate(SEED_MODEL_REQUEST)
    for name in ("PredictRequest", "InferRequest", "JsonDataset"):
        validator(document, name).validate(document["components"]["schemas"][name]["example"])
    with pytest.raises(Exception, match="Additional properties"):
        validator(document, "JobRequest").validate({**SEED_MODEL_REQUEST, "epochs": 3})


def test_the_example_passes_validation_against_a_real_dataset(client):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 784)).astype("float32")
    request = {**SEED_MODEL_REQUEST, "data": {**SEED_MODEL_REQUEST["data"]}}
    request["data"]["dataset"] = upload_npz(client, {"x": x, "y": np.arange(64) % 10})
    response = client.post("/v1/jobs:validate", json=request)
    assert response.status_code == 200, response.json


def test_the_docs_page_is_served_from_the_package(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.data.decode())
    assert sources
    for source in sources:
        assert source.startswith("/docs/"), source
        assert client.get(source).status_code == 200, source
    script = client.get("/docs/init.js").data.decode()
    assert '"/openapi.json"' in script
    assert "http" not in script
