"""Readers that turn an uploaded file (.npy, .npz, CSV) or JSON arrays into `.npy` files.

Every reader works from disk in bounded chunks, checks before it writes, and never unpickles:
`.npy` headers are parsed with numpy's header reader (a literal, never a pickle), only the dtypes
Keras trains on are accepted, a header's shape is judged against the bytes that really follow,
and `.npz` members are sized from the zip's central directory before any byte is decompressed.
Every loop over an upload is linear in its size and checks a `CpuBudget`, and problems are
collected up to a cap and counted past it. Errors name the place in the request as a JSON pointer.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import re
import time
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.errors import MAX_ERRORS, FieldError, FieldErrors, InvalidData, PayloadTooLarge, pointer

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ACCEPTED_FORMATS = ".npy, .npz, or CSV with a header row (or a JSON body {'arrays': {...}})"
# What Keras trains on, in the byte order numpy writes here (`dtype.str` spells the order out).
ACCEPTED_DTYPES = frozenset(
    np.dtype(name).str
    for name in (
        *("bool", "int8", "int16", "int32", "int64"),
        *("uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"),
    )
)
NUMERIC = "a little-endian numeric dtype: bool, int8-64, uint8-64 or float16/32/64"
JSON_NUMBER_TYPES = (bool, int, float)
JSON_NUMBER = "a number: a boolean, an integer within 64 bits, or a float"
ARRAY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_ARRAYS = 64
# numpy's own limit is 64; no Keras input has anywhere near 32 dimensions.
MAX_DIMS = 32
# A member's central directory record is 46 bytes plus its name and extra fields.
MAX_CENTRAL_DIRECTORY_BYTES = MAX_ARRAYS * 1024
MAX_CLASSES = 65_536
# Class names go into the manifest and every classify answer.
MAX_LABEL_CHARS = 256
MAX_CSV_COLUMNS = 32_768
# A line is read whole before the csv module splits it: longer ones are refused unread.
MAX_CSV_LINE_CHARS = 4 << 20
# The one cap on listed errors (core.errors): an upload stops collecting once it is reached.
MAX_REPORTED_ERRORS = MAX_ERRORS
# CSV rows are parsed in batches of about this many cells, whatever the width.
_CSV_BATCH_CELLS = 1 << 16
CHUNK_BYTES = 4 << 20
_ENCRYPTED = 0x1


class CpuBudget:
    """The CPU seconds one upload may spend, counted on the thread that reads it: gunicorn's
    gthread workers serve several requests in one process, so a process-wide limit would not
    do. The readers check it once per chunk or batch, whose cost is bounded."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.thread_time()

    def check(self) -> None:
        spent = time.thread_time() - self.started
        if spent > self.seconds:
            raise PayloadTooLarge(
                f"Reading the upload took more than {self.seconds:g} s of CPU, the most one "
                "upload may take; send the arrays as .npy or .npz.",
                code="upload_too_costly",
            )


class Problems:
    """The first MAX_REPORTED_ERRORS problems found in an upload, and a count of the rest, so a
    file with millions of bad cells builds no more than that many errors."""

    def __init__(self) -> None:
        self.errors = FieldErrors()

    def __bool__(self) -> bool:
        return bool(self.errors)

    @property
    def full(self) -> bool:
        return self.errors.full

    def add(self, path: str, message: str, expected: str | None, received: Any) -> None:
        if self.full:
            self.errors.omitted += 1
        else:
            self.errors.append(FieldError(path, message, expected, received))

    def refusal(self, detail: str) -> InvalidData:
        """The upload's refusal, its problems listed and the rest counted in `errors_omitted`,
        which error documents show beside the list."""
        return InvalidData(detail, errors=self.errors)


@dataclasses.dataclass(frozen=True)
class NpyHeader:
    """What a `.npy` header declares; `offset` is where the data starts."""

    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype
    offset: int

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize


