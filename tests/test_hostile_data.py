"""Hostile data files: whatever a header or a label declares, a source refuses it in one line before allocating it."""

from __future__ import annotations

import gzip
import io
import math
import struct
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compress.cli import main
from compress.data import load_dataset, sources
from compress.errors import CompressError

SMALL_MEMORY = 8 << 20  # pretended physical memory for the budget tests: 1 MiB for data
MAX_TRACED = 8 << 20  # what a refused load may allocate at most (the chunk reads of IDX files are 1 MiB)


def refused(spec: str, match: str) -> str:
    """Load ``spec`` expecting a one-line CompressError matching ``match``, no warning, and little allocated."""
    tracemalloc.start()
    try:
        with warnings.catch_warnings(), pytest.raises(CompressError, match=match) as info:
            warnings.simplefilter("error")  # the error line is all the user sees
            load_dataset(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert peak < MAX_TRACED, f"{peak} bytes allocated before refusing"
    return message


@pytest.fixture
def small_memory(monkeypatch):
    monkeypatch.setattr(sources, "memory_bytes", lambda: SMALL_MEMORY)


# --- npz ------------------------------------------------------------------------------------


def npz_arrays(**arrays) -> dict[str, np.ndarray]:
    defaults = {
        "x_train": np.zeros((4, 3), np.float32),
        "y_train": np.array([0, 1, 0, 1]),
        "x_test": np.zeros((2, 3), np.float32),
        "y_test": np.array([0, 1]),
    }
    return {**defaults, **arrays}


@pytest.mark.parametrize(
    "y_train",
    [np.array([0, 1, 0, 10**9]), np.array([0, 1, 0, 2**63], np.uint64), np.array([0.0, 1.0, 0.0, 1e300])],
    ids=["int", "uint64-beyond-int64", "float"],
)
def test_npz_huge_label_refused(tmp_path, y_train):
    path = tmp_path / "d.npz"
    np.savez(path, **npz_arrays(y_train=y_train))
    refused(f"npz:{path}", f"y_train holds label {int(y_train.max())}, beyond the {sources.MAX_CLASSES} classes")


def test_npz_too_many_label_names_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, **npz_arrays(labels=np.zeros(sources.MAX_CLASSES + 1, np.uint8)))
    refused(f"npz:{path}", f"labels names {sources.MAX_CLASSES + 1} classes, more than the {sources.MAX_CLASSES}")


def test_npz_huge_label_through_cli(tmp_path, capsys):
    path = tmp_path / "d.npz"
    np.savez(path, **npz_arrays(y_test=np.array([0, 10**9])))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", f"npz:{path}", "--out", str(tmp_path / "t.pt")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "y_test holds label 1000000000" in lines[0]
    assert not (tmp_path / "t.pt").exists()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_npz_header_declaring_more_than_member_holds(tmp_path):
    """A member whose header declares 8 TB (10^6 x 10^6 float64) followed by 16 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, array in npz_arrays().items():
            archive.writestr(f"{key}.npy", header.getvalue() + bytes(16) if key == "x_train" else npy_bytes(array))
    refused(f"npz:{path}", r"x_train declares shape \(1000000, 1000000\) of float64 \(7.3 TiB\) but its member holds")


def test_npz_zip_bomb_over_memory_budget(tmp_path, small_memory):
    """Honest headers, but a small compressed archive that expands past the memory budget."""
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, **npz_arrays(x_train=np.zeros((4, 1 << 19), np.uint8)))
    assert path.stat().st_size < 64 << 10
    refused(f"npz:{path}", r"x_train of shape \(4, 524288\) and dtype uint8 would take 2.0 MiB of memory, over the")


def test_npz_member_that_is_not_an_array(tmp_path):
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in npz_arrays().items():
            archive.writestr(f"{key}.npy", b"not an array" if key == "y_test" else npy_bytes(array))
    refused(f"npz:{path}", "y_test.npy is not a NumPy array")


def test_npz_object_array_refused(tmp_path):
    path = tmp_path / "d.npz"
    objects = np.array([{}, {}], dtype=object)
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in npz_arrays().items():
            archive.writestr(f"{key}.npy", npy_bytes(objects if key == "y_test" else array))
    refused(f"npz:{path}", "y_test holds Python objects")


# --- image folders --------------------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels and holds none of them."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def image_folder(root: Path, first: bytes | None = None, later: bytes | None = None, count: int = 3) -> str:
    """train/a/ and test/a/ with ``count`` 4x4 images each; ``first`` and ``later`` replace train/a's first and last."""
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        for i in range(count):
            Image.new("L", (4, 4), i).save(root / split / "a" / f"{i}.png")
    for name, data in (("0.png", first), (f"{count - 1}.png", later)):
        if data is not None:
            (root / "train" / "a" / name).write_bytes(data)
    return f"folder:{root}"


