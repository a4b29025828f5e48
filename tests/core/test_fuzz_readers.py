"""The dataset readers fuzzed with files built the way the formats are, then mutated.

tests/core/test_datasets.py flips bits in a few seed files; here hypothesis builds whole uploads
from each format's own structure (CSV headers, cells and label columns; .npy and .npz arrays of
every dtype kind, rank and order, under any member name; JSON arrays nested, ragged or mixed)
so the readers' checks are reached, not only the header parsers. A second set writes what no
honest writer would: .npy headers declaring any dtype and any shape over too few bytes, CSVs of
any width and any count of bad rows, JSON arrays of long strings or deep nesting.

Every upload is stored with a manifest that agrees with its files, or refused with InvalidData
whose errors are located; either way no staging folder or upload is left behind, and no upload
takes more than MAX_CPU_SECONDS of CPU.
"""

from __future__ import annotations

import csv
import io
import json
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core import datasets, readers
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
MAX_CPU_SECONDS = 5.0


def folder(tmp_path_factory) -> tuple[DataDir, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    data = DataDir(root / "data")
    data.ensure()
    return data, root


def stored(data: DataDir, upload: Any) -> None:
    """Store; a success's manifest agrees with its files, a refusal is located; no leftovers;
    and it all took at most MAX_CPU_SECONDS of CPU."""
    dataset_id = new_id()
    manifest, errors = None, []
    started = time.process_time()
    try:
        manifest = upload(dataset_id)
    except InvalidData as error:
        errors = error.errors or [None]
        assert len(errors) <= readers.MAX_REPORTED_ERRORS
    spent = time.process_time() - started
    assert spent <= MAX_CPU_SECONDS, f"the upload took {spent:.1f} s of CPU"
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
            data, dataset_id, orjson.loads(body), body, settings=Settings(), owner="fuzz"
        ),
    )


# The .npy header's descr as a writer could spell it: accepted dtypes in either byte order, and
# every other kind numpy can describe (float128, complex, strings, void, subarrays, records).
DESCRS = st.sampled_from(
    [
        *("|b1", "|i1", "|u1", "<i2", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"),
        *(">i2", ">u4", ">f4", ">f8", "<f16", ">f16", "<c8", "<c16", "<c32"),
        *("|S3", "<U2", ">U1", "|V4", "|V0", "<M8[D]", ">m8[s]", "(2,)<f4", "(0,)<i4"),
        [("a", "<i4"), ("b", "<f4")],
        [("x", ">f8", (2, 2))],
    ]
)
SIZES = (
    st.integers(0, 4)
    | st.sampled_from([-1, 2**31, 2**32 + 1, 2**62, 2**63, 2**64 + 1, 10**30])
    | st.integers(-(2**70), 2**70)
)
SHAPES = (
    st.lists(SIZES, max_size=6).map(tuple)
    | st.sampled_from([(2**62, 0), (0, 2**62), (0,), (3, 0), (2**31, 2**31, 0)])
    | st.integers(33, 200).map(lambda n: (1,) * n)
)


@st.composite
def npy_headers(draw: st.DrawFn) -> bytes:
    """A header declaring any dtype and shape, then the bytes it declares (when few) or not."""
    descr, shape = draw(DESCRS), draw(SHAPES)
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": draw(st.booleans()), "shape": shape}
    np.lib.format.write_array_header_2_0(buffer, header)
    itemsize = np.lib.format.descr_to_dtype(descr).itemsize
    declared = int(np.prod(shape, dtype=object)) * itemsize
    exact = 0 <= declared <= 4096 and draw(st.booleans())
    return buffer.getvalue() + bytes(declared if exact else draw(st.integers(0, 64)))


@FUZZ
@given(content=npy_headers(), name=NAMES)
def test_npy_headers(tmp_path_factory, content: bytes, name: str) -> None:
    data, root = folder(tmp_path_factory)
    store_file(data, root, content, name=name)


@FUZZ
@given(
    members=st.lists(st.tuples(NAMES, npy_headers()), min_size=1, max_size=3),
    compression=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
)
def test_npz_headers(tmp_path_factory, members: list[tuple[str, bytes]], compression: int) -> None:
    data, root = folder(tmp_path_factory)
    buffer = io.BytesIO()
    # Repeated member names are one of the cases (the reader refuses them); zipfile warns.
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression) as archive:
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
        for name, content in members:
            archive.writestr(f"{name}.npy", content)
    store_file(data, root, buffer.getvalue())