@dataclasses.dataclass
class Arrays:
    """A reader's result: array name -> `.npy` path, plus class names of string labels and the
    column names of a CSV's features (each by array name)."""

    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    classes: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    features: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def detect_format(path: Path) -> str:
    """The format of the file at `path` from its first bytes: `npy`, `npz` or `csv`."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if not head:
        raise _invalid("/file", "The file is empty.", ACCEPTED_FORMATS, 0)
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGICS):
        return "npz"
    if head.startswith(HDF5_MAGIC):
        raise _invalid(
            "/file",
            "HDF5 files are not accepted; save the arrays with numpy.savez instead.",
            ACCEPTED_FORMATS,
            "HDF5",
        )
    if _looks_like_text(head):
        return "csv"
    raise _invalid(
        "/file",
        "The file's format is not recognized from its first bytes.",
        ACCEPTED_FORMATS,
        head[:8].hex(),
    )


def read_npy_header(handle: IO[bytes], where: str) -> NpyHeader:
    """Parse and check a `.npy` header: an accepted dtype, 1 to MAX_DIMS dimensions, each at
    least 1 (a zero dimension would let the others declare any size in no bytes)."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, SyntaxError, EOFError, tokenize.TokenError) as error:
        raise _invalid(where, f"Not a readable .npy array: {error}.", ".npy", None) from None
    check_dtype(dtype, where)
    if not all(type(size) is int for size in shape):
        # numpy's reader takes True and False as sizes, which its memory maps then refuse.
        raise _invalid(where, "The shape holds non-integers.", "integer sizes", str(shape)[:100])
    if not shape:
        raise _invalid(
            where, "A 0-d scalar has no rows.", "an array with at least one dimension", []
        )
    if len(shape) > MAX_DIMS:
        raise _invalid(
            where,
            f"The shape has {len(shape)} dimensions.",
            f"at most {MAX_DIMS} dimensions",
            len(shape),
        )
    if min(shape) < 1:
        raise _invalid(
            where,
            f"The shape {list(shape)} holds no elements.",
            "every dimension at least 1",
            list(shape),
        )
    return NpyHeader(shape, fortran, dtype, handle.tell())


def check_dtype(dtype: np.dtype, where: str) -> None:
    """Accept only ACCEPTED_DTYPES; say why anything else is refused."""
    if dtype.str in ACCEPTED_DTYPES:
        return
    if dtype.hasobject:
        message = "The array holds pickled Python objects (dtype object); they are never loaded."
    elif dtype.kind in "biuf" and dtype.byteorder == ">":
        message = (
            f"The array at {where} has the big-endian dtype {dtype}; convert it with "
            "array.astype(array.dtype.newbyteorder('<'))."
        )
    else:
        message = f"The array at {where} has dtype {dtype}, which Keras cannot train on."
    raise _invalid(where, message, NUMERIC, "object" if dtype.hasobject else str(dtype))


def check_name(name: str, where: str) -> None:
    if not isinstance(name, str) or not ARRAY_NAME.fullmatch(name):
        raise _invalid(
            where,
            "Array names are short identifiers.",
            "1-64 characters of letters, digits, '_', '.', '-', starting with a letter or '_'",
            name,
        )


def read_npy(source: Path, folder: Path, name: str) -> Arrays:
    """A single `.npy` upload: checked, then moved (not copied) into `folder` as `a0.npy`."""
    check_name(name, "/name")
    with open(source, "rb") as handle:
        header = read_npy_header(handle, "/file")
    _check_size(header, source.stat().st_size - header.offset, "/file")
    target = folder / "a0.npy"
    source.replace(target)
    return Arrays({name: target})


