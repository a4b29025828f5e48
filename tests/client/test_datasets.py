"""Datasets through the client and the CLI, against the API over real HTTP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client import Client, FitserveError
from client.cli import main
from tests.client.conftest import fitserve


@pytest.fixture
def api(server_url) -> Client:
    return Client(server_url)


def test_arrays_upload_list_show_and_delete(api):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    y = np.arange(10, dtype=np.int64) % 3
    manifest = api.upload_arrays({"x": x, "y": y})
    assert manifest["rows"] == 10
    assert manifest["source"]["format"] == "npz"
    assert manifest["arrays"]["x"]["shape"] == [10, 4]
    assert manifest["arrays"]["y"]["stats"]["labels"] == [0, 1, 2]

    assert [d["id"] for d in api.list_datasets()] == [manifest["id"]]
    assert api.get_dataset(manifest["id"]) == manifest

    api.delete_dataset(manifest["id"])
    with pytest.raises(FitserveError) as caught:
        api.get_dataset(manifest["id"])
    assert caught.value.status == 404
    assert api.list_datasets() == []


def test_listing_follows_cursors_up_to_the_limit(api):
    made = [api.upload_arrays({"x": np.full((2, 2), i, np.float32)})["id"] for i in range(3)]
    assert sorted(d["id"] for d in api.list_datasets()) == sorted(made)
    assert len(api.list_datasets(limit=2)) == 2


def test_files_upload_with_their_form_fields(api, tmp_path):
    npy = tmp_path / "features.npy"
    np.save(npy, np.ones((5, 3), np.float32))
    assert list(api.upload_file(npy, name="feats")["arrays"]) == ["feats"]

    csv = tmp_path / "pets.csv"
    csv.write_text("a,b,kind\n1,2,cat\n3,4,dog\n5,6,cat\n")
    manifest = api.upload_file(csv, label="kind")
    assert manifest["arrays"]["x"]["shape"] == [3, 2]
    assert manifest["classes"] == {"y": ["cat", "dog"]}


def test_object_arrays_are_refused_before_sending(api):
    with pytest.raises(ValueError, match="pickle"):
        api.upload_arrays({"x": np.array([{"a": 1}, None], dtype=object)})


def test_a_bad_file_is_a_422_problem(api, tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a numpy file at all")
    with pytest.raises(FitserveError) as caught:
        api.upload_file(junk)
    assert caught.value.status == 422
    assert caught.value.code == "invalid_data"
    assert caught.value.detail
    assert all(error["path"].startswith("/") for error in caught.value.errors)


def test_cli_upload_list_show_rm(server_url, tmp_path):
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((6, 2), np.float32), y=np.ones(6, np.float32))
    uploaded = fitserve("datasets", "upload", str(data), "--url", server_url, "--json")
    assert uploaded.returncode == 0, uploaded.stderr
    dataset_id = json.loads(uploaded.stdout)["id"]

    listed = fitserve("datasets", "list", "--url", server_url)
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split()[:3] == ["ID", "CREATED", "ROWS"]
    assert row.startswith(dataset_id)
    assert "x(6, 2):float32" in row

    shown = fitserve("datasets", "show", dataset_id, "--url", server_url, "--json")
    assert json.loads(shown.stdout)["rows"] == 6

    removed = fitserve("datasets", "rm", dataset_id, "--url", server_url, "--json")
    assert json.loads(removed.stdout) == {"id": dataset_id, "deleted": True}
    missing = fitserve("datasets", "show", dataset_id, "--url", server_url)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: 404 not_found: ")


def test_a_dataset_downloads_as_npz_npy_and_csv(api, tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    dataset = api.upload_arrays({"x": x, "y": np.arange(4)})["id"]

    arrays = api.dataset_arrays(dataset)
    single = api.download_dataset(dataset, tmp_path / "x.npy", format="npy", array="x")
    table = api.download_dataset(dataset, tmp_path / "d.csv", format="csv")

    np.testing.assert_array_equal(arrays["x"], x)
    np.testing.assert_array_equal(np.load(single, allow_pickle=False), x)
    assert table.read_text().splitlines()[:2] == ["x_0,x_1,x_2,y", "0.0,1.0,2.0,0"]


def test_cli_datasets_download_and_a_refused_batch_predict(server_url, tmp_path, capsys):
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((6, 2), np.float32))
    dataset_id = Client(server_url).upload_file(data)["id"]
    target = tmp_path / "out.csv"

    downloaded = main(
        ["datasets", "download", dataset_id, str(target), "--format", "csv", "--url", server_url]
    )
    refused = main(["batch-predict", "--dataset", dataset_id, "--model", "no", "--url", server_url])

    assert downloaded == 0
    assert target.read_text().splitlines()[0] == "x_0,x_1"
    assert refused == 1
    assert "error: 422 invalid_request" in capsys.readouterr().err
