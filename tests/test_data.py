"""compress.data: sources, preprocessing, splits, fingerprints and every user-facing error."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compress.data import DATA_SOURCES_HELP, Preprocessing, load_dataset
from compress.errors import CompressError

IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


# --- helpers ---------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write a uint8 IDX file (magic 0x0803 for 3-D images, 0x0801 for 1-D labels)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def idx_arrays(n_train: int = 30, n_test: int = 12, hw: tuple[int, int] = (5, 4), seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, *hw)),
        "y_train": np.arange(n_train) % 10,
        "x_test": rng.integers(0, 256, (n_test, *hw)),
        "y_test": np.arange(n_test) % 10,
    }


def make_idx_dir(directory: Path, arrays: dict | None = None, gz: bool = False, dotted: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for key, array in (arrays or idx_arrays()).items():
        name = IDX_NAMES[key].replace("-idx", ".idx") if dotted else IDX_NAMES[key]
        write_idx(directory / name, array, gz=gz)
    return directory


def make_npz(path: Path, **arrays) -> str:
    defaults = {
        "x_train": np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32),
        "y_train": np.arange(40) % 3,
        "x_test": np.ones((9, 6), np.float32),
        "y_test": np.arange(9) % 3,
    }
    np.savez(path, **{k: v for k, v in {**defaults, **arrays}.items() if v is not None})
    return f"npz:{path}"


def make_folder(root: Path, rgb_file: bool = False) -> Path:
    """train/{cat,dog}/ with 3 grey 6x4 images each, test/{cat}/ with 2 (one of another size)."""
    rng = np.random.default_rng(0)
    for split, classes in (("train", {"cat": 3, "dog": 3}), ("test", {"cat": 2})):
        for cls, count in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                size = (8, 8) if split == "test" and i == 1 else (4, 6)  # (H, W)
                Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    if rgb_file:
        Image.new("RGB", (6, 4), (255, 0, 0)).save(root / "train" / "dog" / "9.jpg")
    return root


def identity(features: int) -> Preprocessing:
    return Preprocessing(layout="NF", scale=1.0, mean=[0.0] * features, std=[1.0] * features)


# --- sources ---------------------------------------------------------------------------------


def test_digits_loads():
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.labels == [str(i) for i in range(10)]
    assert ds.in_shape == (1, 8, 8) and ds.num_classes == 10 and ds.files == []
    assert ds.preprocessing.scale == 1 / 16 and ds.preprocessing.layout == "NCHW"
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 1797
    assert len(ds.y_test) == pytest.approx(0.2 * 1797, abs=10)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8) and x.flags.c_contiguous
        assert y.dtype == np.int64 and len(x) == len(y)


def test_digits_test_split_is_fixed_and_stratified():
    a = load_dataset("digits", split_seed=0)
    b = load_dataset("digits", split_seed=7, val_fraction=0.3, preprocessing=a.preprocessing)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert a.fingerprint == b.fingerprint
    assert set(np.bincount(a.y_test, minlength=10)) <= {35, 36, 37}


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (False, True)])
def test_mnist_idx(tmp_path, gz, dotted):
    arrays = idx_arrays()
    directory = make_idx_dir(tmp_path / "m", arrays, gz=gz, dotted=dotted)
    ds = load_dataset(f"mnist:{directory}", val_fraction=0.2)
    assert ds.name == "mnist" and ds.labels == [str(i) for i in range(10)]
    assert ds.in_shape == (1, 5, 4) and ds.x_test.shape == (12, 1, 5, 4)
    assert (len(ds.y_train), len(ds.y_val)) == (24, 6)
    assert ds.preprocessing.scale == 1 / 255
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    assert len(ds.files) == 4 and all(os.path.isabs(f) and os.path.exists(f) for f in ds.files)
    assert all(f.endswith(".gz") == gz for f in ds.files)


def test_mnist_raw_and_gz_same_fingerprint(tmp_path):
    arrays = idx_arrays()
    raw = load_dataset(f"mnist:{make_idx_dir(tmp_path / 'raw', arrays)}")
    gz = load_dataset(f"mnist:{make_idx_dir(tmp_path / 'gz', arrays, gz=True)}")
    assert raw.fingerprint == gz.fingerprint
    np.testing.assert_array_equal(raw.x_train, gz.x_train)


def test_fashion_mnist_labels(tmp_path):
    ds = load_dataset(f"fashion-mnist:{make_idx_dir(tmp_path / 'f')}")
    assert ds.name == "fashion-mnist" and ds.num_classes == 10
    assert ds.labels[0] == "T-shirt/top" and ds.labels[9] == "Ankle boot"


@pytest.mark.parametrize(
    "shape,in_shape,layout",
    [((20, 5, 4), (1, 5, 4), "NCHW"), ((20, 3, 5, 4), (3, 5, 4), "NCHW"), ((20, 7), (7,), "NF")],
)
def test_npz_shapes(tmp_path, shape, in_shape, layout):
    rng = np.random.default_rng(0)
    spec = make_npz(
        tmp_path / "d.npz",
        x_train=rng.integers(0, 256, shape, dtype=np.uint8),
        y_train=np.arange(20) % 4,
        x_test=rng.integers(0, 256, (6, *shape[1:]), dtype=np.uint8),
        y_test=np.arange(6) % 4,
    )
    ds = load_dataset(spec)
    assert ds.name == "npz" and ds.in_shape == in_shape and ds.preprocessing.layout == layout
    assert ds.preprocessing.scale == 1 / 255 and len(ds.preprocessing.mean) == in_shape[0]
    assert ds.labels == ["0", "1", "2", "3"] and ds.x_test.shape == (6, *in_shape)
    assert ds.files == [str(tmp_path / "d.npz")]


def test_npz_float_scale_labels_and_class_count(tmp_path):
    ds = load_dataset(make_npz(tmp_path / "d.npz", y_test=np.full(9, 4)))
    assert ds.preprocessing.scale == 1.0 and ds.num_classes == 5  # max label over train and test
    named = load_dataset(make_npz(tmp_path / "n.npz", labels=np.array(["a", "b", "c", "d"])))
    assert named.labels == ["a", "b", "c", "d"] and named.num_classes == 4
    floats = load_dataset(make_npz(tmp_path / "f.npz", y_train=(np.arange(40) % 3).astype(float)))
    assert floats.y_train.dtype == np.int64


def test_folder(tmp_path):
    ds = load_dataset(f"folder:{make_folder(tmp_path / 'imgs')}?size=6x4&fit=stretch", val_fraction=0)
    assert ds.name == "folder" and ds.labels == ["cat", "dog"]
    assert ds.in_shape == (1, 4, 6)  # grey, 6 wide and 4 high; the 8x8 test image resized
    assert ds.x_train.shape == (6, 1, 4, 6) and ds.x_test.shape == (2, 1, 4, 6)
    np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds.y_test, [0, 0])
    assert len(ds.files) == 8 and ds.preprocessing.scale == 1 / 255


def test_folder_rgb_when_any_image_is_colour(tmp_path):
    ds = load_dataset(f"folder:{make_folder(tmp_path / 'imgs', rgb_file=True)}?size=6x4")
    assert ds.in_shape == (3, 4, 6) and len(ds.preprocessing.mean) == 3
    assert len(ds.y_train) + len(ds.y_val) == 7


# --- preprocessing ---------------------------------------------------------------------------


def test_preprocessing_fitted_on_train_split_only(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.normal(3.0, 2.0, (50, 4))
    spec = make_npz(
        tmp_path / "d.npz",
        x_train=x_train,
        y_train=np.zeros(50, int),
        x_test=rng.normal(100.0, 9.0, (10, 4)),
        y_test=np.zeros(10, int),
    )
    ds = load_dataset(spec, val_fraction=0.2, split_seed=3)
    raw_train = load_dataset(spec, val_fraction=0.2, split_seed=3, preprocessing=identity(4)).x_train
    np.testing.assert_allclose(ds.preprocessing.mean, raw_train.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ds.preprocessing.std, raw_train.std(axis=0), rtol=1e-6)
    assert not np.allclose(ds.preprocessing.mean, x_train.mean(axis=0))  # val excluded


def test_apply_normalises_train_per_channel():
    raw = np.random.default_rng(0).integers(0, 256, (30, 3, 4, 5)).astype(np.uint8)
    raw[:, 2] = 7  # a constant channel: std 0 -> 1
    prep = Preprocessing.fit(raw, 1 / 255, "NCHW")
    assert prep.std[2] == 1.0
    x = prep.apply(raw)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3))[:2], 1, atol=1e-5)
    np.testing.assert_allclose(prep.apply(np.asfortranarray(raw.astype(np.int32))), x)


def test_preprocessing_dict_round_trip():
    prep = Preprocessing.fit(np.random.default_rng(0).normal(size=(10, 3)), 1.0, "NF")
    again = Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert again == prep


@pytest.mark.parametrize(
    "record,match",
    [
        ([1, 2], "expected a mapping"),
        ({"layout": "NCHW", "scale": 1.0, "mean": [0.0]}, "missing std"),
        ({"layout": "NHWC", "scale": 1.0, "mean": [0.0], "std": [1.0]}, "layout"),
        ({"layout": "NF", "scale": 0, "mean": [0.0], "std": [1.0]}, "scale"),
        ({"layout": "NF", "scale": "1", "mean": [0.0], "std": [1.0]}, "scale"),
        ({"layout": "NF", "scale": 1.0, "mean": [], "std": []}, "mean"),
        ({"layout": "NF", "scale": 1.0, "mean": ["a"], "std": [1.0]}, "mean"),
        ({"layout": "NF", "scale": 1.0, "mean": [0.0, 1.0], "std": [1.0]}, "2 entries"),
        ({"layout": "NF", "scale": 1.0, "mean": [0.0], "std": [0.0]}, "not positive"),
    ],
)
def test_preprocessing_from_dict_rejects_malformed(record, match):
    with pytest.raises(CompressError, match=f"malformed preprocessing record: .*{match}"):
        Preprocessing.from_dict(record)


def test_given_preprocessing_applied_as_is(tmp_path):
    spec = make_npz(tmp_path / "d.npz")
    given = Preprocessing(layout="NF", scale=2.0, mean=[1.0] * 6, std=[4.0] * 6)
    ds = load_dataset(spec, preprocessing=given)
    raw = load_dataset(spec, preprocessing=identity(6))
    assert ds.preprocessing is given
    np.testing.assert_allclose(ds.x_train, (raw.x_train * 2.0 - 1.0) / 4.0, rtol=1e-6)
    np.testing.assert_allclose(ds.x_test, (raw.x_test * 2.0 - 1.0) / 4.0, rtol=1e-6)


@pytest.mark.parametrize(
    "given,match",
    [
        (Preprocessing(layout="NF", scale=1.0, mean=[0.0] * 5, std=[1.0] * 5), "5 features"),
        (Preprocessing(layout="NCHW", scale=1.0, mean=[0.0], std=[1.0]), "NCHW samples"),
    ],
)
def test_given_preprocessing_must_fit(tmp_path, given, match):
    with pytest.raises(CompressError, match=f"{match}.*shape \\(6,\\)"):
        load_dataset(make_npz(tmp_path / "d.npz"), preprocessing=given)


def test_apply_rejects_wrong_shape():
    prep = Preprocessing(layout="NCHW", scale=1.0, mean=[0.0, 0.0, 0.0], std=[1.0] * 3)
    with pytest.raises(CompressError, match="3 channels"):
        prep.apply(np.zeros((2, 1, 4, 4)))
    with pytest.raises(CompressError, match="batch"):
        prep.apply(np.zeros(4))


# --- splits and fingerprints -----------------------------------------------------------------


def index_npz(tmp_path: Path, n: int = 50) -> str:
    """Each training sample's one feature is its own index, so splits can be traced."""
    return make_npz(
        tmp_path / "idx.npz",
        x_train=np.arange(n, dtype=np.float64)[:, None],
        y_train=np.zeros(n, int),
        x_test=np.zeros((3, 1)),
        y_test=np.zeros(3, int),
    )


