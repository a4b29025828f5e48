"""Image archives (.zip, .tar, .tar.gz) and image folders of class folders -> `x` and `y`.

The layout `keras.utils.image_dataset_from_directory` reads: the top-level folders are the
classes, in sorted order; every image below one is a row. `x` is uint8 (N, H, W, C), `y` ids.

Two passes. The first lists the members from the archive's directory and refuses (or, with
`on_bad_image=skip`, skips and counts) what is never an image: absolute or `..` paths, links,
devices and FIFOs, repeated names; the member and class counts and the declared bytes are capped
before anything is decompressed. The second decodes one member at a time with Pillow, limited to
IMAGE_FORMATS and to `max_image_pixels` (decompression bombs), and appends its row to the `.npy`
file on disk, so memory holds one image whatever the archive's size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import stat
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import FieldError, InvalidData, InvalidRequest, pointer
from core.integers import read_int
from core.readers import ZIP_MAGICS, Arrays, CpuBudget, NpyWriter, Problems

IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
COLOR_MODES = {"grayscale": ("L", 1), "rgb": ("RGB", 3), "rgba": ("RGBA", 4)}
ON_BAD_IMAGE = ("refuse", "skip")
MAX_SIDE = 1 << 15
GZIP_MAGIC = b"\x1f\x8b"
# What a member that is itself an archive starts with (tar's magic sits at offset 257).
NESTED_MAGICS = (*ZIP_MAGICS, GZIP_MAGIC, b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c", b"Rar!")
TAR_MAGIC_OFFSET = 257
ZIP_LOCAL_HEADER_BYTES = 30
# What detect_archive reads: a tar header's magic, or a zip's first local header and its name.
HEAD_BYTES = 1024
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".npz")
# macOS adds these to zips it makes; like dotfiles they are never images of a class.
IGNORED_FOLDERS = ("__MACOSX",)
SKIPPED_LISTED = 50


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """The options `image_dataset_from_directory` users know, plus what to do with a bad image."""

    image_size: tuple[int, int] | None = None
    color_mode: str = "rgb"
    crop_to_aspect_ratio: bool = False
    on_bad_image: str = "refuse"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "image_size": self.image_size and list(self.image_size)}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ImageOptions:
        size = document.get("image_size")
        return cls(
            image_size=None if size is None else (int(size[0]), int(size[1])),
            color_mode=document.get("color_mode", "rgb"),
            crop_to_aspect_ratio=bool(document.get("crop_to_aspect_ratio", False)),
            on_bad_image=document.get("on_bad_image", "refuse"),
        )


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    """Caps checked before decoding: members, classes, declared bytes, pixels per image; and
    `check_room`, which refuses what the decoded rows would take when the key's quota or the
    disk cannot hold it."""

    max_members: int
    max_classes: int
    max_bytes: int
    max_image_pixels: int
    check_room: Callable[[int], None] = lambda expanded: None

    @property
    def max_member_bytes(self) -> int:
        """The most bytes a member may declare: an uncompressed RGBA image of the most pixels,
        plus room for its headers; each member is read whole, so this bounds memory too."""
        return 4 * self.max_image_pixels + (1 << 20)


def parse_image_options(raw: Mapping[str, Any]) -> ImageOptions:
    """Image options from a multipart form (strings) or a JSON body (also lists and booleans);
    InvalidRequest naming each bad field by its pointer."""
    errors: list[FieldError] = []
    size = _image_size(raw.get("image_size"), errors)
    color_mode = raw.get("color_mode", "rgb")
    if color_mode not in COLOR_MODES:
        errors.append(
            FieldError("/color_mode", "Unknown color mode.", " | ".join(COLOR_MODES), color_mode)
        )
    crop = _boolean(raw.get("crop_to_aspect_ratio", False), "/crop_to_aspect_ratio", errors)
    on_bad = raw.get("on_bad_image", "refuse")
    if on_bad not in ON_BAD_IMAGE:
        errors.append(
            FieldError("/on_bad_image", "Unknown choice.", " | ".join(ON_BAD_IMAGE), on_bad)
        )
    if errors:
        raise InvalidRequest("The image options are invalid.", errors=errors)
    return ImageOptions(size, color_mode, crop, on_bad)


def _image_size(value: Any, errors: list[FieldError]) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else value
    sides = (
        [read_int(str(part).strip(), 1, MAX_SIDE) for part in parts]
        if isinstance(parts, list) and all(isinstance(p, str | int) for p in parts)
        else []
    )
    if len(sides) != 2 or None in sides or any(isinstance(p, bool) for p in parts):
        errors.append(
            FieldError(
                "/image_size",
                "image_size is the height and width every image is resized to.",
                f'"H,W" (or [H, W]), each from 1 to {MAX_SIDE}',
                str(value)[:100],
            )
        )
        return None
    return int(sides[0] or 0), int(sides[1] or 0)


def _boolean(value: Any, where: str, errors: list[FieldError]) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    errors.append(FieldError(where, "Not a boolean.", "true | false", str(value)[:100]))
    return False


def detect_archive(path: Path) -> str | None:
    """`zip`, `tar` or `tar.gz` from the content; None for anything else, an `.npz` included
    (a zip whose members are all `.npy` arrays)."""
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    if head.startswith(ZIP_MAGICS):
        # numpy.savez writes only `<name>.npy` members: the first one's name tells, read from
        # its local header, without loading a directory that may list a million images.
        return None if _first_zip_member(head).endswith(b".npy") else "zip"
    if _is_tar_header(head):
        return "tar"
    if head.startswith(GZIP_MAGIC):
        import gzip

        with contextlib.suppress(OSError, EOFError, zlib.error), gzip.open(path) as inner:
            if _is_tar_header(inner.read(TAR_MAGIC_OFFSET + 8)):
                return "tar.gz"
    return None


def _first_zip_member(head: bytes) -> bytes:
    """The name in the zip's first local file header (empty if there is none)."""
    if not head.startswith(b"PK\x03\x04") or len(head) < ZIP_LOCAL_HEADER_BYTES:
        return b""
    (name_length,) = struct.unpack_from("<H", head, 26)
    return head[ZIP_LOCAL_HEADER_BYTES : ZIP_LOCAL_HEADER_BYTES + name_length]