def test_crafted_png_header_is_read_as_declared(tmp_path):
    (tmp_path / "x.png").write_bytes(png_header(300, 200))
    with Image.open(tmp_path / "x.png") as img:
        assert img.size == (300, 200)


def test_first_image_over_pixel_cap(tmp_path):
    side = math.isqrt(sources.MAX_IMAGE_PIXELS) + 1
    spec = image_folder(tmp_path, first=png_header(side, side))
    refused(spec, rf"train/a/0.png is {side}x{side} pixels, more than the {sources.MAX_IMAGE_PIXELS}")


def test_first_image_beyond_pillow_bomb_limit(tmp_path):
    spec = image_folder(tmp_path, first=png_header(60000, 60000))
    refused(spec, "train/a/0.png is too large to decode .*; downscale the images")


def test_later_image_over_pixel_cap(tmp_path):
    """Over the cap and over Pillow's warning threshold, under its error threshold: one error, no warning."""
    side = math.isqrt(Image.MAX_IMAGE_PIXELS) + 1
    spec = image_folder(tmp_path, later=png_header(side, side))
    refused(spec, f"train/a/2.png is {side}x{side} pixels")


def test_target_size_times_count_over_memory_budget(tmp_path, small_memory):
    """Small images, each under the pixel cap, but every one is brought to the size asked for."""
    spec = image_folder(tmp_path, count=2) + "?size=1000x1000"
    refused(spec, r"4 images of 1000x1000 pixels and 1 channel would take 3.8 MiB of memory")


# --- IDX ------------------------------------------------------------------------------------

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_dir(root: Path, train_images: bytes, gz: bool = False) -> str:
    """Valid small IDX files, but ``train_images`` as the raw bytes of train-images."""
    root.mkdir()
    images = bytes([0, 0, 8, 3]) + struct.pack(">III", 2, 2, 2) + bytes(8)
    labels = bytes([0, 0, 8, 1]) + struct.pack(">I", 2) + bytes(2)
    for name, data in zip(IDX_NAMES, (train_images, labels, images, labels)):
        (root / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    return f"mnist:{root}"


def idx_images_header(count: int, rows: int, cols: int) -> bytes:
    return bytes([0, 0, 8, 3]) + struct.pack(">III", count, rows, cols)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_header_declaring_more_than_memory(tmp_path, gz):
    spec = idx_dir(tmp_path / "m", idx_images_header(2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(64), gz)
    refused(spec, r"train-images-idx3-ubyte(.gz)?: images of shape \(4294967295, 4294967295, 4294967295\) would take")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_header_declaring_more_than_file_holds(tmp_path, gz):
    """60000 28x28 images declared (47 MB, within the budget), 64 bytes present: read, not allocated."""
    spec = idx_dir(tmp_path / "m", idx_images_header(60000, 28, 28) + bytes(64), gz)
    refused(spec, "is truncated: its header promises 47040000 bytes of data but only 64 follow")


def test_idx_gzip_bomb_over_memory_budget(tmp_path, small_memory):
    """Honest header, but a small .gz that expands past the memory budget."""
    spec = idx_dir(tmp_path / "m", idx_images_header(2048, 32, 32) + bytes(2048 * 32 * 32), gz=True)
    assert (tmp_path / "m" / "train-images-idx3-ubyte.gz").stat().st_size < 64 << 10
    refused(spec, r"images of shape \(2048, 32, 32\) would take 2.0 MiB of memory, over the 1.0 MiB left")
