"""folder:DIR options: one size unless ?size=WxH (fit crop, pad or stretch), and the channel order."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compress.data import load_dataset, sources
from compress.data.sources import read_source, source_location
from compress.errors import CompressError


def save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def half_white(width: int = 40, height: int = 20) -> np.ndarray:
    """A grey image, white on its left half, black on its right."""
    pixels = np.zeros((height, width), np.uint8)
    pixels[:, : width // 2] = 255
    return pixels


def folder(root: Path, train: list[np.ndarray], test: list[np.ndarray] | None = None) -> Path:
    """train/a/<i>.png and test/a/<i>.png from the given pixel arrays (test defaults to train)."""
    for split, images in (("train", train), ("test", train if test is None else test)):
        for i, pixels in enumerate(images):
            save(root / split / "a" / f"{i}.png", pixels)
    return root


def refused(spec: str, *parts: str) -> str:
    with pytest.raises(CompressError) as info:
        read_source(spec)
    message = str(info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels and holds none of them."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


# --- one size ------------------------------------------------------------------------------


def test_same_size_folder_read_as_stored(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (4, 6), dtype=np.uint8) for _ in range(3)]
    root = folder(tmp_path / "d", images)
    raw = read_source(f"folder:{root}")
    assert raw.name == "folder" and raw.labels == ["a"] and raw.scale == 1 / 255
    assert raw.x_train.shape == (3, 1, 4, 6) and raw.x_train.dtype == np.uint8
    np.testing.assert_array_equal(raw.x_train[:, 0], np.stack(images))
    assert raw.files == [str(root / split / "a" / f"{i}.png") for split in ("train", "test") for i in range(3)]
    same = read_source(f"folder:{root}?size=6x4")  # the images' own size changes nothing
    np.testing.assert_array_equal(same.x_train, raw.x_train)
    assert same.files == raw.files and same.name == "folder"


def test_mixed_sizes_refused_naming_two_files(tmp_path):
    root = folder(tmp_path / "d", [half_white(6, 4)], [half_white(6, 4), half_white(8, 8)])
    refused(f"folder:{root}", "train/a/0.png is 6x4", "test/a/1.png is 8x8", "?size=")


def test_memory_budget_uses_final_size_before_decoding(tmp_path, monkeypatch):
    root = folder(tmp_path / "d", [half_white(4, 4)])
    monkeypatch.setattr(sources, "memory_bytes", lambda: 8 << 20)  # 1 MiB for data
    monkeypatch.setattr(sources, "_load_images", lambda *a: pytest.fail("decoded before the memory check"))
    refused(f"folder:{root}?size=1000x1000&channels=rgb", "2 images of 1000x1000 pixels and 3 channels", "5.7 MiB")


def test_pixel_cap_checked_on_each_header_with_size(tmp_path):
    root = folder(tmp_path / "d", [half_white(4, 4)] * 2)
    (root / "train" / "a" / "1.png").write_bytes(png_header(9000, 9000))
    refused(f"folder:{root}?size=4x4", "train/a/1.png is 9000x9000 pixels")


# --- size=WxH and fit ----------------------------------------------------------------------


def test_crop_keeps_aspect_and_takes_the_centre(tmp_path):
    root = folder(tmp_path / "d", [half_white(40, 20)], [half_white(20, 20)])
    raw = read_source(f"folder:{root}?size=20x20")
    assert raw.x_train.shape == (1, 1, 20, 20)
    # the centre 20 columns of 40: ten white (source columns 10..19), ten black
    np.testing.assert_array_equal(raw.x_train[0, 0], np.tile([255] * 10 + [0] * 10, (20, 1)))
    np.testing.assert_array_equal(raw.x_test[0, 0], half_white(20, 20))  # already that size: unchanged
    same = read_source(f"folder:{root}?size=20x20&fit=crop")
    np.testing.assert_array_equal(same.x_train, raw.x_train)


def test_crop_of_a_tall_image_takes_the_middle_rows(tmp_path):
    tall = np.zeros((40, 10), np.uint8)
    tall[15:25] = 200  # a band across the middle
    raw = read_source(f"folder:{folder(tmp_path / 'd', [tall])}?size=10x10")
    np.testing.assert_array_equal(raw.x_train[0, 0], np.full((10, 10), 200))


def test_pad_keeps_aspect_with_black_bars(tmp_path):
    wide = np.full((20, 40), 255, np.uint8)
    tall = np.full((40, 20), 255, np.uint8)
    raw = read_source(f"folder:{folder(tmp_path / 'd', [wide, tall])}?size=20x20&fit=pad")
    assert raw.x_train.shape == (2, 1, 20, 20)
    expected_wide = np.zeros((20, 20), np.uint8)
    expected_wide[5:15] = 255  # scaled to 20x10, bars of 5 rows above and below
    np.testing.assert_array_equal(raw.x_train[0, 0], expected_wide)
    np.testing.assert_array_equal(raw.x_train[1, 0], expected_wide.T)  # bars left and right


def test_stretch_does_not_keep_aspect(tmp_path):
    raw = read_source(f"folder:{folder(tmp_path / 'd', [half_white(40, 20)])}?size=20x20&fit=stretch")
    assert raw.x_train.shape == (1, 1, 20, 20)
    image = raw.x_train[0, 0]
    assert (image == image[0]).all()  # every row alike
    assert (image[:, :9] == 255).all() and (image[:, 11:] == 0).all()  # the white half spans half the width


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_odd_target_sizes_are_exact(tmp_path, fit):
    rgb = np.zeros((9, 16, 3), np.uint8)
    images = [half_white(40, 20), half_white(13, 31), half_white(7, 5)]
    root = folder(tmp_path / "d", images, [rgb])
    raw = read_source(f"folder:{root}?size=7x5&fit={fit}")
    assert raw.x_train.shape == (3, 3, 5, 7) and raw.x_test.shape == (1, 3, 5, 7)
    np.testing.assert_array_equal(raw.x_train[2, 0], half_white(7, 5))  # already 7x5: unchanged
    assert read_source(f"folder:{root}?size=3x11&fit={fit}").x_train.shape == (3, 3, 11, 3)


# --- channels ------------------------------------------------------------------------------


def test_channels_rgb_bgr_and_gray(tmp_path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[...] = (10, 100, 200)
    root = folder(tmp_path / "d", [colour])
    rgb = read_source(f"folder:{root}")
    assert rgb.x_train.shape == (1, 3, 4, 4)
    assert rgb.x_train[0, :, 0, 0].tolist() == [10, 100, 200]
    np.testing.assert_array_equal(read_source(f"folder:{root}?channels=rgb").x_train, rgb.x_train)
    bgr = read_source(f"folder:{root}?channels=bgr")
    assert bgr.x_train[0, :, 0, 0].tolist() == [200, 100, 10]
    np.testing.assert_array_equal(bgr.x_train, rgb.x_train[:, ::-1])
    gray = read_source(f"folder:{root}?channels=gray")
    assert gray.x_train.shape == (1, 1, 4, 4)
    assert gray.x_train[0, 0, 0, 0] == round((10 * 299 + 100 * 587 + 200 * 114) / 1000)


def test_gray_folder_is_one_channel_unless_asked(tmp_path):
    root = folder(tmp_path / "d", [half_white(4, 4)])
    assert read_source(f"folder:{root}").x_train.shape == (1, 1, 4, 4)
    three = read_source(f"folder:{root}?channels=bgr")
    assert three.x_train.shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(three.x_train[0], np.stack([half_white(4, 4)] * 3))


def test_load_dataset_with_options(tmp_path):
    colour = np.zeros((6, 8, 3), np.uint8)
    colour[...] = (1, 2, 3)
    root = folder(tmp_path / "d", [colour, colour], [colour[:4]])
    spec = f"folder:{root}?size=5x5&channels=bgr"
    ds = load_dataset(spec, val_fraction=0)
    assert ds.spec == spec and ds.name == "folder" and ds.in_shape == (3, 5, 5)
    assert ds.x_train.shape == (2, 3, 5, 5) and ds.x_test.shape == (1, 3, 5, 5)
    assert len(ds.files) == 3


# --- bad options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "parts"),
    [
        ("colour=bgr", ["'colour'", "size=WxH", "fit=crop|pad|stretch", "channels=rgb|bgr|gray"]),
        ("size=4x4&flip", ["'flip'", "not key=value", "size=WxH"]),
        ("size=4x4&size=5x5", ["'size'", "twice"]),
        ("size=0x4", ["size=0x4", "1 to 8192", "size=WxH"]),
        ("size=8193x4", ["size=8193x4", "1 to 8192"]),
        ("size=224", ["size=224", "size=WxH"]),
        ("size=ax4", ["size=ax4", "size=WxH"]),
        ("size=-4x4", ["size=-4x4", "size=WxH"]),
        ("size=4x4&fit=zoom", ["fit=zoom", "fit=crop, fit=pad or fit=stretch"]),
        ("fit=pad", ["fit=pad", "needs size=WxH"]),
        ("channels=rgba", ["channels=rgba", "channels=rgb, channels=bgr or channels=gray"]),
        ("channels=RGB", ["channels=RGB", "channels=rgb, channels=bgr or channels=gray"]),
    ],
)
def test_bad_option_refused_in_one_line(tmp_path, options, parts):
    root = folder(tmp_path / "d", [half_white(4, 4)])
    refused(f"folder:{root}?{options}", *parts)
    with pytest.raises(CompressError):
        source_location(f"folder:{root}?{options}")


def test_options_without_a_path(tmp_path):
    refused("folder:?size=4x4", "needs a path")


# --- paths with '?' and other sources --------------------------------------------------------


def test_directory_with_question_mark_in_its_name(tmp_path):
    root = folder(tmp_path / "a?b", [half_white(4, 4)])
    assert read_source(f"folder:{root}").x_train.shape == (1, 1, 4, 4)
    assert read_source(f"folder:{root}?size=2x2").x_train.shape == (1, 1, 2, 2)  # options start at the last '?'
    literal = folder(tmp_path / "c?size=2x2", [half_white(4, 4)])
    assert read_source(f"folder:{literal}").x_train.shape == (1, 1, 4, 4)  # an existing directory wins
    refused(f"folder:{tmp_path / 'x?y'}", "x?y does not exist")  # no '=': the whole is a path
    assert source_location(f"folder:{root}?size=2x2&fit=pad") == str(root)
    assert source_location(f"folder:{root}") == str(root)


def test_other_sources_do_not_parse_options(tmp_path):
    refused(f"npz:{tmp_path / 'd.npz'}?size=4x4", "d.npz?size=4x4 does not exist")
    assert source_location(f"npz:{tmp_path / 'd.npz'}?x=1") == f"{tmp_path / 'd.npz'}?x=1"
    assert source_location("digits") == ""
