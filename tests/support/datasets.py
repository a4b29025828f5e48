"""Datasets uploaded through the Flask test client, as a client uploads them."""

from __future__ import annotations

import io

import numpy as np


def upload_npz(client, arrays: dict[str, np.ndarray], headers: dict[str, str] | None = None) -> str:
    """Upload arrays as an .npz through the datasets route; return the dataset id."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    response = client.post(
        "/v1/datasets",
        data={"file": (io.BytesIO(buffer.getvalue()), "data.npz")},
        content_type="multipart/form-data",
        headers=headers or {},
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]