def _is_tar_header(head: bytes) -> bool:
    return head[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + 5] == b"ustar"


@dataclasses.dataclass(frozen=True)
class _Member:
    """One entry of an archive or folder: its name as stored, what it is, its declared size and
    how to find it again (`key`)."""

    name: str
    kind: str  # file, dir, symlink, hardlink, device, fifo, other
    size: int
    key: Any


class _Container:
    """The members of an archive or a folder, listed then opened one at a time."""

    def members(self) -> Iterator[_Member]:
        raise NotImplementedError

    def read(self, member: _Member) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Release the archive's file."""


class _Zip(_Container):
    def __init__(self, path: Path) -> None:
        self.archive = zipfile.ZipFile(path)

    def members(self) -> Iterator[_Member]:
        for info in self.archive.infolist():
            # Unix file types sit in the high half of the external attributes when the
            # archiver set them; many leave only the permission bits.
            file_type = stat.S_IFMT(info.external_attr >> 16)
            if info.is_dir():
                kind = "dir"
            elif file_type in (0, stat.S_IFREG):
                kind = "file"
            else:
                kind = _FOLDER_KINDS.get(file_type, "other")
            yield _Member(info.filename, kind, info.file_size, info)

    def read(self, member: _Member) -> bytes:
        with self.archive.open(member.key) as handle:
            return _read_at_most(handle, member.size)

    def close(self) -> None:
        self.archive.close()


class _Tar(_Container):
    KINDS = {
        tarfile.REGTYPE: "file",
        tarfile.AREGTYPE: "file",
        tarfile.CONTTYPE: "file",
        tarfile.DIRTYPE: "dir",
        tarfile.SYMTYPE: "symlink",
        tarfile.LNKTYPE: "hardlink",
        tarfile.CHRTYPE: "device",
        tarfile.BLKTYPE: "device",
        tarfile.FIFOTYPE: "fifo",
    }

    def __init__(self, path: Path, compressed: bool) -> None:
        self.archive = tarfile.open(path, mode="r:gz" if compressed else "r:")  # noqa: SIM115

    def members(self) -> Iterator[_Member]:
        while (info := self.archive.next()) is not None:
            yield _Member(info.name, self.KINDS.get(info.type, "other"), info.size, info)

    def read(self, member: _Member) -> bytes:
        handle = self.archive.extractfile(member.key)
        if handle is None:
            raise OSError("not a regular file")
        with handle:
            return _read_at_most(handle, member.size)

    def close(self) -> None:
        self.archive.close()