@st.composite
def csv_shapes(draw: st.DrawFn) -> tuple[bytes, str]:
    """A CSV built from its shape rather than cell by cell, so it can be wide and long: up to
    300,000 header names (unique, repeated or blank), rows that are good, ragged, or full of
    bad cells and empty labels."""
    width = draw(st.integers(1, 40) | st.sampled_from([1_000, 32_767, 32_769, 300_000]))
    naming = draw(st.sampled_from(["unique", "repeated", "pairs", "one blank"]))
    names = {
        "unique": [f"c{i}" for i in range(width)],
        "repeated": ["c"] * width,
        "pairs": [f"c{i // 2}" for i in range(width)],
        "one blank": [f"c{i}" for i in range(width - 1)] + [""],
    }[naming]
    header = ",".join(names) + ",label"
    rows = draw(st.integers(0, max(1, 200_000 // (width + 1))))
    cell = draw(st.sampled_from(["1", "-2.5e3", "x", "", "nan", "1e400"]))
    label = draw(st.sampled_from(["0", "cat", ""]))
    good = ",".join([cell] * width) + "," + label
    ragged = ",".join([cell] * draw(st.integers(0, width + 2)))
    line = draw(st.sampled_from([good, ragged]))
    every = draw(st.integers(1, 5))
    body = "\n".join(line if i % every == 0 else good for i in range(rows))
    return f"{header}\n{body}\n".encode(), draw(st.sampled_from(["label", "missing"]))


@settings(FUZZ, max_examples=60)
@given(upload=csv_shapes())
def test_csv_shapes(tmp_path_factory, upload: tuple[bytes, str]) -> None:
    data, root = folder(tmp_path_factory)
    content, label = upload
    store_file(data, root, content, label=label)


@st.composite
def json_shapes(draw: st.DrawFn) -> Any:
    """Arrays a reader must not convert naively: many short strings beside a long one (as
    fixed-width characters, terabytes), strings in nested lists, nesting past any rank, ragged
    levels deep down, integers past 64 bits."""
    count = draw(st.sampled_from([1, 1_000, 100_000]) | st.integers(1, 100_000))
    long = "x" * draw(st.sampled_from([1, 200_000]) | st.integers(1, 200_000))
    nest = draw(st.sampled_from([31, 32, 200]) | st.integers(1, 200))
    kind = draw(
        st.sampled_from(["labels", "nested strings", "deep", "ragged deep", "big ints", "mixed"])
    )
    if kind == "labels":
        return [long] + ["a", "b"] * (count // 2)
    if kind == "nested strings":
        return [[long, "a"]] + [["a", "b"]] * count
    if kind in ("deep", "ragged deep"):
        value: Any = [1.5, 2] if kind == "deep" else [[1], [2, 3]]
        for _ in range(nest):
            value = [value]
        return value
    if kind == "big ints":
        return [1] * count + [draw(st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**400]))]
    return [1.5] * count + [draw(st.sampled_from([None, {}, "1", [1], 10**400]))]


@settings(FUZZ, max_examples=60)
@given(array=json_shapes())
def test_json_shapes(tmp_path_factory, array: Any) -> None:
    """The document as Python builds it: orjson would turn integers past 64 bits into floats."""
    data, _ = folder(tmp_path_factory)
    document = {"arrays": {"x": array}}
    body = json.dumps(document).encode()
    stored(
        data,
        lambda dataset_id: datasets.store_json(
            data, dataset_id, document, body, settings=Settings(), owner="fuzz"
        ),
    )