def test_split_deterministic_disjoint_and_complete(tmp_path):
    spec = index_npz(tmp_path)

    def split(seed):
        ds = load_dataset(spec, val_fraction=0.2, split_seed=seed, preprocessing=identity(1))
        return ds.x_train[:, 0].astype(int), ds.x_val[:, 0].astype(int)

    train, val = split(0)
    assert len(val) == 10 and not set(train) & set(val)
    assert sorted(set(train) | set(val)) == list(range(50))
    np.testing.assert_array_equal(split(0)[1], val)
    assert set(split(1)[1]) != set(val)


def test_val_fraction_zero_and_minimum_one(tmp_path):
    spec = index_npz(tmp_path)
    none = load_dataset(spec, val_fraction=0)
    assert none.x_val.shape == (0, 1) and none.y_val.shape == (0,) and len(none.y_train) == 50
    assert len(load_dataset(spec, val_fraction=0.001).y_val) == 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"val_fraction": 0.9}, "validation fraction"),
        ({"val_fraction": -0.1}, "validation"),
        ({"val_fraction": float("nan")}, "validation"),
        ({"split_seed": -1}, "split seed"),
        ({"split_seed": 1.5}, "split seed"),
    ],
)
def test_bad_split_arguments(kwargs, match):
    with pytest.raises(CompressError, match=match):
        load_dataset("digits", **kwargs)