class _Folder(_Container):
    """A folder on the box (an import), walked without following links; files open with
    O_NOFOLLOW, so a file swapped for a link after the listing is refused too."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def members(self) -> Iterator[_Member]:
        for folder, subfolders, files in os.walk(self.root, followlinks=False):
            subfolders.sort()
            for name in sorted(subfolders) + sorted(files):
                path = Path(folder) / name
                relative = path.relative_to(self.root).as_posix()
                mode = path.lstat().st_mode
                if stat.S_ISDIR(mode):
                    yield _Member(relative + "/", "dir", 0, path)
                else:
                    kind = _FOLDER_KINDS.get(stat.S_IFMT(mode), "other")
                    yield _Member(relative, kind, path.lstat().st_size, path)

    def read(self, member: _Member) -> bytes:
        fd = os.open(member.key, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            return _read_at_most(handle, member.size)


_FOLDER_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "device",
    stat.S_IFBLK: "device",
    stat.S_IFIFO: "fifo",
}


def _read_at_most(handle: IO[bytes], size: int) -> bytes:
    """The member's bytes; more than it declared is a damaged archive, not a bigger image."""
    content = handle.read(size + 1)
    if len(content) > size:
        raise OSError("the member holds more bytes than it declares")
    return content


def _open_container(source: Path, archive_format: str) -> _Container:
    if archive_format == "folder":
        return _Folder(source)
    if archive_format == "zip":
        return _Zip(source)
    return _Tar(source, compressed=archive_format == "tar.gz")


@dataclasses.dataclass
class ImageArrays:
    """`read_images`' result: the arrays, and the members skipped with `on_bad_image=skip`."""

    arrays: Arrays
    skipped: dict[str, Any]


class _BadMembers:
    """Members refused, or skipped and counted: one place decides which, by `on_bad_image`."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.problems = Problems()
        self.skipped = 0
        self.listed: list[dict[str, str]] = []

    def add(self, name: str, message: str, expected: str) -> None:
        if self.skip:
            self.skipped += 1
            if len(self.listed) < SKIPPED_LISTED:
                self.listed.append({"member": name[:1024], "message": message})
            return
        self.problems.add(pointer("file", "members", name[:1024]), message, expected, name[:1024])

    def refuse_if_any(self) -> None:
        if self.problems:
            first = self.problems.errors[0]
            raise self.problems.refusal(f"The archive was refused at member {first.received!r}.")

    def summary(self) -> dict[str, Any]:
        return {"count": self.skipped, "members": self.listed}


def read_images(
    source: Path,
    archive_format: str,
    folder: Path,
    options: ImageOptions,
    limits: ArchiveLimits,
    budget: CpuBudget,
) -> ImageArrays:
    """Decode the archive (or folder) at `source` into `folder`/a0.npy (x) and a1.npy (y)."""
    bad = _BadMembers(options.on_bad_image == "skip")
    try:
        container = _open_container(source, archive_format)
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
        raise _damaged(error) from None
    try:
        images, classes = _list_members(container, limits, bad, budget)
        bad.refuse_if_any()
        arrays = _decode_all(container, images, classes, folder, options, limits, bad, budget)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise _damaged(error) from None
    finally:
        container.close()
    return ImageArrays(arrays, bad.summary())


def _damaged(error: BaseException) -> InvalidData:
    message = f"The archive is damaged or not a .zip, .tar or .tar.gz: {error}."
    return InvalidData(
        message, errors=[FieldError("/file", message, ".zip, .tar or .tar.gz", None)]
    )


def _list_members(
    container: _Container, limits: ArchiveLimits, bad: _BadMembers, budget: CpuBudget
) -> tuple[list[tuple[_Member, str]], list[str]]:
    """The image members with their class, and the sorted class names; the caps checked."""
    images: list[tuple[_Member, str]] = []
    classes: set[str] = set()
    seen: set[str] = set()
    declared = 0
    for count, member in enumerate(container.members(), start=1):
        if count % 1024 == 0:
            budget.check()
        if count > limits.max_members:
            raise _refused_cap(
                f"The archive holds more than {limits.max_members} members.",
                f"at most {limits.max_members} members (FITSERVE_MAX_ARCHIVE_MEMBERS)",
                count,
            )
        parts = _checked_parts(member, bad)
        if parts is None:
            continue
        name = "/".join(parts)
        if name in seen and member.kind != "dir":
            bad.add(member.name, "The name repeats an earlier member.", "unique member names")
            continue
        seen.add(name)
        if any(part.startswith(".") or part in IGNORED_FOLDERS for part in parts):
            continue
        if member.kind == "dir":
            classes.add(parts[0])
            continue
        if member.kind != "file":
            bad.add(member.name, f"A {member.kind} member is never an image.", "regular files")
            continue
        if len(parts) < 2:
            # A file beside the class folders belongs to no class; Keras ignores it too.
            continue
        classes.add(parts[0])
        if member.size > limits.max_member_bytes:
            bad.add(
                member.name,
                f"The member declares {member.size} bytes, more than an image within "
                "FITSERVE_MAX_IMAGE_PIXELS takes.",
                f"at most {limits.max_member_bytes} bytes",
            )
            continue
        declared += member.size
        images.append((member, parts[0]))
    _check_counts(images, classes, declared, limits)
    return images, sorted(classes)


def _checked_parts(member: _Member, bad: _BadMembers) -> list[str] | None:
    """The member's path components, or None (and a bad member) for `..` or absolute paths."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or PurePosixPath(name).is_absolute() or _drive(name):
        bad.add(member.name, "The member's path is absolute.", "paths relative to the archive")
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        bad.add(member.name, "The member's path climbs out with '..'.", "paths without '..'")
        return None
    return parts or None


