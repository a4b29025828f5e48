"""Image archives made in the tests: tiny PNGs in class folders, as .zip, .tar or .tar.gz, and
members no archive of images should hold (links, devices, FIFOs, paths that climb out)."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

ARCHIVE_FORMATS = ("zip", "tar", "tar.gz")


def png(width: int = 4, height: int = 4, value: int = 0, mode: str = "RGB") -> bytes:
    """A PNG of one colour (`value` in every channel)."""
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = np.full((height, width, channels), value, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue()


def class_images(counts: Mapping[str, int], width: int = 4, height: int = 4) -> dict[str, bytes]:
    """`counts[name]` PNGs in folder `name`, each class a shade of its own (class i: 10 * i)."""
    return {
        f"{name}/{index:04d}.png": png(width, height, 10 * position)
        for position, (name, count) in enumerate(sorted(counts.items()))
        for index in range(count)
    }


def write_archive(path: Path, files: Mapping[str, bytes], archive_format: str) -> Path:
    """`files` (name -> content) as a .zip, .tar or .tar.gz at `path`."""
    if archive_format == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in files.items():
                archive.writestr(name, content)
        return path
    mode = "w:gz" if archive_format == "tar.gz" else "w"
    with tarfile.open(path, mode) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path


def tar_with_special(path: Path, files: Mapping[str, bytes], name: str, kind: bytes) -> Path:
    """A .tar of `files` plus a member `name` of tar type `kind` (SYMTYPE, LNKTYPE, CHRTYPE,
    FIFOTYPE), pointing at the first file where it is a link."""
    write_archive(path, files, "tar")
    with tarfile.open(path, "a") as archive:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = next(iter(files))
        archive.addfile(info)
    return path


def zip_with_symlink(path: Path, files: Mapping[str, bytes], name: str) -> Path:
    """A .zip of `files` plus `name` stored as a symlink (Unix mode in the external attributes)."""
    write_archive(path, files, "zip")
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo(name)
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    return path
