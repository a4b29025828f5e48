"""`/v1/batch-predictions` and `/v1/datasets/<id>/download` through the Flask test client."""

from __future__ import annotations

import csv
import io

import numpy as np

from core.storage import new_id


def upload(client, **arrays: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    response = client.post("/v1/datasets", data={"file": (io.BytesIO(buffer.getvalue()), "d.npz")})
    assert response.status_code == 201, response.json
    return response.json["id"]


ARRAYS = {
    "x": np.arange(12, dtype="float32").reshape(4, 3) / 3,
    "y": np.array([0, 1, 2, 1], dtype="int64"),
}


def test_a_dataset_downloads_as_npz_with_every_array(client):
    dataset = upload(client, **ARRAYS)

    response = client.get(f"/v1/datasets/{dataset}/download?format=npz")

    assert response.status_code == 200
    assert response.mimetype == "application/zip"
    with np.load(io.BytesIO(response.data), allow_pickle=False) as loaded:
        assert sorted(loaded.files) == ["x", "y"]
        for name, array in ARRAYS.items():
            np.testing.assert_array_equal(loaded[name], array)
            assert loaded[name].dtype == array.dtype


def test_one_array_downloads_as_npy(client):
    dataset = upload(client, **ARRAYS)

    response = client.get(f"/v1/datasets/{dataset}/download?format=npy&array=y")

    assert response.status_code == 200
    np.testing.assert_array_equal(
        np.load(io.BytesIO(response.data), allow_pickle=False), ARRAYS["y"]
    )


def test_a_dataset_downloads_as_csv_with_a_header_and_exact_numbers(client):
    dataset = upload(client, **ARRAYS)

    response = client.get(f"/v1/datasets/{dataset}/download?format=csv")

    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(response.data.decode())))
    assert rows[0] == ["x_0", "x_1", "x_2", "y"]
    values = np.array(rows[1:], dtype="float64")
    np.testing.assert_array_equal(values[:, :3].astype("float32"), ARRAYS["x"])
    np.testing.assert_array_equal(values[:, 3], ARRAYS["y"])


def test_a_bad_download_is_a_problem_with_a_pointer(client):
    dataset = upload(client, **ARRAYS)

    bad_format = client.get(f"/v1/datasets/{dataset}/download?format=xls")
    no_array = client.get(f"/v1/datasets/{dataset}/download?format=npy")
    unknown = client.get(f"/v1/datasets/{new_id()}/download")

    assert bad_format.status_code == 422
    assert bad_format.json["errors"][0]["path"] == "/format"
    assert no_array.status_code == 422
    assert no_array.json["errors"][0]["path"] == "/array"
    assert unknown.status_code == 404


def test_a_batch_prediction_that_cannot_run_is_refused_at_submit(client):
    dataset = upload(client, **ARRAYS)

    response = client.post(
        "/v1/batch-predictions",
        json={"model": "no-such-model", "dataset": dataset, "batch_size": "big"},
    )

    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert sorted(error["path"] for error in response.json["errors"]) == ["/batch_size", "/model"]
    assert client.get("/v1/batch-predictions").json == {"items": [], "next_cursor": None}


def test_an_unknown_batch_prediction_is_a_404(client):
    assert client.get(f"/v1/batch-predictions/{new_id()}").status_code == 404
    assert client.post(f"/v1/batch-predictions/{new_id()}:cancel").status_code == 404
    assert client.delete("/v1/batch-predictions/not-an-id").status_code == 404