def _drive(name: str) -> bool:
    return len(name) > 1 and name[1] == ":" and name[0].isalpha()


def _check_counts(
    images: list[tuple[_Member, str]], classes: set[str], declared: int, limits: ArchiveLimits
) -> None:
    if len(classes) > limits.max_classes:
        raise _refused_cap(
            f"The archive has {len(classes)} class folders.",
            f"at most {limits.max_classes} classes (FITSERVE_MAX_ARCHIVE_CLASSES)",
            len(classes),
        )
    if declared > limits.max_bytes:
        raise _refused_cap(
            f"The images declare {declared} bytes uncompressed, more than a dataset may hold.",
            f"at most {limits.max_bytes} bytes (FITSERVE_MAX_DATASET_BYTES)",
            declared,
        )
    if not images:
        raise _refused_cap(
            "The archive holds no images in class folders; put each class's images in a "
            "top-level folder named after the class.",
            "class_a/1.png, class_b/2.png, ...",
            0,
        )


def _refused_cap(message: str, expected: str, received: Any) -> InvalidData:
    return InvalidData(message, errors=[FieldError("/file", message, expected, received)])


def _decode_all(
    container: _Container,
    images: list[tuple[_Member, str]],
    classes: list[str],
    folder: Path,
    options: ImageOptions,
    limits: ArchiveLimits,
    bad: _BadMembers,
    budget: CpuBudget,
) -> Arrays:
    """Decode each image in archive order, appending its row to x and its class id to y."""
    ids = {name: position for position, name in enumerate(classes)}
    mode, _ = COLOR_MODES[options.color_mode]
    writer: NpyWriter | None = None
    labels: list[int] = []
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    try:
        for member, class_name in images:
            budget.check()
            pixels = _decode(container, member, mode, options, limits, bad)
            if pixels is None:
                continue
            if writer is None:
                _check_expanded_size(len(images), pixels.nbytes, limits)
                writer = NpyWriter(folder / "a0.npy", pixels.shape, np.dtype(np.uint8))
            elif pixels.shape != writer.row_shape:
                bad.add(
                    member.name,
                    f"The image is {pixels.shape[1]}x{pixels.shape[0]} (WxH) but the first was "
                    f"{writer.row_shape[1]}x{writer.row_shape[0]}; give image_size to resize "
                    "them all.",
                    "images of one size, or the image_size option",
                )
                bad.refuse_if_any()
                continue
            writer.append(pixels[np.newaxis])
            labels.append(ids[class_name])
    finally:
        if writer is not None:
            writer.finish()
    if writer is None or not labels:
        raise _refused_cap("No image in the archive could be read.", "1 or more images", 0)
    np.save(folder / "a1.npy", np.array(labels, dtype=np.int64), allow_pickle=False)
    return Arrays({"x": writer.path, "y": folder / "a1.npy"}, {"y": classes})