def test_fingerprint_stable_and_content_sensitive(tmp_path):
    arrays = idx_arrays()
    directory = make_idx_dir(tmp_path / "m", arrays)
    first = load_dataset(f"mnist:{directory}")
    again = load_dataset(f"mnist:{directory}", val_fraction=0.3, split_seed=9)
    assert first.fingerprint == again.fingerprint and len(first.fingerprint) == 64
    arrays["x_test"][0, 0, 0] ^= 1
    changed = load_dataset(f"mnist:{make_idx_dir(tmp_path / 'm2', arrays)}")
    assert changed.fingerprint != first.fingerprint


def test_describe_is_json_summary(tmp_path):
    ds = load_dataset(f"mnist:{make_idx_dir(tmp_path / 'm')}", val_fraction=0.2, split_seed=4)
    summary = json.loads(json.dumps(ds.describe()))
    assert summary == {
        "spec": f"mnist:{tmp_path / 'm'}",
        "name": "mnist",
        "fingerprint": ds.fingerprint,
        "num_classes": 10,
        "in_shape": [1, 5, 4],
        "val_fraction": 0.2,
        "split_seed": 4,
        "task": "classification",
        "sizes": {"train": 24, "val": 6, "test": 12},
    }


def test_help_names_every_source():
    for form in ("digits", "mnist:DIR", "fashion-mnist:DIR", "npz:FILE", "folder:DIR"):
        assert form in DATA_SOURCES_HELP


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,match",
    [
        ("cifar:/x", "unknown data source 'cifar'.*digits, diabetes, mnist:DIR, fashion-mnist:DIR, npz:FILE, csv:FILE"),
        ("mnist", "needs a path; use mnist:DIR"),
        ("npz:", "needs a path; use npz:FILE"),
        ("digits:/x", "takes no path"),
    ],
)
def test_bad_spec(spec, match):
    with pytest.raises(CompressError, match=match):
        load_dataset(spec)


