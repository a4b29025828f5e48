"""Readers that turn an uploaded file (.npy, .npz, CSV) or JSON arrays into `.npy` files.

Every reader works from disk in bounded chunks, checks before it writes, and never unpickles:
`.npy` headers are parsed with numpy's header reader (a literal, never a pickle), object dtypes
are refused, and `.npz` members are sized from the zip's central directory before any byte is
decompressed. Errors name the place in the request as a JSON pointer.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import re
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.errors import MAX_ERRORS, FieldError, InvalidData, pointer

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ACCEPTED_FORMATS = ".npy, .npz, or CSV with a header row (or a JSON body {'arrays': {...}})"
NUMERIC_KINDS = "biuf"
NUMERIC = "a numeric dtype: bool, int, uint or float"
ARRAY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_ARRAYS = 64
# Deflate reaches about 1000:1 on constant data; real arrays (even one-hot labels) stay far below.
MAX_COMPRESSION_RATIO = 200
MAX_CLASSES = 65_536
# The one cap on listed errors (core.errors): a CSV stops collecting once it is reached.
MAX_REPORTED_ERRORS = MAX_ERRORS
_CSV_BATCH = 4096
CHUNK_BYTES = 4 << 20
_ENCRYPTED = 0x1


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
    """A reader's result: array name -> `.npy` path, plus class names of string labels."""

    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    classes: dict[str, list[str]] = dataclasses.field(default_factory=dict)


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
    """Parse and check a `.npy` header: numeric dtype, at least one dimension."""
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
    if not shape:
        raise _invalid(
            where, "A 0-d scalar has no rows.", "an array with at least one dimension", []
        )
    if min(shape) < 0:
        raise _invalid(where, "The shape has a negative dimension.", "sizes >= 0", list(shape))
    return NpyHeader(tuple(shape), fortran, dtype, handle.tell())


def check_dtype(dtype: np.dtype, where: str) -> None:
    """Refuse object (pickled), string, complex, datetime and structured dtypes."""
    if dtype.hasobject:
        raise _invalid(
            where,
            "The array holds pickled Python objects (dtype object); they are never loaded.",
            NUMERIC,
            "object",
        )
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in NUMERIC_KINDS:
        raise _invalid(where, f"The dtype {dtype} is not numeric.", NUMERIC, str(dtype))


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


def read_npz(source: Path, folder: Path, max_bytes: int) -> Arrays:
    """An `.npz` upload: members sized from the central directory, then streamed to `.npy`s."""
    try:
        with zipfile.ZipFile(source) as archive:
            members = _check_members(archive.infolist(), max_bytes)
            result = Arrays()
            for position, (name, info) in enumerate(members):
                target = folder / f"a{position}.npy"
                with archive.open(info) as member:
                    _copy_member(member, info, target, pointer("file", "arrays", name))
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


def _check_members(infos: list[zipfile.ZipInfo], max_bytes: int) -> list[tuple[str, Any]]:
    if not infos:
        raise _invalid("/file", "The .npz archive holds no arrays.", "1 or more arrays", 0)
    if len(infos) > MAX_ARRAYS:
        raise _invalid(
            "/file", "The .npz archive holds too many members.", f"at most {MAX_ARRAYS}", len(infos)
        )
    errors = []
    members = []
    total = 0
    for info in infos:
        name = info.filename.removesuffix(".npy")
        where = pointer("file", "arrays", name)
        total += info.file_size
        if not ARRAY_NAME.fullmatch(name) or not info.filename.endswith(".npy"):
            errors.append(FieldError(where, "Not an array member.", "NAME.npy", info.filename))
        elif any(name == seen for seen, _ in members):
            errors.append(FieldError(where, "The member name repeats.", "unique names", name))
        elif info.flag_bits & _ENCRYPTED:
            errors.append(FieldError(where, "The member is encrypted.", "no encryption", name))
        elif info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            errors.append(
                FieldError(
                    where, "Unsupported compression.", "stored or deflate", info.compress_type
                )
            )
        else:
            errors += _size_errors(info, where, max_bytes)
        members.append((name, info))
    if not errors and total > max_bytes:
        errors.append(
            FieldError(
                "/file",
                f"The members declare {total} bytes uncompressed in all.",
                f"at most {max_bytes} bytes",
                total,
            )
        )
    if errors:
        raise InvalidData("The .npz archive was refused before decompressing it.", errors=errors)
    return members


