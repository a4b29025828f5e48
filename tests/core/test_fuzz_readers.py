"""The dataset readers fuzzed with files built the way the formats are, then mutated.

tests/core/test_datasets.py flips bits in a few seed files; here hypothesis builds whole uploads
from each format's own structure (CSV headers, cells and label columns; .npy and .npz arrays of
every dtype kind, rank and order, under any member name; JSON arrays nested, ragged or mixed)
so the readers' checks are reached, not only the header parsers. Every upload is stored with a
manifest that agrees with its files, or refused with InvalidData whose errors are located; either
way no staging folder or upload is left behind.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core import datasets
from core.errors import InvalidData
from core.settings import Settings
from core.storage import DataDir, new_id

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
NAMES = st.sampled_from(["x", "y", "label", "a_1", "X2"]) | st.text(max_size=6)
CELLS = (
    st.integers(-(2**70), 2**70).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.sampled_from(["", " ", "cat", "dog", "nan", "inf", "1e400", "0x10", '"', "1,2", "é"])
    | st.text(max_size=5)
)
DTYPES = (
    hnp.integer_dtypes()
    | hnp.unsigned_integer_dtypes()
    | hnp.floating_dtypes()
    | hnp.boolean_dtypes()
    | hnp.complex_number_dtypes()
    | hnp.unicode_string_dtypes(max_len=3)
    | hnp.datetime64_dtypes()
)
ARRAYS = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))


def folder(tmp_path_factory) -> tuple[DataDir, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    data = DataDir(root / "data")
    data.ensure()
    return data, root


def stored(data: DataDir, upload: Any) -> None:
    """Store; a success's manifest agrees with its files, a refusal is located; no leftovers."""
    dataset_id = new_id()
    manifest, errors = None, []
    try:
        manifest = upload(dataset_id)
    except InvalidData as error:
        errors = error.errors or [None]
    for field in errors:
        assert field is not None, "InvalidData without a field error"
        assert field.path == "" or field.path.startswith("/"), field.path
        orjson.dumps(field.to_dict())
    if manifest is None:
        assert not data.dataset(dataset_id).exists()
    else:
        for entry in manifest["arrays"].values():
            array = np.load(data.dataset(dataset_id) / entry["file"], allow_pickle=False)
            assert list(array.shape) == entry["shape"]
            assert array.dtype.name == entry["dtype"]
        orjson.dumps(manifest)
    assert list(data.uploads.iterdir()) == []


def store_file(data: DataDir, root: Path, content: bytes, **options: str) -> None:
    source = root / f"upload-{new_id()}"
    source.write_bytes(content)
    stored(
        data,
        lambda dataset_id: datasets.store_upload(
            data, dataset_id, source, settings=Settings(), owner="fuzz", filename="f", **options
        ),
    )


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, str]:
    """A header and rows (sometimes ragged), and the label column asked for."""
    header = draw(st.lists(NAMES, min_size=1, max_size=4))
    width = len(header)
    rows = draw(
        st.lists(
            st.lists(CELLS, min_size=width, max_size=width)
            | st.lists(CELLS, min_size=0, max_size=width + 1),
            max_size=6,
        )
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    label = draw(st.sampled_from([*header, "label", "missing"]))
    return buffer.getvalue().encode(), label


@FUZZ
@given(upload=csv_files())
def test_csv_uploads(tmp_path_factory, upload: tuple[bytes, str]) -> None:
    data, root = folder(tmp_path_factory)
    content, label = upload
    store_file(data, root, content, label=label)


def npy_bytes(array: np.ndarray, fortran: bool) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asfortranarray(array) if fortran else array, allow_pickle=False)
    return buffer.getvalue()


@FUZZ
@given(array=ARRAYS, fortran=st.booleans(), name=NAMES)
def test_npy_uploads(tmp_path_factory, array: np.ndarray, fortran: bool, name: str) -> None:
    data, root = folder(tmp_path_factory)
    store_file(data, root, npy_bytes(array, fortran), name=name)


@FUZZ
@given(
    members=st.dictionaries(NAMES.filter(bool), ARRAYS, min_size=1, max_size=3),
    compressed=st.booleans(),
)
def test_npz_uploads(tmp_path_factory, members: dict[str, np.ndarray], compressed: bool) -> None:
    data, root = folder(tmp_path_factory)
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **members)
    store_file(data, root, buffer.getvalue())


JSON_NUMBERS = (
    st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.sampled_from(["cat", "dog"])
    | st.none()
)


@st.composite
def json_arrays(draw: st.DrawFn) -> Any:
    """Rectangular nested lists from an array's shape, then sometimes one element changed."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3))
    kind = draw(st.sampled_from(["int", "float", "bool", "str"]))
    array = draw(
        hnp.arrays(
            {"int": np.int64, "float": np.float64, "bool": np.bool_, "str": "U3"}[kind], shape
        )
    )
    value: Any = array.tolist()
    if draw(st.booleans()) and array.size:
        target = value
        while isinstance(target[0], list):
            target = target[0]
        target[0] = draw(JSON_NUMBERS | st.lists(JSON_NUMBERS, max_size=2))
    return value


@FUZZ
@given(
    document=st.fixed_dictionaries({"arrays": st.dictionaries(NAMES, json_arrays(), max_size=3)})
    | st.dictionaries(st.text(max_size=6), st.none() | st.integers(-5, 5), max_size=2)
)
def test_json_uploads(tmp_path_factory, document: Any) -> None:
    data, _ = folder(tmp_path_factory)
    body = orjson.dumps(document)
    stored(
        data,
        lambda dataset_id: datasets.store_json(
            data, dataset_id, orjson.loads(body), body, owner="fuzz"
        ),
    )