def test_missing_paths(tmp_path):
    with pytest.raises(CompressError, match="does not exist.*train-images-idx3-ubyte"):
        load_dataset(f"mnist:{tmp_path / 'nope'}")
    with pytest.raises(CompressError, match="does not exist.*x_train, y_train, x_test, y_test"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    with pytest.raises(CompressError, match="does not exist.*DIR/train/<class>"):
        load_dataset(f"folder:{tmp_path / 'nope'}")


def test_missing_idx_file_is_named(tmp_path):
    directory = make_idx_dir(tmp_path / "m", gz=True)
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        CompressError,
        match="no t10k-labels-idx1-ubyte .*expected the IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte",
    ):
        load_dataset(f"mnist:{directory}")


def test_bad_idx_magic(tmp_path):
    directory = make_idx_dir(tmp_path / "m")
    (directory / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(20))
    with pytest.raises(CompressError, match="not an IDX image file.*0x00000801"):
        load_dataset(f"mnist:{directory}")
    (directory / "train-images-idx3-ubyte").write_bytes(b"PK")
    with pytest.raises(CompressError, match="not an IDX image file"):
        load_dataset(f"mnist:{directory}")


def test_truncated_idx(tmp_path):
    directory = make_idx_dir(tmp_path / "m")
    path = directory / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(CompressError, match="truncated: its header promises 240 bytes.*235"):
        load_dataset(f"mnist:{directory}")
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(CompressError, match="truncated inside its header"):
        load_dataset(f"mnist:{directory}")


def test_idx_count_mismatch(tmp_path):
    arrays = idx_arrays()
    arrays["y_train"] = arrays["y_train"][:-1]
    with pytest.raises(CompressError, match="30 images but .* 29 labels"):
        load_dataset(f"mnist:{make_idx_dir(tmp_path / 'm', arrays)}")