def read_npz(source: Path, folder: Path, max_bytes: int, budget: CpuBudget) -> Arrays:
    """An `.npz` upload: members sized from the central directory, then streamed to `.npy`s.

    What a member declares is judged against `max_bytes`, never its compression ratio: sorted
    labels deflate a thousandfold and are no bomb, and the copy reads no more than declared.
    """
    try:
        _check_central_directory(source)
        with zipfile.ZipFile(source) as archive:
            members = _check_members(archive.infolist(), max_bytes)
            result = Arrays()
            for position, (name, info) in enumerate(members):
                target = folder / f"a{position}.npy"
                with archive.open(info) as member:
                    _copy_member(member, info, target, pointer("file", "arrays", name), budget)
                result.files[name] = target
            return result
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        UnicodeDecodeError,
        EOFError,
        OSError,
        zlib.error,
    ) as error:
        raise _invalid("/file", f"The .npz archive is damaged: {error}.", ".npz", None) from None


def _check_central_directory(source: Path) -> None:
    """Refuse a central directory too large for MAX_ARRAYS members before zipfile reads it
    whole and builds an object per entry (a gigabyte of them would exhaust memory)."""
    with open(source, "rb") as handle:
        # zipfile's own end-record reader, so zip64 and archive comments are read as it will.
        end = zipfile._EndRecData(handle)  # type: ignore[attr-defined]
    if end is None:
        raise zipfile.BadZipFile("no end of central directory record")
    declared = end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if declared > MAX_CENTRAL_DIRECTORY_BYTES:
        raise _invalid(
            "/file",
            f"The .npz archive's directory declares {declared} bytes, more than "
            f"{MAX_ARRAYS} members need.",
            f"at most {MAX_CENTRAL_DIRECTORY_BYTES} bytes",
            declared,
        )


def _check_members(infos: list[zipfile.ZipInfo], max_bytes: int) -> list[tuple[str, Any]]:
    if not infos:
        raise _invalid("/file", "The .npz archive holds no arrays.", "1 or more arrays", 0)
    if len(infos) > MAX_ARRAYS:
        raise _invalid(
            "/file", "The .npz archive holds too many members.", f"at most {MAX_ARRAYS}", len(infos)
        )
    problems = Problems()
    members = []
    seen: set[str] = set()
    for info in infos:
        name = info.filename.removesuffix(".npy")
        where = pointer("file", "arrays", name)
        if not ARRAY_NAME.fullmatch(name) or not info.filename.endswith(".npy"):
            problems.add(where, "Not an array member.", "NAME.npy", info.filename)
        elif name in seen:
            problems.add(where, "The member name repeats.", "unique names", name)
        elif info.flag_bits & _ENCRYPTED:
            problems.add(where, "The member is encrypted.", "no encryption", name)
        elif info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            problems.add(where, "Unsupported compression.", "stored or deflate", info.compress_type)
        elif info.file_size > max_bytes:
            problems.add(
                where,
                f"The member declares {info.file_size} bytes uncompressed. {_too_large(max_bytes)}",
                f"at most {max_bytes} bytes",
                info.file_size,
            )
        seen.add(name)
        members.append((name, info))
    total = sum(info.file_size for info in infos)
    if not problems and total > max_bytes:
        problems.add(
            "/file",
            f"The members declare {total} bytes uncompressed in all. {_too_large(max_bytes)}",
            f"at most {max_bytes} bytes",
            total,
        )
    if problems:
        raise problems.refusal("The .npz archive was refused before decompressing it.")
    return members


def _too_large(max_bytes: int) -> str:
    """How to fix an archive judged too large: its decompressed size counts, not its ratio."""
    return (
        f"A dataset may hold at most {max_bytes} bytes (FITSERVE_MAX_DATASET_BYTES), however "
        "well it compresses: split the arrays into several datasets, or ask the operator to "
        "raise the setting."
    )


def _copy_member(
    member: IO[bytes], info: zipfile.ZipInfo, target: Path, where: str, budget: CpuBudget
) -> None:
    """Copy a member's array, decompressing no more than its header declares."""
    header = read_npy_header(member, where)
    _check_size(header, info.file_size - header.offset, where)
    left = header.data_bytes
    with open(target, "wb") as out:
        _write_header(out, header.shape, header.dtype, header.fortran_order)
        while left:
            budget.check()
            chunk = member.read(min(CHUNK_BYTES, left))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
    if left or member.read(1):
        raise _invalid(where, "The member's data does not match its header.", ".npy", None)