def _size_errors(info: zipfile.ZipInfo, where: str, max_bytes: int) -> list[FieldError]:
    """What the central directory declares, judged before anything is decompressed."""
    errors = []
    if info.file_size > max_bytes:
        errors.append(
            FieldError(
                where,
                f"The member declares {info.file_size} bytes uncompressed.",
                f"at most {max_bytes} bytes",
                info.file_size,
            )
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > MAX_COMPRESSION_RATIO:
        errors.append(
            FieldError(
                where,
                f"The member expands {ratio:.0f}-fold ({info.compress_size} to "
                f"{info.file_size} bytes); this looks like a zip bomb.",
                f"a compression ratio of at most {MAX_COMPRESSION_RATIO}",
                round(ratio, 1),
            )
        )
    return errors


def _copy_member(member: IO[bytes], info: zipfile.ZipInfo, target: Path, where: str) -> None:
    header = read_npy_header(member, where)
    _check_size(header, info.file_size - header.offset, where)
    budget = header.data_bytes
    with open(target, "wb") as out:
        _write_header(out, header.shape, header.dtype, header.fortran_order)
        while budget:
            chunk = member.read(min(CHUNK_BYTES, budget))
            if not chunk:
                break
            out.write(chunk)
            budget -= len(chunk)
    if budget or member.read(1):
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
        self.numbers: NpyWriter | None = NpyWriter(folder / "labels.f8.npy", (), np.float64)
        self.ids = NpyWriter(folder / "labels.i8.npy", (), np.int64)
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
            self.integer = bool(np.isfinite(values).all() and (values == np.trunc(values)).all())

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
        while chunk := handle.read(CHUNK_BYTES):
            writer.append(convert(np.frombuffer(chunk, dtype=header.dtype)))
    writer.finish()
    source.unlink()


def read_csv(source: Path, folder: Path, label: str) -> Arrays:
    """A CSV with a header row: `label` names the label column -> arrays `x` (float32) and `y`.

    Ragged rows and non-numeric cells are reported by their line in the file (1-based, the header
    is line 1) and their column's header name.
    """
    with open(source, encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(text)
        with _csv_errors(reader):
            header = [cell.strip() for cell in next(reader, [])]
        features = _feature_columns(header, label)
        writer = NpyWriter(folder / "a0.npy", (len(features),), np.dtype(np.float32))
        labels = _Labels(folder)
        try:
            with _csv_errors(reader):
                errors = _read_rows(reader, header, features, label, writer, labels)
        finally:
            writer.finish()
            labels.close()
    if errors:
        errors.sort(key=lambda error: int(error.path.split("/")[3]))
        raise InvalidData(
            f"The CSV has bad cells or rows (at most {MAX_REPORTED_ERRORS} are listed).",
            errors=errors[:MAX_REPORTED_ERRORS],
        )
    if writer.rows == 0:
        raise _invalid("/file", "The CSV has a header but no data rows.", "1 or more rows", 0)
    result = Arrays({"x": writer.path, "y": folder / "a1.npy"})
    classes = labels.write(result.files["y"])
    if classes is not None:
        result.classes["y"] = classes
    return result


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
) -> list[FieldError]:
    """Parse the data rows into `writer` and `labels`; stop once enough errors are known."""
    errors: list[FieldError] = []
    label_index = header.index(label)
    for batch in _csv_batches(reader, header, errors):
        cells = [[row[i] for i in features] for _, row in batch]
        values = _parse_batch(cells, batch, header, features, errors)
        label_cells = [row[label_index].strip() for _, row in batch]
        errors += [
            _cell_error(line, label, "", "The label is empty.")
            for (line, _), cell in zip(batch, label_cells, strict=True)
            if not cell
        ]
        if not errors:
            writer.append(values)
            labels.add(label_cells)
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
    return errors


def _feature_columns(header: list[str], label: str) -> list[int]:
    if not header or any(not name for name in header):
        raise _invalid(
            "/file", "The CSV's first line must name every column.", "a header row", header[:50]
        )
    if len(set(header)) != len(header):
        duplicates = sorted({name for name in header if header.count(name) > 1})
        raise _invalid("/file", "The CSV header repeats column names.", "unique names", duplicates)
    if label not in header:
        raise _invalid(
            "/label",
            f"The CSV has no column named {label!r} for the labels.",
            f"one of {header[:50]}",
            label,
        )
    features = [i for i, name in enumerate(header) if name != label]
    if not features:
        raise _invalid("/file", "The CSV has no feature columns.", "2 or more columns", header)
    return features


def _csv_batches(
    reader: Any, header: list[str], errors: list[FieldError]
) -> Iterator[list[tuple[int, list[str]]]]:
    """Batches of (line number, row) with ragged rows reported and left out; blank lines skipped."""
    batch: list[tuple[int, list[str]]] = []
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            errors.append(
                FieldError(
                    pointer("file", "rows", reader.line_num),
                    f"Line {reader.line_num} has {len(row)} cells but the header has "
                    f"{len(header)}.",
                    f"{len(header)} cells",
                    len(row),
                )
            )
            continue
        batch.append((reader.line_num, row))
        if len(batch) == _CSV_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _parse_batch(
    cells: list[list[str]],
    batch: list[tuple[int, list[str]]],
    header: list[str],
    features: list[int],
    errors: list[FieldError],
) -> np.ndarray:
    try:
        return np.array(cells, dtype=np.float32)
    except ValueError:
        pass
    # The fast path failed: find every bad cell to report it by line and column.
    for (line, row), _ in zip(batch, cells, strict=True):
        for index in features:
            try:
                float(row[index])
            except ValueError:
                errors.append(_cell_error(line, header[index], row[index], "Not a number."))
    return np.empty((0, len(features)), dtype=np.float32)


def _cell_error(line: int, column: str, cell: str, message: str) -> FieldError:
    return FieldError(
        pointer("file", "rows", line, "columns", column), message, "a number", cell[:100]
    )


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
    if not isinstance(value, list):
        raise _invalid(where, "An array is a (nested) list.", "a list", type(value).__name__)
    try:
        values = np.array(value)
    except (ValueError, OverflowError) as error:
        raise _invalid(
            where, f"The nested lists are ragged: {error}", "a rectangular list", None
        ) from None
    if values.dtype.hasobject:
        raise _invalid(
            where,
            "The values are not all numbers, or an integer is outside the 64-bit range.",
            NUMERIC,
            "object",
        )
    if values.ndim == 1 and all(isinstance(item, str) for item in value):
        names = sorted(set(value))
        return np.searchsorted(np.array(names), values).astype(np.int64), names
    if values.dtype.kind == "f":
        # Beyond float32's range a value becomes inf, which the statistics count.
        with np.errstate(over="ignore"):
            values = values.astype(np.float32)
    check_dtype(values.dtype, where)
    if values.ndim == 0 or values.size == 0:
        raise _invalid(where, "The array is empty.", "a non-empty list", values.shape)
    return values, None


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