def test_idx_label_out_of_range(tmp_path):
    arrays = idx_arrays()
    arrays["y_test"][3] = 10
    with pytest.raises(CompressError, match="test label 10 is out of range for 10 classes"):
        load_dataset(f"mnist:{make_idx_dir(tmp_path / 'm', arrays)}")


def test_corrupt_gzip(tmp_path):
    directory = make_idx_dir(tmp_path / "m", gz=True)
    path = directory / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(CompressError, match="not a valid gzip file"):
        load_dataset(f"mnist:{directory}")
    path.write_bytes(b"not gzip at all")
    with pytest.raises(CompressError, match="not a valid gzip file"):
        load_dataset(f"mnist:{directory}")


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"y_train": -(np.arange(40) % 3)}, "train label -1 is out of range"),
        ({"labels": np.array(["a", "b"])}, "train label 2 is out of range for 2 classes"),
        ({"y_test": np.array(["a"] * 9)}, "y_test has dtype <U1; store class indices"),
        ({"x_test": np.zeros((0, 6)), "y_test": np.zeros(0, int)}, "test set has no samples"),
        ({"y_test": None}, "lacks y_test .*needs x_train, y_train, x_test, y_test"),
        ({"y_train": np.arange(39) % 3}, "x_train has 40 samples but y_train has 39"),
        ({"x_train": np.zeros(40)}, "x_train has shape \\(40,\\); expected"),
        ({"x_train": np.zeros((40, 1, 1, 2, 2))}, "x_train has shape"),
        ({"y_train": np.zeros((40, 1), int)}, "y_train has shape"),
        ({"x_test": np.ones((9, 5))}, "x_test samples have \\(5,\\)"),
        ({"x_train": np.full((40, 6), np.nan)}, "x_train contains NaN or infinite"),
        ({"x_test": np.full((9, 6), np.inf)}, "x_test contains NaN or infinite"),
        ({"x_train": np.full((40, 6), "a")}, "x_train has dtype"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    with pytest.raises(CompressError, match=match):
        load_dataset(make_npz(tmp_path / "d.npz", **arrays))


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"definitely not a zip")
    with pytest.raises(CompressError, match="cannot read .* as an .npz archive"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(CompressError, match="single array, not an .npz archive"):
        load_dataset(f"npz:{tmp_path / 'single.npy'}")


def test_unreadable_image_is_named(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(CompressError, match="cannot read image .*broken.png"):
        load_dataset(f"folder:{root}")


def test_truncated_image_is_named(tmp_path):
    root = make_folder(tmp_path / "imgs")
    path = root / "test" / "cat" / "0.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(CompressError, match="cannot read image .*test/cat/0.png"):
        load_dataset(f"folder:{root}?size=6x4")


def test_folder_structure_errors(tmp_path):
    (tmp_path / "a" / "train").mkdir(parents=True)
    (tmp_path / "a" / "test").mkdir()
    with pytest.raises(CompressError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'a'}")
    root = make_folder(tmp_path / "b")
    (root / "test" / "bird").mkdir()
    with pytest.raises(CompressError, match="classes missing from train: bird"):
        load_dataset(f"folder:{root}")
    root = make_folder(tmp_path / "c")
    for image in (root / "test" / "cat").iterdir():
        image.unlink()
    with pytest.raises(CompressError, match="test has no images"):
        load_dataset(f"folder:{root}")
    (tmp_path / "d" / "train" / "x").mkdir(parents=True)
    with pytest.raises(CompressError, match="test does not exist"):
        load_dataset(f"folder:{tmp_path / 'd'}")


# --- real data -------------------------------------------------------------------------------


def test_real_mnist():
    directory = os.environ.get("COMPRESS_MNIST_DIR", "/work/shared/data/mnist")
    if (
        not Path(directory, "train-images-idx3-ubyte.gz").exists()
        and not Path(directory, "train-images-idx3-ubyte").exists()
    ):
        pytest.skip(f"real MNIST not found in {directory} (set COMPRESS_MNIST_DIR to its folder)")
    ds = load_dataset(f"mnist:{directory}")
    assert ds.in_shape == (1, 28, 28)
    assert len(ds.y_train) + len(ds.y_val) == 60000 and len(ds.y_test) == 10000
    assert np.sum(ds.y_train == 0) + np.sum(ds.y_val == 0) == 5923
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-4
