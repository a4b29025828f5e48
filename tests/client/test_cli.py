"""The `fitserve` command run as a subprocess against a real server: output and exit codes."""

from __future__ import annotations

import hashlib
import json

from tests.client.conftest import fitserve
from tests.support.processes import free_port


def test_keys_create_prints_a_key_and_its_entry():
    result = fitserve("keys", "create", "ops", "--admin", "--json")
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    assert made["key"].startswith("fs_")
    assert made["entry"] == f"ops:{hashlib.sha256(made['key'].encode()).hexdigest()}:admin"

    human = fitserve("keys", "create", "dev")
    assert human.returncode == 0
    assert human.stdout.splitlines()[1].startswith("entry: dev:")


def test_refused_request_prints_the_problem_and_exits_1(keyed_server_url):
    result = fitserve("jobs", "list", "--url", keyed_server_url, "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["code"] == "unauthorized"
    assert result.stderr.startswith("error: 401 unauthorized: This route needs an API key")
    assert "request id: " in result.stderr


def test_url_and_key_come_from_the_environment(keyed_server_url):
    env = {"FITSERVE_URL": keyed_server_url, "FITSERVE_API_KEY": "fs_wrong"}
    result = fitserve("datasets", "list", env=env)
    assert result.returncode == 1
    assert "401 unauthorized: The API key is not valid" in result.stderr


def test_unreachable_server_exits_3():
    result = fitserve("jobs", "show", "0" * 32, "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 3
    assert result.stderr.startswith("error: cannot reach fitserve at http://127.0.0.1:")


def test_local_mistakes_exit_2_before_any_request(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    bad_spec = tmp_path / "spec.json"
    bad_spec.write_text("{not json")
    result = fitserve("jobs", "submit", str(bad_spec), "--url", url)
    assert result.returncode == 2
    assert "spec.json is not valid JSON" in result.stderr

    missing = fitserve("datasets", "upload", str(tmp_path / "none.npz"), "--url", url)
    assert missing.returncode == 2
    assert "No such file" in missing.stderr

    wrong_kind = tmp_path / "inputs.txt"
    wrong_kind.write_text("1 2 3")
    result = fitserve("predict", "m", str(wrong_kind), "--url", url)
    assert result.returncode == 2
    assert "must be a .npy, .npz or .json file" in result.stderr

    assert fitserve("jobs", "frobnicate").returncode == 2
