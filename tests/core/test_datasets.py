"""core.datasets and core.readers on files: formats, dtypes, statistics, storage, reading back."""

from __future__ import annotations

import contextlib
import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import datasets, readers
from core.errors import InvalidData, InvalidRequest, NotFound, PayloadTooLarge
from core.settings import Settings
from core.storage import DataDir, new_id


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    folder = DataDir(tmp_path / "data")
    folder.ensure()
    return folder


def store(data: DataDir, tmp_path: Path, content: bytes | np.ndarray, **options) -> dict:
    source = tmp_path / f"upload-{new_id()}"
    if isinstance(content, np.ndarray):
        np.save(source.with_suffix(".npy"), content)
        source.with_suffix(".npy").rename(source)
    else:
        source.write_bytes(content)
    return datasets.store_upload(
        data, new_id(), source, settings=Settings(), owner="alice", filename="f", **options
    )


def npy_declaring(descr: object, shape: object, data: bytes = b"") -> bytes:
    """A .npy file with a header written as given, whatever it declares, then `data`."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue() + data


def refusal(call) -> dict:
    with pytest.raises(InvalidData) as caught:
        call()
    assert len(caught.value.errors) == 1
    return caught.value.errors[0].to_dict()


@pytest.mark.parametrize(
    ("descr", "received"),
    [
        ("<U1", "<U1"),
        ("|S4", "|S4"),
        ("<c16", "complex128"),
        ("<f16", "float128"),
        ("<M8[D]", "datetime64[D]"),
        ("<m8[s]", "timedelta64[s]"),
        ("|V4", "|V4"),
        ("(2,)<f4", "('<f4', (2,))"),
        ([("a", "<i4"), ("b", "<f4")], "[('a', '<i4'), ('b', '<f4')]"),
        (">f4", ">f4"),
        (">i8", ">i8"),
    ],
)
def test_dtypes_outside_the_allowlist_are_refused(data, tmp_path, descr, received):
    dtype = np.lib.format.descr_to_dtype(descr)
    error = refusal(
        lambda: store(data, tmp_path, npy_declaring(descr, (2,), bytes(2 * dtype.itemsize)))
    )
    assert error["path"] == "/file"
    assert error["received"] == received
    assert error["message"].startswith(
        f"The array at /file has {'the big-endian ' * (descr[0] == '>')}dtype"
    )
    assert "bool, int8-64, uint8-64 or float16/32/64" in error["expected"]


def test_dtypes_of_the_allowlist_are_stored(data, tmp_path):
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        assert store(data, tmp_path, np.ones(3, dtype=name))["arrays"]["x"]["dtype"] == name
    for name in ("float16", "float32", "float64"):
        assert store(data, tmp_path, np.ones(3, dtype=name))["arrays"]["x"]["dtype"] == name


NO_ELEMENTS = "every dimension at least 1"


@pytest.mark.parametrize(
    ("shape", "expected", "received"),
    [
        ((2**62, 0), NO_ELEMENTS, [2**62, 0]),
        ((0, 2**62), NO_ELEMENTS, [0, 2**62]),
        ((2**40, 2**40, 0), NO_ELEMENTS, [2**40, 2**40, 0]),
        ((1, 0, 1), NO_ELEMENTS, [1, 0, 1]),
        ((-(2**62), -2), NO_ELEMENTS, [-(2**62), -2]),
        ((False,), "integer sizes", "(False,)"),
        ((2**62, 2**62), f"{2**126} data bytes", 8),
        ((2**64 + 1,), f"{4 * (2**64 + 1)} data bytes", 8),
    ],
)
def test_header_shapes_are_judged_before_anything_is_allocated(
    data, tmp_path, shape, expected, received
):
    """Zero bytes cannot back an absurd shape: a zero dimension is refused, and any other shape
    must match the bytes that follow (its size computed without overflow)."""
    error = refusal(lambda: store(data, tmp_path, npy_declaring("<f4", shape, bytes(8))))
    assert (error["path"], error["expected"], error["received"]) == ("/file", expected, received)
    assert list(data.datasets.iterdir()) == []


def test_header_with_too_many_dimensions_is_refused(data, tmp_path):
    error = refusal(lambda: store(data, tmp_path, npy_declaring("<f4", (1,) * 1000, bytes(4))))
    assert (error["path"], error["received"]) == ("/file", 1000)
    error = refusal(lambda: store(data, tmp_path, npy_declaring("<f4", (True, 2), bytes(8))))
    assert (error["path"], error["received"]) == ("/file", "(True, 2)")


def test_scalar_and_truncated_npy_are_refused(data, tmp_path):
    assert refusal(lambda: store(data, tmp_path, np.array(3.0, dtype=np.float32)))["received"] == []
    garbled = readers.NPY_MAGIC + b"\x01\x00" + (10).to_bytes(2, "little") + b"not a dict"
    full = tmp_path / "full.npy"
    np.save(full, np.arange(10, dtype=np.int32))
    truncated = full.read_bytes()[:-8]
    error = refusal(lambda: store(data, tmp_path, truncated))
    assert (error["expected"], error["received"]) == ("40 data bytes", 32)
    assert refusal(lambda: store(data, tmp_path, garbled))["path"] == "/file"


def test_negative_shape_and_empty_arrays_are_refused(data, tmp_path):
    header = {"descr": "<f4", "fortran_order": False, "shape": (-1, -4)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    error = refusal(lambda: store(data, tmp_path, buffer.getvalue() + bytes(16)))
    assert (error["path"], error["received"]) == ("/file", [-1, -4])
    error = refusal(lambda: store(data, tmp_path, np.zeros((0, 3))))
    assert (error["path"], error["received"]) == ("/file", [0, 3])


def test_array_name_must_be_an_identifier(data, tmp_path):
    error = refusal(lambda: store(data, tmp_path, np.ones(2), name="../x"))
    assert (error["path"], error["received"]) == ("/name", "../x")


def test_statistics_of_each_dtype_kind(data, tmp_path):
    x = np.array([True, False, True])
    manifest = store(data, tmp_path, x)
    assert manifest["arrays"]["x"]["stats"] == {
        "min": 0,
        "max": 1,
        "integer_valued": True,
        "nan": 0,
        "inf": 0,
        "labels": [0, 1],
    }
    signed = store(data, tmp_path, np.array([-128, 5, 127, 5], dtype=np.int8))
    assert signed["arrays"]["x"]["stats"]["labels"] == [-128, 5, 127]
    floats = store(data, tmp_path, np.array([np.nan, np.nan, -np.inf, 2.0], dtype=np.float16))
    stats = floats["arrays"]["x"]["stats"]
    assert (stats["min"], stats["max"], stats["nan"], stats["inf"]) == (2.0, 2.0, 2, 1)


def test_labels_are_dropped_past_256_distinct_values_across_chunks(data, tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK_BYTES", 64 * 8)
    few = store(data, tmp_path, np.arange(2000, dtype=np.int64) % 256)
    assert few["arrays"]["x"]["stats"]["labels"] == list(range(256))
    many = store(data, tmp_path, np.arange(2000, dtype=np.int64) % 257)
    assert many["arrays"]["x"]["stats"]["labels"] is None
    assert many["arrays"]["x"]["stats"]["max"] == 256


def test_csv_numeric_labels_and_blank_lines(data, tmp_path):
    text = "\ufeffa,label\n1,0.5\n\n2,1.5\n"
    manifest = store(data, tmp_path, text.encode(), label="label")
    assert manifest["classes"] == {}
    assert manifest["rows"] == 2
    assert manifest["arrays"]["y"]["dtype"] == "float32"
    assert manifest["arrays"]["y"]["stats"]["labels"] == [0.5, 1.5]
    folder = data.dataset(manifest["id"])
    assert sorted(p.name for p in folder.iterdir()) == ["a0.npy", "a1.npy", "manifest.json"]


def test_csv_whole_number_labels_past_int64_stay_floats(data, tmp_path):
    manifest = store(data, tmp_path, b"a,label\n1,3\n2,1e30\n")
    assert manifest["arrays"]["y"]["dtype"] == "float32"
    y = datasets.open_array(data, manifest["id"], "y")
    np.testing.assert_array_equal(y, np.array([3, 1e30], dtype=np.float32))


def test_csv_labels_span_several_batches(data, tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_CSV_BATCH_CELLS", 6)
    monkeypatch.setattr(readers, "CHUNK_BYTES", 16)
    numbers = "".join(f"{i},{i % 4}\n" for i in range(10))
    manifest = store(data, tmp_path, f"a,label\n{numbers}".encode())
    np.testing.assert_array_equal(datasets.open_array(data, manifest["id"], "y"), np.arange(10) % 4)
    assert manifest["arrays"]["y"]["dtype"] == "int64"
    # Numbers for three batches, then a word: the labels become classes after all.
    mixed = "".join(f"{i},{i % 3 if i < 9 else 'cat'}\n" for i in range(10))
    manifest = store(data, tmp_path, f"a,label\n{mixed}".encode())
    assert manifest["classes"] == {"y": ["0", "1", "2", "cat"]}
    y = datasets.open_array(data, manifest["id"], "y")
    np.testing.assert_array_equal(y, [0, 1, 2, 0, 1, 2, 0, 1, 2, 3])
    assert sorted(p.name for p in data.dataset(manifest["id"]).iterdir()) == [
        "a0.npy",
        "a1.npy",
        "manifest.json",
    ]


@pytest.mark.parametrize(
    ("text", "path", "received"),
    [
        ("a,b\n1,2\n", "/label", "label"),
        ("a,a,label\n1,2,3\n", "/file", ["a"]),
        ("label\n1\n", "/file", ["label"]),
        ("a,label\n", "/file", 0),
        ("a,label\n1,\n", "/file/rows/2/columns/label", ""),
        ('a,label\n"1,2\n', "/file/rows/2", 1),
        ("a,label\n1," + "c" * 257 + "\n", "/file/rows/2/columns/label", "c" * 100),
    ],
)
def test_csv_refusals_name_the_place(data, tmp_path, text, path, received):
    error = refusal(lambda: store(data, tmp_path, text.encode()))
    assert (error["path"], error.get("received")) == (path, received)


def test_csv_errors_are_listed_in_line_order_and_capped(data, tmp_path):
    rows = "\n".join(["x,1", "1,2,3"] * 30)
    with pytest.raises(InvalidData) as caught:
        store(data, tmp_path, f"a,label\n{rows}\n".encode())
    paths = [error.path for error in caught.value.errors]
    assert len(paths) == readers.MAX_REPORTED_ERRORS
    assert paths[:3] == ["/file/rows/2/columns/a", "/file/rows/3", "/file/rows/4/columns/a"]
    assert caught.value.errors_omitted == 60 - readers.MAX_REPORTED_ERRORS


def test_csv_reading_stops_at_the_batch_where_errors_reach_the_cap(data, tmp_path, monkeypatch):
    """Millions of bad cells build 50 errors, count the rest of one batch, and stop there."""
    monkeypatch.setattr(readers, "_CSV_BATCH_CELLS", 300)
    with pytest.raises(InvalidData) as caught:
        store(data, tmp_path, b"a,b,label\n" + b"x,x,1\n" * 1_000_000)
    assert len(caught.value.errors) == readers.MAX_REPORTED_ERRORS
    # 100 rows a batch: the first batch's 200 bad cells are found, 150 of them counted.
    assert caught.value.errors_omitted == 150
    assert "stopped at line 101" in caught.value.detail


def test_csv_header_checks_are_linear_and_capped(data, tmp_path):
    """Repeated names are found with one count, however many; a header past the column cap is
    refused unread, and so is a line past the line cap."""
    started = time.process_time()
    repeated = ",".join(f"c{i % 16_000}" for i in range(32_000)) + ",label\n1\n"
    error = refusal(lambda: store(data, tmp_path, repeated.encode()))
    assert (error["expected"], len(error["received"])) == ("unique names", 50)
    wide = ",".join(["c"] * (readers.MAX_CSV_COLUMNS + 1)) + "\n"
    error = refusal(lambda: store(data, tmp_path, wide.encode()))
    assert error["received"] == readers.MAX_CSV_COLUMNS + 1
    long = "a,label\n1,2\n" + "9" * (readers.MAX_CSV_LINE_CHARS + 1) + "\n"
    error = refusal(lambda: store(data, tmp_path, long.encode()))
    assert (error["path"], error["expected"]) == (
        "/file/rows/3",
        "lines of at most 4194304 characters",
    )
    assert time.process_time() - started < 2


def test_npz_central_directory_is_bounded_before_it_is_parsed(data, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(3_000):
            archive.writestr(f"m{index}.npy", b"")
    error = refusal(lambda: store(data, tmp_path, buffer.getvalue()))
    assert error["path"] == "/file"
    assert error["expected"] == f"at most {readers.MAX_CENTRAL_DIRECTORY_BYTES} bytes"
    assert error["received"] > readers.MAX_CENTRAL_DIRECTORY_BYTES


def npz_of(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [npy_declaring("<f8", (4, 3), bytes(96)), b"a,label\n1,2\n", npz_of(x=np.ones(3))],
    ids=["npy", "csv", "npz"],
)
def test_every_format_is_held_to_the_cpu_budget(data, tmp_path, content):
    source = tmp_path / "upload"
    source.write_bytes(content)
    with pytest.raises(PayloadTooLarge, match="CPU"):
        datasets.store_upload(
            data,
            new_id(),
            source,
            settings=Settings(upload_cpu_seconds=0),
            owner=None,
            filename="f",
        )
    assert list(data.datasets.iterdir()) == []
    document = {"arrays": {"x": [1, 2]}}
    with pytest.raises(PayloadTooLarge, match="CPU"):
        datasets.store_json(
            data, new_id(), document, b"{}", settings=Settings(upload_cpu_seconds=0), owner=None
        )


def test_json_pointer_escapes_names():
    assert readers.pointer("file", "rows", 3, "columns", "a/b~c") == "/file/rows/3/columns/a~1b~0c"


def test_npy_writer_header_keeps_its_length_when_rows_grow(tmp_path):
    writer = readers.NpyWriter(tmp_path / "w.npy", (3,), np.dtype(np.float32))
    writer.rows = 10**15
    writer.finish()
    with open(tmp_path / "w.npy", "rb") as handle:
        assert readers.read_npy_header(handle, "/").shape == (10**15, 3)


def test_open_array_memory_maps_and_verifies(data, tmp_path):
    manifest = store(data, tmp_path, np.arange(6, dtype=np.float32).reshape(3, 2))
    array = datasets.open_array(data, manifest["id"], "x", verify=True)
    assert isinstance(array, np.memmap)
    np.testing.assert_array_equal(array, [[0, 1], [2, 3], [4, 5]])
    with pytest.raises(NotFound):
        datasets.open_array(data, manifest["id"], "y")
    path = data.dataset(manifest["id"]) / "a0.npy"
    content = bytearray(path.read_bytes())
    content[-1] ^= 0xFF
    path.write_bytes(bytes(content))
    datasets.open_array(data, manifest["id"], "x")
    with pytest.raises(InvalidData, match="sha256"):
        datasets.open_array(data, manifest["id"], "x", verify=True)


@pytest.mark.parametrize("dataset_id", ["../../etc", "0" * 32, "", "A" * 32])
def test_load_manifest_of_unknown_or_malformed_id_is_not_found(data, dataset_id):
    with pytest.raises(NotFound):
        datasets.load_manifest(data, dataset_id)


def test_list_filters_by_owner_and_skips_incomplete_folders(data, tmp_path):
    mine = store(data, tmp_path, np.ones(2))
    (data.datasets / new_id()).mkdir()
    page, cursor = datasets.list_manifests(
        data, visible=lambda owner: owner == "alice", limit=10, cursor=None
    )
    assert ([m["id"] for m in page], cursor) == ([mine["id"]], None)
    page, _ = datasets.list_manifests(data, visible=lambda owner: False, limit=10, cursor=None)
    assert page == []
    with pytest.raises(InvalidRequest):
        datasets.list_manifests(data, visible=bool, limit=1, cursor="x_y")


def test_remove_stale_sweeps_old_leftovers_only(data, tmp_path):
    kept = store(data, tmp_path, np.ones(2))
    orphan = data.datasets / new_id()
    orphan.mkdir()
    part = data.uploads / "upload-abc.part"
    part.write_bytes(b"123")
    fresh = data.uploads / "upload-new.part"
    fresh.write_bytes(b"123")
    old = time.time() - datasets.STALE_SECONDS - 60
    for path in (orphan, part):
        os.utime(path, (old, old))
    datasets.remove_stale(data)
    assert not orphan.exists()
    assert not part.exists()
    assert fresh.exists()
    assert datasets.load_manifest(data, kept["id"])["id"] == kept["id"]


def test_delete_dataset_removes_the_folder(data, tmp_path):
    manifest = store(data, tmp_path, np.ones(2))
    datasets.delete_dataset(data, manifest["id"])
    assert not data.dataset(manifest["id"]).exists()
    assert list(data.uploads.iterdir()) == []
    with pytest.raises(NotFound):
        datasets.delete_dataset(data, manifest["id"])


def _seed_files() -> list[bytes]:
    buffers = [io.BytesIO() for _ in range(3)]
    np.save(buffers[0], np.arange(12, dtype=np.float32).reshape(4, 3))
    np.savez_compressed(buffers[1], x=np.linspace(0, 1, 8), y=np.arange(8) % 2)
    np.savez(buffers[2], x=np.ones((3, 2), dtype=np.int8))
    return [b.getvalue() for b in buffers] + [b"a,b,label\n1,2,cat\n3,4,dog\n"]


SEEDS = _seed_files()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
)
def test_damaged_files_are_refused_cleanly(tmp_path_factory, seed, cut, flips):
    """Truncated or bit-flipped uploads are stored or refused as InvalidData, nothing else."""
    content = bytearray(seed[: len(seed) - cut] if cut < len(seed) else seed)
    for position, value in flips:
        if content:
            content[position % len(content)] = value
    folder = tmp_path_factory.mktemp("fuzz")
    data = DataDir(folder / "data")
    data.ensure()
    with contextlib.suppress(InvalidData):
        store(data, folder, bytes(content))
    assert [p.name for p in data.uploads.iterdir()] == []
