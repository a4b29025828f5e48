"""Clone, tags and queue places through the client and the CLI over real HTTP (no worker)."""

from __future__ import annotations

import json

import pytest

from client import Client, FitserveError
from tests.client.conftest import fitserve
from tests.client.test_jobs import small_request


@pytest.fixture
def api(server_url) -> Client:
    return Client(server_url)


def test_clone_with_a_patch_and_setters(api):
    job = api.submit({**small_request(api), "tags": {"project": "mnist"}})
    clone = api.clone(
        job["id"], patch={"fit": {"epochs": 3}}, set={"/model/layers/0/config/units": 6}
    )
    assert clone["cloned_from"] == job["id"]
    assert clone["tags"] == {"project": "mnist"}
    with pytest.raises(FitserveError) as caught:
        api.clone(job["id"], set={"/model/layers/5/config/units": 6})
    assert caught.value.status == 422
    assert caught.value.errors[0]["path"] == "/set/~1model~1layers~15~1config~1units"


def test_list_jobs_by_tag(api):
    spec = small_request(api)
    mnist = api.submit({**spec, "tags": {"project": "mnist", "team": "a"}})
    api.submit({**spec, "tags": {"project": "cifar"}})
    assert [j["id"] for j in api.list_jobs(tags={"project": "mnist"})] == [mnist["id"]]
    assert api.list_jobs(tags={"project": "mnist", "team": "b"}) == []


def test_cli_clone_sets_dotted_paths_and_pointers(api, server_url):
    job = api.submit(small_request(api))
    result = fitserve(
        "jobs", "clone", job["id"], "--url", server_url,
        "--set", "fit.epochs=4", "--set", "tags.project=mnist",
        "--set", "model.layers.0.config.units=5", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    clone = json.loads(result.stdout)
    assert clone["cloned_from"] == job["id"]
    assert clone["tags"] == {"project": "mnist"}
    listed = fitserve("jobs", "list", "--url", server_url, "--tag", "project=mnist")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "EPOCH", "QUEUE", "TAGS", "CREATED"]
    assert [line.split()[0] for line in lines[1:]] == [clone["id"]]
    assert "project=mnist" in lines[1]
    shown = fitserve("jobs", "show", clone["id"], "--url", server_url)
    assert shown.returncode == 0, shown.stderr
    assert f"cloned from  {job['id']}" in shown.stdout
    assert "queue        2 (1 ahead)" in shown.stdout


def test_cli_clone_refusals_name_the_setter(api, server_url):
    job = api.submit(small_request(api))
    result = fitserve("jobs", "clone", job["id"], "--url", server_url, "--set", "fit.epochs=-1")
    assert result.returncode == 1
    assert "/fit/epochs" in result.stdout + result.stderr
    assert fitserve("jobs", "clone", job["id"], "--url", server_url, "--set", "x").returncode == 2