def _check_size(header: NpyHeader, data_bytes: int, where: str) -> None:
    if data_bytes != header.data_bytes:
        raise _invalid(
            where,
            f"The header declares shape {list(header.shape)} of {header.dtype} "
            f"({header.data_bytes} bytes) but {data_bytes} data bytes follow.",
            f"{header.data_bytes} data bytes",
            data_bytes,
        )


def _write_header(out: IO[bytes], shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> None:
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran}
    np.lib.format.write_array_header_2_0(out, {**fields, "shape": shape})


class NpyWriter:
    """Appends rows to a `.npy` file whose first dimension is only known at the end.

    numpy pads a header so its first dimension can grow in place, which `finish` relies on.
    """

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = path
        self.row_shape = row_shape
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self.handle = open(path, "wb")  # noqa: SIM115  closed by finish
        _write_header(self.handle, (0, *row_shape), self.dtype, False)
        self.header_bytes = self.handle.tell()

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        self.handle.write(rows.tobytes())
        self.rows += len(rows)

    def finish(self) -> Path:
        """Fill in the rows and close; once finished, a no-op."""
        if self.handle.closed:
            return self.path
        self.handle.seek(0)
        _write_header(self.handle, (self.rows, *self.row_shape), self.dtype, False)
        if self.handle.tell() != self.header_bytes:
            raise RuntimeError("the .npy header changed length when its rows were filled in")
        self.handle.close()
        return self.path


class _Labels:
    """The label column, written to disk as it is read: as numbers while every cell parses as
    one, and as class ids in first-seen order."""

    def __init__(self, folder: Path) -> None:
        self.numbers: NpyWriter | None = NpyWriter(
            folder / "labels.f8.npy", (), np.dtype(np.float64)
        )
        self.ids = NpyWriter(folder / "labels.i8.npy", (), np.dtype(np.int64))
        self.names: dict[str, int] = {}
        self.integer = True

    def add(self, cells: list[str]) -> None:
        self.ids.append(np.array([self.names.setdefault(c, len(self.names)) for c in cells]))
        if len(self.names) > MAX_CLASSES:
            raise _invalid(
                "/file", "The label column holds too many classes.", f"at most {MAX_CLASSES}", None
            )
        if self.numbers is None:
            return
        try:
            values = np.array(cells, dtype=np.float64)
        except ValueError:
            self.numbers.finish().unlink()
            self.numbers = None
            return
        self.numbers.append(values)
        if self.integer:
            # Whole numbers past int64's range (1e30) stay floats.
            whole = np.isfinite(values) & (values == np.trunc(values)) & (np.abs(values) < 2**63)
            self.integer = bool(whole.all())

    def write(self, path: Path) -> list[str] | None:
        """Write `y`; return the class names when the labels are strings, else None."""
        self.close()
        if self.numbers is not None:
            dtype = np.int64 if self.integer else np.float32
            _rewrite(self.numbers.path, path, lambda values: values.astype(dtype))
            self.ids.path.unlink()
            return None
        names = sorted(self.names)
        order = np.empty(len(names), dtype=np.int64)
        for position, name in enumerate(names):
            order[self.names[name]] = position
        _rewrite(self.ids.path, path, lambda ids: order[ids])
        return names

    def close(self) -> None:
        self.ids.finish()
        if self.numbers is not None:
            self.numbers.finish()


def _rewrite(source: Path, target: Path, convert: Any) -> None:
    """Write `convert` of each chunk of the 1-d `.npy` at `source` to `target`; remove `source`."""
    with open(source, "rb") as handle:
        header = read_npy_header(handle, "/file")
        example = convert(np.empty(0, dtype=header.dtype))
        writer = NpyWriter(target, (), example.dtype)
        try:
            while chunk := handle.read(CHUNK_BYTES):
                writer.append(convert(np.frombuffer(chunk, dtype=header.dtype)))
        finally:
            writer.finish()
    source.unlink()


