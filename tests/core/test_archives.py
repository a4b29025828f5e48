"""Image archives into datasets (core.archives through core.ingest.ingest_file): the layout
Keras reads, the options, and every bad archive refused by member, or skipped and counted."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import datasets
from core.archives import ImageOptions, detect_archive
from core.errors import InsufficientStorage, InvalidData, pointer
from core.ingest import ingest_file
from core.settings import Settings
from core.storage import DataDir, new_id
from tests.support.images import (
    ARCHIVE_FORMATS,
    class_images,
    png,
    tar_with_special,
    write_archive,
    zip_with_symlink,
)

CLASSES = {"cat": 3, "dog": 2, "emu": 4}


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    folder = DataDir(tmp_path / "data")
    folder.ensure()
    return folder


def ingest(
    data: DataDir, source: Path, settings: Settings | None = None, **options: object
) -> dict:
    merged = {**ImageOptions().to_json(), **options}
    return ingest_file(data, new_id(), source, merged, "alice", settings=settings or Settings())


def refused(call, member: str | None = None) -> dict:
    """The one field error of an InvalidData refusal; it names `member` when given."""
    with pytest.raises(InvalidData) as caught:
        call()
    first = caught.value.errors[0].to_dict()
    if member is not None:
        assert first["path"] == pointer("file", "members", member)
        assert member in caught.value.detail
    return first


@pytest.mark.parametrize("archive_format", ARCHIVE_FORMATS)
def test_class_folders_become_x_and_y_in_keras_order(
    data: DataDir, tmp_path: Path, archive_format: str
) -> None:
    files = class_images(CLASSES)
    # Members in an order other than the classes': the ids still follow the sorted names.
    source = write_archive(tmp_path / "a", dict(reversed(files.items())), archive_format)
    assert detect_archive(source) == archive_format
    manifest = ingest(data, source)
    assert manifest["status"] == "ready"
    assert manifest["classes"] == {"y": ["cat", "dog", "emu"]}
    assert manifest["rows"] == 9
    assert manifest["source"]["format"] == archive_format
    assert manifest["skipped"] == {"count": 0, "members": []}
    assert manifest["arrays"]["x"]["shape"] == [9, 4, 4, 3]
    assert manifest["arrays"]["x"]["dtype"] == "uint8"
    x = datasets.open_array(data, manifest["id"], "x", verify=True)
    y = datasets.open_array(data, manifest["id"], "y", verify=True)
    # Each class's images are the shade 10 * its position in the sorted names.
    assert np.array_equal(x[:, 0, 0, 0], 10 * y)
    assert sorted(np.bincount(y).tolist()) == [2, 3, 4]


def test_options_resize_convert_and_crop(data: DataDir, tmp_path: Path) -> None:
    files = {"a/wide.png": png(8, 4, 100), "b/tall.png": png(4, 8, 200)}
    source = write_archive(tmp_path / "a.zip", files, "zip")
    gray = ingest(data, source, image_size=[6, 5], color_mode="grayscale")
    assert gray["arrays"]["x"]["shape"] == [2, 6, 5, 1]
    rgba = ingest(data, source, image_size=[3, 3], color_mode="rgba", crop_to_aspect_ratio=True)
    x = datasets.open_array(data, rgba["id"], "x")
    assert x.shape == (2, 3, 3, 4)
    assert set(np.unique(x[..., 3]).tolist()) == {255}


def test_an_npz_is_not_an_image_archive(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros(3))
    assert detect_archive(path) is None


def truncated_png() -> bytes:
    """A 4x4 PNG of noise cut inside its pixel data."""
    noise = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) * 3 // 4]


def nested_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/1.png", png())
    return buffer.getvalue()


def ppm() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PPM")
    return buffer.getvalue()


# Each bad member beside good images: (member name, content).
BAD_MEMBERS = {
    "corrupt": ("cat/broken.png", truncated_png()),
    "not_an_image": ("cat/notes.png", b"just some text\n" * 10),
    "format_outside_the_allowlist": ("cat/image.ppm", ppm()),
    "nested_archive": ("cat/more.png", nested_zip()),
    "nested_archive_by_name": ("cat/more.tar", b"x" * 600),
    "climbs_out": ("cat/../../evil.png", png()),
    "absolute": ("/etc/evil.png", png()),
    "different_size": ("dog/big.png", png(5, 4)),
}


@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
@pytest.mark.parametrize("archive_format", ["zip", "tar"])
def test_a_bad_member_is_refused_by_name_or_skipped_and_counted(
    data: DataDir, tmp_path: Path, case: str, archive_format: str
) -> None:
    name, content = BAD_MEMBERS[case]
    files = {**class_images(CLASSES), name: content}
    source = write_archive(tmp_path / "a", files, archive_format)
    refused(lambda: ingest(data, source), member=name)
    assert list(data.datasets.iterdir()) == []
    manifest = ingest(data, source, on_bad_image="skip")
    assert manifest["rows"] == 9
    assert manifest["skipped"]["count"] == 1
    assert manifest["skipped"]["members"][0]["member"] == name


def test_a_decompression_bomb_is_refused_before_it_is_decoded(
    data: DataDir, tmp_path: Path
) -> None:
    files = {**class_images(CLASSES), "cat/bomb.png": png(64, 64)}
    source = write_archive(tmp_path / "a.zip", files, "zip")
    settings = Settings(max_image_pixels=1000)
    error = refused(lambda: ingest(data, source, settings), member="cat/bomb.png")
    assert "FITSERVE_MAX_IMAGE_PIXELS" in error["expected"]
    manifest = ingest(data, source, settings, on_bad_image="skip")
    assert manifest["skipped"]["count"] == 1


def test_pillows_own_bomb_guard_is_a_refusal_too(data: DataDir, tmp_path: Path) -> None:
    # Past twice Pillow's limit its open raises before our own check runs.
    buffer = io.BytesIO()
    Image.new("1", (4000, 4000)).save(buffer, "PNG")
    files = {**class_images(CLASSES), "cat/bomb.png": buffer.getvalue()}
    source = write_archive(tmp_path / "a.zip", files, "zip")
    settings = Settings(max_image_pixels=2_000_000)
    error = refused(lambda: ingest(data, source, settings), member="cat/bomb.png")
    assert "decompression bomb" in error["message"]


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
)
def test_links_devices_and_fifos_in_a_tar_are_refused(
    data: DataDir, tmp_path: Path, kind: bytes
) -> None:
    source = tar_with_special(tmp_path / "a.tar", class_images(CLASSES), "cat/special.png", kind)
    error = refused(lambda: ingest(data, source), member="cat/special.png")
    # Refused for what it is, before anything is read through it.
    assert "member is never an image" in error["message"]
    assert ingest(data, source, on_bad_image="skip")["skipped"]["count"] == 1


def test_a_symlink_in_a_zip_is_refused(data: DataDir, tmp_path: Path) -> None:
    source = zip_with_symlink(tmp_path / "a.zip", class_images(CLASSES), "cat/link.png")
    error = refused(lambda: ingest(data, source), member="cat/link.png")
    assert error["message"] == "A symlink member is never an image."


def test_a_repeated_name_is_refused(data: DataDir, tmp_path: Path) -> None:
    source = write_archive(tmp_path / "a.tar", class_images(CLASSES), "tar")
    with tarfile.open(source, "a") as archive:
        info = tarfile.TarInfo("cat/0000.png")
        content = png(4, 4, 99)
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    refused(lambda: ingest(data, source), member="cat/0000.png")


def test_dotfiles_and_files_beside_the_class_folders_are_ignored(
    data: DataDir, tmp_path: Path
) -> None:
    files = {
        **class_images(CLASSES),
        "README.txt": b"about",
        "cat/.DS_Store": b"\x00",
        "__MACOSX/cat/._0000.png": b"\x00",
    }
    manifest = ingest(data, write_archive(tmp_path / "a.zip", files, "zip"))
    assert manifest["classes"] == {"y": ["cat", "dog", "emu"]}
    assert manifest["rows"] == 9


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"max_archive_members": 5}, "FITSERVE_MAX_ARCHIVE_MEMBERS"),
        ({"max_archive_classes": 2}, "FITSERVE_MAX_ARCHIVE_CLASSES"),
        ({"max_dataset_bytes": 200}, "FITSERVE_MAX_DATASET_BYTES"),
        ({"max_dataset_bytes": 9 * 4 * 4 * 3 - 1}, "FITSERVE_MAX_DATASET_BYTES"),
    ],
)
def test_caps_refuse_the_whole_archive_naming_the_setting(
    data: DataDir, tmp_path: Path, changes: dict, setting: str
) -> None:
    source = write_archive(tmp_path / "a.zip", class_images(CLASSES), "zip")
    error = refused(lambda: ingest(data, source, Settings(**changes), on_bad_image="skip"))
    assert error["path"] == "/file"
    assert setting in error["expected"]
    assert list(data.datasets.iterdir()) == []


def test_the_keys_storage_quota_is_checked_before_expanding(data: DataDir, tmp_path: Path) -> None:
    source = write_archive(tmp_path / "a.zip", class_images(CLASSES), "zip")
    with pytest.raises(InsufficientStorage, match="FITSERVE_STORAGE_QUOTA_BYTES"):
        ingest(data, source, Settings(storage_quota_bytes=100))
    assert list(data.datasets.iterdir()) == []


def test_an_archive_without_class_folders_is_refused(data: DataDir, tmp_path: Path) -> None:
    source = write_archive(tmp_path / "a.zip", {"1.png": png(), "2.png": png()}, "zip")
    error = refused(lambda: ingest(data, source))
    assert "class" in error["message"]


def test_a_damaged_archive_is_refused(data: DataDir, tmp_path: Path) -> None:
    source = write_archive(tmp_path / "a.tar.gz", class_images(CLASSES), "tar.gz")
    source.write_bytes(source.read_bytes()[:200])
    with pytest.raises(InvalidData):
        ingest(data, source)


def test_a_member_larger_than_any_allowed_image_is_never_read(
    data: DataDir, tmp_path: Path
) -> None:
    settings = Settings(max_image_pixels=1000)
    files = {**class_images(CLASSES), "cat/huge.png": bytes(4000 + (1 << 20) + 1)}
    source = write_archive(tmp_path / "a.tar", files, "tar")
    error = refused(lambda: ingest(data, source, settings), member="cat/huge.png")
    assert "FITSERVE_MAX_IMAGE_PIXELS" in error["message"]