def _check_expanded_size(count: int, row_bytes: int, limits: ArchiveLimits) -> None:
    """The decoded rows, judged by their absolute size against the dataset cap."""
    total = count * row_bytes
    if total > limits.max_bytes:
        raise _refused_cap(
            f"{count} images of {row_bytes} bytes decoded would take {total} bytes, more than a "
            "dataset may hold; a smaller image_size makes them fit.",
            f"at most {limits.max_bytes} bytes (FITSERVE_MAX_DATASET_BYTES)",
            total,
        )
    limits.check_room(total)


def _decode(
    container: _Container,
    member: _Member,
    mode: str,
    options: ImageOptions,
    limits: ArchiveLimits,
    bad: _BadMembers,
) -> np.ndarray | None:
    """One member as an H x W x C uint8 array, or None when it is bad and skipped (refused: the
    InvalidData propagates)."""
    try:
        content = container.read(member)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError) as error:
        return _bad(bad, member, f"The member cannot be read: {error}.", "a readable member")
    if _is_nested_archive(member.name, content):
        return _bad(bad, member, "The member is an archive itself.", "images, not archives")
    try:
        with warnings.catch_warnings():
            # A DecompressionBombWarning is a refusal here, like the error past twice the limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content), formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if width * height > limits.max_image_pixels:
                    return _bomb(bad, member, width * height, limits)
                return _to_array(image, mode, options)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return _bomb(bad, member, None, limits)
    except UnidentifiedImageError:
        return _bad(
            bad, member, "The member is not an image Pillow reads.", ", ".join(IMAGE_FORMATS)
        )
    except (OSError, ValueError, SyntaxError, EOFError, zlib.error) as error:
        return _bad(bad, member, f"The image is corrupt: {error}.", "a complete image")


def _bad(bad: _BadMembers, member: _Member, message: str, expected: str) -> np.ndarray | None:
    """Refuse the member (raises), or count it skipped: None, no row."""
    bad.add(member.name, message, expected)
    bad.refuse_if_any()
    return None


def _bomb(
    bad: _BadMembers, member: _Member, pixels: int | None, limits: ArchiveLimits
) -> np.ndarray | None:
    size = "" if pixels is None else f" of {pixels} pixels"
    return _bad(
        bad,
        member,
        f"The image{size} is a possible decompression bomb.",
        f"at most {limits.max_image_pixels} pixels (FITSERVE_MAX_IMAGE_PIXELS)",
    )


def _is_nested_archive(name: str, content: bytes) -> bool:
    lowered = name.lower()
    return (
        lowered.endswith(ARCHIVE_SUFFIXES)
        or content.startswith(NESTED_MAGICS)
        or _is_tar_header(content[: TAR_MAGIC_OFFSET + 8])
    )


def _to_array(image: Image.Image, mode: str, options: ImageOptions) -> np.ndarray:
    """Decode, convert to the color mode, crop and resize as Keras would (bilinear)."""
    image.load()
    converted = image.convert(mode)
    if options.image_size is not None:
        height, width = options.image_size
        box = _crop_box(converted.size, width, height) if options.crop_to_aspect_ratio else None
        converted = converted.resize((width, height), Image.Resampling.BILINEAR, box=box)
    pixels = np.asarray(converted, dtype=np.uint8)
    return pixels if pixels.ndim == 3 else pixels[..., np.newaxis]


def _crop_box(size: tuple[int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """The centred box of the target's aspect ratio, as Keras' `crop_to_aspect_ratio` takes."""
    source_width, source_height = size
    crop_width = min(source_width, int(source_height * width / height))
    crop_height = min(source_height, int(source_width * height / width))
    left = (source_width - crop_width) // 2
    top = (source_height - crop_height) // 2
    return left, top, left + crop_width, top + crop_height