def read_csv(source: Path, folder: Path, label: str, budget: CpuBudget) -> Arrays:
    """A CSV with a header row: `label` names the label column -> arrays `x` (float32) and `y`.

    Ragged rows and non-numeric cells are reported by their line in the file (1-based, the header
    is line 1) and their column's header name; reading stops once MAX_REPORTED_ERRORS are known.
    """
    with open(source, encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(_csv_lines(text))
        with _csv_errors(reader):
            header = [cell.strip() for cell in next(reader, [])]
        features = _feature_columns(header, label)
        writer = NpyWriter(folder / "a0.npy", (len(features),), np.dtype(np.float32))
        labels = _Labels(folder)
        try:
            with _csv_errors(reader):
                problems = _read_rows(reader, header, features, label, writer, labels, budget)
        finally:
            writer.finish()
            labels.close()
    if problems:
        raise problems.refusal(
            f"The CSV has bad cells or rows; reading stopped at line {reader.line_num}."
        )
    if writer.rows == 0:
        raise _invalid("/file", "The CSV has a header but no data rows.", "1 or more rows", 0)
    result = Arrays({"x": writer.path, "y": folder / "a1.npy"})
    result.features["x"] = [header[index] for index in features]
    classes = labels.write(result.files["y"])
    if classes is not None:
        result.classes["y"] = classes
    return result


def _csv_lines(text: IO[str]) -> Iterator[str]:
    """The file's lines for the csv module, refusing one past MAX_CSV_LINE_CHARS unread."""
    number = 0
    while line := text.readline(MAX_CSV_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_CSV_LINE_CHARS:
            raise _invalid(
                pointer("file", "rows", number),
                f"Line {number} is longer than {MAX_CSV_LINE_CHARS} characters.",
                f"lines of at most {MAX_CSV_LINE_CHARS} characters",
                None,
            )
        yield line


@contextlib.contextmanager
def _csv_errors(reader: Any) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError as error:
        raise _invalid("/file", f"The CSV is not UTF-8 text: {error}.", "UTF-8", None) from None
    except csv.Error as error:
        where = pointer("file", "rows", reader.line_num)
        raise _invalid(where, f"The CSV cannot be parsed: {error}.", "CSV", None) from None


def _read_rows(
    reader: Any,
    header: list[str],
    features: list[int],
    label: str,
    writer: NpyWriter,
    labels: _Labels,
    budget: CpuBudget,
) -> Problems:
    """Parse the data rows into `writer` and `labels`; stop at the batch where the problems
    reach their cap. Once a problem is known nothing more is written: the upload is refused."""
    problems = Problems()
    label_index = header.index(label)
    for batch in _csv_batches(reader):
        budget.check()
        parsed = _parse_batch(batch, header, features, label_index)
        if parsed is None:
            _report_batch(batch, header, features, label_index, problems)
        elif not problems:
            writer.append(parsed[0])
            labels.add(parsed[1])
        if problems.full:
            break
    return problems


def _feature_columns(header: list[str], label: str) -> list[int]:
    """The indexes of the feature columns; the header's checks are linear in its length."""
    if len(header) > MAX_CSV_COLUMNS:
        raise _invalid(
            "/file",
            f"The CSV header names {len(header)} columns.",
            f"at most {MAX_CSV_COLUMNS} columns",
            len(header),
        )
    if not header or not all(header):
        raise _invalid(
            "/file", "The CSV's first line must name every column.", "a header row", header[:50]
        )
    repeated = sorted(name for name, count in collections.Counter(header).items() if count > 1)
    if repeated:
        raise _invalid(
            "/file", "The CSV header repeats column names.", "unique names", repeated[:50]
        )
    if label not in header:
        raise _invalid(
            "/label",
            f"The CSV has no column named {label[:100]!r} for the labels.",
            f"one of {header[:50]}",
            label,
        )
    features = [i for i, name in enumerate(header) if name != label]
    if not features:
        raise _invalid("/file", "The CSV has no feature columns.", "2 or more columns", header)
    return features


def _csv_batches(reader: Any) -> Iterator[list[tuple[int, list[str]]]]:
    """Batches of (line number, row) of about _CSV_BATCH_CELLS cells, ragged rows included;
    blank lines skipped."""
    batch: list[tuple[int, list[str]]] = []
    cells = 0
    for row in reader:
        if not row:
            continue
        batch.append((reader.line_num, row))
        cells += len(row)
        if cells >= _CSV_BATCH_CELLS:
            yield batch
            batch, cells = [], 0
    if batch:
        yield batch


def _parse_batch(
    batch: list[tuple[int, list[str]]], header: list[str], features: list[int], label_index: int
) -> tuple[np.ndarray, list[str]] | None:
    """The batch's features and label cells, or None when some row or cell is bad."""
    if any(len(row) != len(header) for _, row in batch):
        return None
    label_cells = [row[label_index].strip() for _, row in batch]
    if not all(label_cells) or max(map(len, label_cells)) > MAX_LABEL_CHARS:
        return None
    try:
        values = np.array([[row[i] for i in features] for _, row in batch], dtype=np.float32)
    except ValueError:
        return None
    return values, label_cells


def _report_batch(
    batch: list[tuple[int, list[str]]],
    header: list[str],
    features: list[int],
    label_index: int,
    problems: Problems,
) -> None:
    """Report a bad batch's problems in line order. numpy parses text cells with Python's
    float(), so a cell is bad exactly when float() refuses it."""
    for line, row in batch:
        if len(row) != len(header):
            problems.add(
                pointer("file", "rows", line),
                f"Line {line} has {len(row)} cells but the header has {len(header)}.",
                f"{len(header)} cells",
                len(row),
            )
            continue
        for index in features:
            try:
                float(row[index])
            except ValueError:
                _add_cell_problem(
                    problems, line, header[index], row[index], "Not a number.", "a number"
                )
        label = row[label_index].strip()
        if not label or len(label) > MAX_LABEL_CHARS:
            _add_cell_problem(
                problems,
                line,
                header[label_index],
                label,
                "The label is empty." if not label else "The label is too long.",
                f"a label of 1 to {MAX_LABEL_CHARS} characters",
            )


def _add_cell_problem(
    problems: Problems, line: int, column: str, cell: str, message: str, expected: str
) -> None:
    problems.add(pointer("file", "rows", line, "columns", column), message, expected, cell[:100])


def arrays_from_json(document: Any, folder: Path) -> Arrays:
    """`{"arrays": {name: nested lists}}`: numbers become float32 (integers int64, booleans
    bool); a flat list of strings becomes class ids with the names kept."""
    if not isinstance(document, dict) or set(document) != {"arrays"}:
        received = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise _invalid(
            "", "The body must be an object with one key, 'arrays'.", "{'arrays'}", received
        )
    arrays = document["arrays"]
    if not isinstance(arrays, dict) or not 1 <= len(arrays) <= MAX_ARRAYS:
        raise _invalid(
            "/arrays",
            "'arrays' maps names to nested lists.",
            f"an object of 1 to {MAX_ARRAYS} arrays",
            type(arrays).__name__ if not isinstance(arrays, dict) else len(arrays),
        )
    result = Arrays()
    for position, (name, value) in enumerate(arrays.items()):
        where = pointer("arrays", name)
        check_name(name, where)
        values, classes = _json_array(value, where)
        result.files[name] = folder / f"a{position}.npy"
        np.save(result.files[name], values, allow_pickle=False)
        if classes is not None:
            result.classes[name] = classes
    return result


def _json_array(value: Any, where: str) -> tuple[np.ndarray, list[str] | None]:
    """Nested lists of numbers, or a flat list of string labels; checked element by element
    before numpy sees them, so no string array of fixed-width characters is ever built."""
    if not isinstance(value, list):
        raise _invalid(where, "An array is a (nested) list.", "a list", type(value).__name__)
    shape, leaves = _json_shape(value, where)
    if 0 in shape:
        raise _invalid(where, "The array is empty.", "a non-empty list", list(shape))
    kinds = set(map(type, leaves))
    if kinds == {str} and len(shape) == 1:
        return _json_labels(leaves, where)
    dtype = np.float32 if float in kinds else np.int64 if int in kinds else np.bool_
    if kinds <= set(JSON_NUMBER_TYPES):
        try:
            # Beyond float32's range a value becomes inf, which the statistics count.
            with np.errstate(over="ignore"):
                return np.array(leaves, dtype=dtype).reshape(shape), None
        except OverflowError:
            position = next(i for i, leaf in enumerate(leaves) if not _fits(leaf, dtype))
            message = f"The number does not fit {np.dtype(dtype).name}."
    else:
        position = next(
            i for i, leaf in enumerate(leaves) if not isinstance(leaf, JSON_NUMBER_TYPES)
        )
        message = "Not a number; strings are accepted only as a flat list of labels."
    place = pointer(*where.strip("/").split("/"), *np.unravel_index(position, shape))
    raise _invalid(place, message, JSON_NUMBER, _json_preview(leaves[position]))


def _json_labels(labels: list[str], where: str) -> tuple[np.ndarray, list[str]]:
    """String labels as class ids, the sorted names kept; as many and as long as CSV labels."""
    names = sorted(set(labels))
    if len(names) > MAX_CLASSES:
        raise _invalid(where, "The labels name too many classes.", f"at most {MAX_CLASSES}", None)
    for position, label in enumerate(labels):
        if not 1 <= len(label) <= MAX_LABEL_CHARS:
            raise _invalid(
                pointer(*where.strip("/").split("/"), position),
                "The label is empty." if not label else "The label is too long.",
                f"a label of 1 to {MAX_LABEL_CHARS} characters",
                label[:100],
            )
    ids = {name: position for position, name in enumerate(names)}
    return np.array([ids[label] for label in labels], dtype=np.int64), names


def _json_shape(value: list, where: str) -> tuple[tuple[int, ...], list]:
    """The shape of rectangular nested lists and their leaves, level by level (no recursion);
    ragged lists, or lists and values mixed at one depth, are refused."""
    shape: list[int] = []
    level: list = [value]
    while all(isinstance(item, list) for item in level):
        lengths = {len(item) for item in level}
        if len(lengths) > 1:
            raise _invalid(
                where,
                f"The nested lists are ragged: at depth {len(shape)} their lengths are "
                f"{sorted(lengths)[:10]}.",
                "a rectangular list",
                None,
            )
        if len(shape) == MAX_DIMS:
            raise _invalid(
                where,
                f"The lists nest deeper than {MAX_DIMS} levels.",
                f"at most {MAX_DIMS} dimensions",
                None,
            )
        shape.append(lengths.pop())
        level = [leaf for item in level for leaf in item]
        if not level:
            break
    if any(isinstance(item, list) for item in level):
        raise _invalid(
            where,
            f"The nested lists mix lists and values at depth {len(shape)}.",
            "a rectangular list",
            None,
        )
    return tuple(shape), level


def _fits(leaf: Any, dtype: type) -> bool:
    try:
        np.array(leaf, dtype=dtype)
    except OverflowError:
        return False
    return True


def _json_preview(leaf: Any) -> Any:
    if isinstance(leaf, str):
        return leaf[:100]
    if isinstance(leaf, int | float):
        return leaf
    return {dict: "an object", type(None): "null"}.get(type(leaf), type(leaf).__name__)


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        # A multi-byte character cut by the 4 KiB window is still text.
        return error.start >= len(head) - 3
    return True


def _invalid(path: str, message: str, expected: str | None, received: Any) -> InvalidData:
    return InvalidData(message, errors=[FieldError(path, message, expected, received)])
