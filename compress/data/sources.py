"""Readers for each ``--data`` source, returning raw (unnormalised) train and test arrays."""

from __future__ import annotations

import contextlib
import gzip
import math
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from ..errors import CompressError, first_line
from ..hardware import memory_bytes

DATA_SOURCES_HELP = (
    "Data sources: 'digits' (scikit-learn's bundled 8x8 digits, no download); 'diabetes' (scikit-learn's bundled "
    "diabetes regression set); "
    "'mnist:DIR' or 'fashion-mnist:DIR' (the four IDX files train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, raw or .gz); "
    "'npz:FILE' (arrays x_train, y_train, x_test, y_test: x of shape (N,H,W), (N,C,H,W) or (N,F); y (N,) class "
    "indices or floats, or (N,K) 0/1 label sets or floats; optionally labels, the names of classes, labels or "
    "targets); 'csv:FILE' or 'tsv:FILE' (a header row, numeric columns; ?target=COLUMN[,COLUMN...] names the "
    "targets, default the last column, &test=FILE a test file, default a fixed fifth of the rows); 'folder:DIR' (images in DIR/train/<class>/ and DIR/test/<class>/, all of one size), "
    "with options after a '?' joined by '&': size=WxH brings every image to W x H keeping its aspect (scaled to "
    "cover, centre-cropped; fit=pad or fit=stretch otherwise) and channels=rgb|bgr|gray sets the channel order "
    "(default rgb, gray when every image is), e.g. folder:DIR?size=224x224&channels=bgr."
)

FASHION_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 1797  # fixed, so the digits test set never depends on --split-seed
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_IDX_FILES = {"train": ("train-images", "train-labels"), "test": ("t10k-images", "t10k-labels")}
_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

# Limits on what a source declares (header sizes, label values), checked before allocating anything that size.
MAX_CLASSES = 100_000  # far above real label spaces (ImageNet-21k has ~22k): a larger label is corrupt
MAX_IMAGE_PIXELS = 8192 * 8192  # the largest image decoded; below Pillow's decompression-bomb warning
# Raw arrays may take this part of physical memory: loading copies them and converts them to float32 (4x for uint8).
DATA_MEMORY_FRACTION = 1 / 8
ASSUMED_MEMORY = 8 << 30  # physical memory assumed where the platform does not report it
_DOWNSCALE = "downscale the images (e.g. to the model's input size) first"
_READ_CHUNK = 1 << 20  # a header promising more than a file holds costs at most this much extra
# folder:DIR?size=WxH&fit=crop|pad|stretch&channels=rgb|bgr|gray (options after the path's last '?')
MAX_FOLDER_SIDE = 8192
FOLDER_FITS = ("crop", "pad", "stretch")
FOLDER_CHANNELS = ("rgb", "bgr", "gray")
_FOLDER_OPTIONS_HELP = "size=WxH, fit=crop|pad|stretch (with size), channels=rgb|bgr|gray"


@dataclass
class RawData:
    """What a source yields: raw x (N, *in_shape), targets y ((N,) or (N, K)), the names of the classes, labels or
    targets (None: numbered once the task is known), and how to scale x."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str] | None
    scale: float
    files: list[str]
    task: str | None = None  # what the source knows its targets are; None: inferred from them
    names: list[str] | None = None  # a table's target columns: the names of labels or targets

    @property
    def layout(self) -> str:
        return "NF" if self.x_train.ndim == 2 else "NCHW"


class _MemoryBudget:
    """What the arrays of one source may take: each is claimed, from the size its header declares, before it is read."""

    def __init__(self) -> None:
        self.total = int((memory_bytes() or ASSUMED_MEMORY) * DATA_MEMORY_FRACTION)
        self.left = self.total

    def claim(self, path: Path, what: str, nbytes: int) -> None:
        if nbytes > self.left:
            raise CompressError(
                f"{path}: {what} would take {_size(nbytes)} of memory, over the {_size(self.left)} left of "
                f"the {_size(self.total)} a data source may use ({DATA_MEMORY_FRACTION:.1%} of this "
                "machine's memory); use a smaller data set or a machine with more memory"
            )
        self.left -= nbytes


def _size(nbytes: int) -> str:
    """``nbytes`` in a readable unit, e.g. ``1.5 GiB``."""
    if nbytes < 1024:
        return f"{nbytes} bytes"
    power = min((nbytes.bit_length() - 1) // 10, 4)
    return f"{nbytes / 1024**power:.1f} {('KiB', 'MiB', 'GiB', 'TiB')[power - 1]}"


@dataclass(frozen=True)
class FolderOptions:
    """How a folder source shapes its images; from the ``?size=WxH&fit=...&channels=...`` of its spec."""

    size: tuple[int, int] | None = None  # (width, height); None: every image must have the same size
    fit: str = "crop"  # with size: crop (cover, centre crop), pad (fit inside, black bars) or stretch
    channels: str | None = None  # rgb, bgr or gray; None: gray when every image is, else rgb


SOURCE_FORMS = "digits, diabetes, mnist:DIR, fashion-mnist:DIR, npz:FILE, csv:FILE, tsv:FILE, folder:DIR"
BUILT_IN_SOURCES = ("digits", "diabetes")
PATH_SOURCES = ("mnist", "fashion-mnist", "npz", "csv", "tsv", "folder")


def source_location(spec: str) -> str:
    """The path part of a ``--data`` string ('' for a built-in source): a folder's or a table's ``?options`` are
    removed (and checked, CompressError if bad); other sources' paths are returned as written."""
    name, _, location = spec.partition(":")
    if name == "folder":
        return _split_folder_options(location)[0]
    return _split_table_options(location)[0] if name in ("csv", "tsv") else location


def source_paths(spec: str) -> list[Path]:
    """The files and folders a ``--data`` string reads: its location, and a table's test file."""
    if spec.partition(":")[0] in BUILT_IN_SOURCES:
        return []
    location = Path(source_location(spec)).expanduser()
    name, _, rest = spec.partition(":")
    test = _split_table_options(rest)[1].test if name in ("csv", "tsv") else None
    if test is None:
        return [location]
    test_path = Path(test).expanduser()
    return [location, test_path if test_path.is_absolute() else location.parent / test_path]


def _split_folder_options(location: str) -> tuple[str, FolderOptions]:
    """``DIR?key=value&...`` as (DIR, options). Options start at the last '?'; a location that is an
    existing directory, or whose text after the last '?' holds no '=', is a path with no options."""
    path, sep, query = location.rpartition("?")
    if not sep or "=" not in query or Path(location).expanduser().is_dir():
        return location, FolderOptions()
    values: dict[str, str] = {}
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if not eq or key not in ("size", "fit", "channels"):
            problem = f"unknown folder option {key!r}" if eq else f"folder option {part!r} is not key=value"
            raise CompressError(
                f"{problem} in '?{query}'; valid options are {_FOLDER_OPTIONS_HELP}, e.g. folder:DIR?size=224x224&fit=pad"
            )
        if key in values:
            raise CompressError(f"folder option {key!r} is given twice in '?{query}'; give it once")
        values[key] = value
    size = None
    if "size" in values:
        match = re.fullmatch(r"([0-9]{1,5})x([0-9]{1,5})", values["size"])
        size = (int(match[1]), int(match[2])) if match else None
        if size is None or not all(1 <= side <= MAX_FOLDER_SIDE for side in size):
            raise CompressError(
                f"bad folder option 'size={values['size']}'; use size=WxH with W and H whole numbers "
                f"from 1 to {MAX_FOLDER_SIDE}, e.g. size=224x224"
            )
    fit = values.get("fit", "crop")
    if fit not in FOLDER_FITS:
        raise CompressError(f"bad folder option 'fit={fit}'; use fit=crop, fit=pad or fit=stretch (with size=WxH)")
    if "fit" in values and size is None:
        raise CompressError(
            f"folder option 'fit={fit}' needs size=WxH to fit to, e.g. folder:DIR?size=224x224&fit={fit}"
        )
    channels = values.get("channels")
    if channels is not None and channels not in FOLDER_CHANNELS:
        raise CompressError(f"bad folder option 'channels={channels}'; use channels=rgb, channels=bgr or channels=gray")
    return path, FolderOptions(size, fit, channels)


def read_source(spec: str) -> RawData:
    """Parse a ``--data`` string and read the source it names."""
    name, sep, location = spec.partition(":")
    if name in _BUILT_IN:
        if sep:
            raise CompressError(f"data source {name!r} takes no path (got {spec!r}); use just --data {name}")
        return _BUILT_IN[name]()
    if name not in _PATH_READERS:
        raise CompressError(f"unknown data source {name!r} in {spec!r}; valid forms are {SOURCE_FORMS}")
    options = None
    if name == "folder":
        location, options = _split_folder_options(location)
    elif name in ("csv", "tsv"):
        location, table = _split_table_options(location)
    if not location:
        kind = "DIR" if name in ("mnist", "fashion-mnist", "folder") else "FILE"
        raise CompressError(f"data source {name!r} needs a path; use {name}:{kind}")
    if options is not None:
        return _read_folder(name, Path(location).expanduser().resolve(), options)
    if name in ("csv", "tsv"):
        return _read_table(name, Path(location).expanduser().resolve(), table)
    return _PATH_READERS[name](name, Path(location).expanduser().resolve())


def _read_digits() -> RawData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.uint8)[:, None]
    y = digits.target.astype(np.int64)
    test = _stratified_mask(y, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return RawData(
        "digits", x[~test], y[~test], x[test], y[test], labels=[str(i) for i in range(10)], scale=1 / 16, files=[]
    )


def _read_diabetes() -> RawData:
    """scikit-learn's bundled diabetes set: 10 standardised features, disease progression a year later."""
    from sklearn.datasets import load_diabetes

    diabetes = load_diabetes()
    x = diabetes.data.astype(np.float32)
    y = diabetes.target.astype(np.float32)
    test = np.zeros(len(y), dtype=bool)
    test[np.random.default_rng(DIGITS_TEST_SEED).permutation(len(y))[: round(DIGITS_TEST_FRACTION * len(y))]] = True
    return RawData(
        "diabetes", x[~test], y[~test], x[test], y[test], labels=["progression"], scale=1.0, files=[], task="regression"
    )


def _stratified_mask(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask selecting ``round(fraction * count)`` random samples of every class."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        mask[rng.permutation(members)[: round(fraction * len(members))]] = True
    return mask


# --- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------------


def _read_idx_dir(name: str, directory: Path) -> RawData:
    _require_dir(directory, name, "the four IDX files (train-images-idx3-ubyte, ...)")
    splits = {}
    files = []
    budget = _MemoryBudget()
    for split, (images_stem, labels_stem) in _IDX_FILES.items():
        images_path = _find_idx(directory, images_stem, "idx3-ubyte")
        labels_path = _find_idx(directory, labels_stem, "idx1-ubyte")
        images = _read_idx(images_path, "images", budget)
        labels = _read_idx(labels_path, "labels", budget)
        if len(images) != len(labels):
            raise CompressError(
                f"{images_path.name} has {len(images)} images but "
                f"{labels_path.name} has {len(labels)} labels; the files do "
                "not belong together, re-download them"
            )
        splits[split] = (images[:, None], labels.astype(np.int64))
        files += [str(images_path), str(labels_path)]
    if splits["train"][0].shape[1:] != splits["test"][0].shape[1:]:
        raise CompressError(
            f"train and test images in {directory} differ in size "
            f"({splits['train'][0].shape[2:]} vs {splits['test'][0].shape[2:]}); "
            "use the matching original files"
        )
    labels = FASHION_LABELS if name == "fashion-mnist" else [str(i) for i in range(10)]
    return RawData(name, *splits["train"], *splits["test"], labels=labels, scale=1 / 255, files=files)


def _find_idx(directory: Path, stem: str, kind: str) -> Path:
    """``stem-kind`` or ``stem.kind``, raw or ``.gz``; CompressError naming it if absent."""
    for base in (f"{stem}-{kind}", f"{stem}.{kind}"):
        for suffix in ("", ".gz"):
            if (directory / (base + suffix)).is_file():
                return directory / (base + suffix)
    expected = ", ".join(f"{s}-{k}" for pair in _IDX_FILES.values() for s, k in zip(pair, ("idx3-ubyte", "idx1-ubyte")))
    raise CompressError(
        f"{directory} has no {stem}-{kind} (nor .gz); expected the IDX files {expected}, each raw or .gz"
    )


def _read_idx(path: Path, kind: str, budget: _MemoryBudget) -> np.ndarray:
    """Parse an IDX file of unsigned bytes: big-endian magic, dimensions, then the data.

    The data the header declares is claimed from ``budget`` and then read in chunks, so a header
    promising more than the file holds is refused without allocating what it promises.
    """
    with _idx_errors(path), gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
        head = f.read(4)
        magic = int.from_bytes(head, "big") if len(head) == 4 else None
        if magic != _IDX_MAGIC[kind]:
            found = "none, file too short" if magic is None else f"0x{magic:08x}"
            raise CompressError(
                f"{path} is not an IDX {kind[:-1]} file (magic number {found}, "
                f"expected 0x{_IDX_MAGIC[kind]:08x}); point the data path at the "
                "original MNIST-format files"
            )
        ndim = magic & 0xFF
        dims_bytes = f.read(4 * ndim)
        if len(dims_bytes) < 4 * ndim:
            raise CompressError(f"{path} is truncated inside its header; re-download it")
        dims = [int(d) for d in np.frombuffer(dims_bytes, dtype=">u4")]
        expected = math.prod(dims)
        budget.claim(path, f"{kind} of shape {tuple(dims)}", expected)
        data = _read_at_most(f, expected)
    if len(data) < expected:
        raise CompressError(
            f"{path} is truncated: its header promises {expected} bytes of data "
            f"but only {len(data)} follow; re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _read_at_most(f: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes of ``f``, in chunks: what is allocated grows with what the file really holds."""
    chunks = []
    while n > 0 and (chunk := f.read(min(n, _READ_CHUNK))):
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def _idx_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise CompressError(f"{path} is not a valid gzip file ({e}); re-download it or store it uncompressed") from None
    except OSError as e:
        raise CompressError(f"cannot read {path} ({e.strerror}); check that it is a readable file") from None


# --- npz ------------------------------------------------------------------------------------


def _read_npz(name: str, path: Path) -> RawData:
    arrays = load_npz(path)
    x_train, x_test = (_npz_images(arrays, key, path) for key in ("x_train", "x_test"))
    y_train, y_test = (_npz_labels(arrays, key, path) for key in ("y_train", "y_test"))
    for x_key, x, y in (("x_train", x_train, y_train), ("x_test", x_test, y_test)):
        if len(x) != len(y):
            raise CompressError(
                f"{path}: {x_key} has {len(x)} samples but y{x_key[1:]} has "
                f"{len(y)} labels; they must be the same length"
            )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise CompressError(
            f"{path}: x_train samples have shape {x_train.shape[1:]} but x_test "
            f"samples have {x_test.shape[1:]}; they must match"
        )
    if y_train.shape[1:] != y_test.shape[1:]:
        raise CompressError(
            f"{path}: y_train has shape {y_train.shape} but y_test has {y_test.shape}; give both as many targets "
            "per sample, in the same layout"
        )
    labels = None
    if "labels" in arrays:
        if arrays["labels"].size > MAX_CLASSES:
            raise CompressError(
                f"{path}: labels names {arrays['labels'].size} classes, more than the {MAX_CLASSES} "
                "compress supports; give one name per class"
            )
        labels = [str(v) for v in arrays["labels"].reshape(-1).tolist()]
    scale = 1 / 255 if x_train.dtype == np.uint8 else 1.0
    return RawData(name, x_train, y_train, x_test, y_test, labels=labels, scale=scale, files=[str(path)])


def npz_members(path: Path) -> list[str]:
    """The names of the arrays in an .npz archive ([] when it is not one)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [name.removesuffix(".npy") for name in archive.namelist()]
    except (OSError, zipfile.BadZipFile, ValueError):
        return []


def load_npz(
    path: Path, required: tuple[str, ...] = _NPZ_KEYS, optional: tuple[str, ...] = ("labels",)
) -> dict[str, np.ndarray]:
    """The ``required`` and ``optional`` arrays of an .npz archive, loaded without pickle.

    Each member's .npy header is read first: what it declares must fit in the member and in a
    :class:`_MemoryBudget` before the array is allocated, so a small archive cannot expand to gigabytes.
    """
    if not path.is_file():
        raise CompressError(
            f"npz file {path} does not exist; expected an .npz with arrays "
            f"{', '.join(required)}" + (f" (and optionally {', '.join(optional)})" if optional else "")
        )
    try:
        with open(path, "rb") as f:
            if f.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX:
                raise CompressError(
                    f"{path} holds a single array, not an .npz archive; save it "
                    f"with numpy.savez(file, {'=..., '.join(required)}=...)"
                )
        with zipfile.ZipFile(path) as archive:
            # numpy.savez names members KEY.npy; numpy.load also accepts a bare KEY
            members = {name.removesuffix(".npy"): archive.getinfo(name) for name in archive.namelist()}
            missing = [key for key in required if key not in members]
            if missing:
                raise CompressError(
                    f"{path} lacks {', '.join(missing)} (it has "
                    f"{', '.join(members) or 'no arrays'}); it needs "
                    f"{', '.join(required)}" + (f" and optionally {', '.join(optional)}" if optional else "")
                )
            wanted = [key for key in (*required, *optional) if key in members]
            budget = _MemoryBudget()
            for key in wanted:
                _check_npy_header(archive, members[key], key, path, budget)
            arrays = {}
            for key in wanted:
                with archive.open(members[key]) as member:
                    arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:
        raise CompressError(
            f"cannot read {path} as an .npz archive ({first_line(e)}); save it with "
            "numpy.savez using plain numeric and string arrays"
        ) from None
    return arrays


def _check_npy_header(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, path: Path, budget: _MemoryBudget
) -> None:
    """Refuse a member whose .npy header declares more data than the member holds or than ``budget`` allows."""
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
        except ValueError:
            raise CompressError(
                f"{path}: {info.filename} is not a NumPy array; save the archive with numpy.savez"
            ) from None
        # format 3.0 differs from 2.0 only in the header's text encoding
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(member)
        data_size = info.file_size - member.tell()
    if dtype.hasobject:
        raise CompressError(
            f"{path}: {key} holds Python objects, which compress does not unpickle; store numbers or strings"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > data_size:
        raise CompressError(
            f"{path}: {key} declares shape {shape} of {dtype} ({_size(nbytes)}) but its member holds only "
            f"{_size(data_size)}; the archive is corrupt, save it again with numpy.savez"
        )
    budget.claim(path, f"{key} of shape {shape} and dtype {dtype}", nbytes)


def _npz_images(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    """x as (N, C, H, W) or (N, F): numeric and finite."""
    x = arrays[key]
    if x.ndim not in (2, 3, 4):
        raise CompressError(f"{path}: {key} has shape {x.shape}; expected (N,H,W), (N,C,H,W) or (N,F)")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == np.bool_):
        raise CompressError(f"{path}: {key} has dtype {x.dtype}; store it as integers or floats")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise CompressError(f"{path}: {key} contains NaN or infinite values; clean or drop those samples")
    return x[:, None] if x.ndim == 3 else x


def _npz_labels(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    """y as stored: (N,) class indices or floats, or (N, K) label sets or floats (the task says which)."""
    y = arrays[key]
    if y.ndim not in (1, 2):
        raise CompressError(
            f"{path}: {key} has shape {y.shape}; expected (N,) class indices or floats, or (N, K) 0/1 label sets "
            "or floats"
        )
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == np.bool_):
        raise CompressError(f"{path}: {key} has dtype {y.dtype}; store class indices, 0/1 label sets or floats")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise CompressError(f"{path}: {key} contains NaN or infinite values; clean or drop those samples")
    return y.astype(np.uint8) if y.dtype == np.bool_ else y


# --- csv / tsv tables -----------------------------------------------------------------------


@dataclass(frozen=True)
class TableOptions:
    """Which columns of a table are targets, and where its test split is; from ``?target=a,b&test=FILE``."""

    targets: tuple[str, ...] = ()  # empty: the last column
    test: str | None = None  # None: a fixed fifth of the rows


def _split_table_options(location: str) -> tuple[str, TableOptions]:
    """``FILE?target=a,b&test=FILE`` as (FILE, options); a location without '?' has none."""
    path, sep, query = location.partition("?")
    if not sep:
        return location, TableOptions()
    values: dict[str, str] = {}
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if not eq or key not in ("target", "test") or not value:
            raise CompressError(
                f"bad table option {part!r} in '?{query}'; valid options are target=COLUMN[,COLUMN...] and "
                "test=FILE, e.g. csv:train.csv?target=price&test=test.csv"
            )
        if key in values:
            raise CompressError(f"table option {key!r} is given twice in '?{query}'; give it once")
        values[key] = value
    targets = tuple(c.strip() for c in values.get("target", "").split(",") if c.strip())
    return path, TableOptions(targets, values.get("test"))


def _read_table(name: str, path: Path, options: TableOptions) -> RawData:
    """A csv or tsv file with a header row: the ``options.targets`` columns (default the last) are the targets,
    every other column a numeric feature; the test split is ``options.test`` or a fixed fifth of the rows."""
    delimiter = "," if name == "csv" else "\t"
    header, rows = _table_rows(path, delimiter)
    targets = list(options.targets) or [header[-1]]
    missing = [c for c in targets if c not in header]
    if missing:
        raise CompressError(
            f"{path} has no column {missing[0]!r} (its columns: {', '.join(header[:12])}"
            f"{' ...' if len(header) > 12 else ''}); name target columns with ?target=COLUMN[,COLUMN...]"
        )
    if len(set(targets)) != len(targets):
        raise CompressError(f"{path}: a target column is named twice in ?target=; name each once")
    features = [c for c in header if c not in targets]
    if not features:
        raise CompressError(f"{path}: every column is a target, so there are no features; keep at least one")
    x, y = _table_arrays(path, header, rows, features, targets)
    files = [str(path)]
    if options.test is not None:
        test_path = Path(options.test).expanduser()
        test_path = (test_path if test_path.is_absolute() else path.parent / test_path).resolve()
        test_header, test_rows = _table_rows(test_path, delimiter)
        if test_header != header:
            raise CompressError(
                f"{test_path} has columns {', '.join(test_header[:6])}... but {path} has {', '.join(header[:6])}...; "
                "the test file needs the same header"
            )
        x_test, y_test = _table_arrays(test_path, header, test_rows, features, targets)
        x_train, y_train = x, y
        files.append(str(test_path))
    else:
        test = np.zeros(len(y), dtype=bool)
        test[np.random.default_rng(DIGITS_TEST_SEED).permutation(len(y))[: round(DIGITS_TEST_FRACTION * len(y))]] = True
        x_train, y_train, x_test, y_test = x[~test], y[~test], x[test], y[test]
    return RawData(name, x_train, y_train, x_test, y_test, labels=None, scale=1.0, files=files, names=targets)


def _table_rows(path: Path, delimiter: str) -> tuple[list[str], list[list[str]]]:
    import csv

    if not path.is_file():
        raise CompressError(f"table {path} does not exist; give a {'csv' if delimiter == ',' else 'tsv'} file")
    _MemoryBudget().claim(path, "the table", 8 * path.stat().st_size)  # parsed floats take up to ~8x the text
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f, delimiter=delimiter) if row]
    except UnicodeDecodeError as e:
        raise CompressError(f"{path} is not UTF-8 text ({first_line(e)}); save it as UTF-8") from None
    except (OSError, csv.Error) as e:
        raise CompressError(f"cannot read {path} as a table ({first_line(e)}); check the file") from None
    if len(rows) < 2:
        raise CompressError(f"{path} needs a header row and at least one data row; it has {len(rows)} rows")
    header = [c.strip() for c in rows[0]]
    return header, rows[1:]


def _table_arrays(
    path: Path, header: list[str], rows: list[list[str]], features: list[str], targets: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The features (N, F) float32 and targets ((N,) for one column, else (N, K)) of ``rows``."""
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise CompressError(
                f"{path}, line {number}: {len(row)} fields but the header has {len(header)}; fix that row"
            )
    column = {name: i for i, name in enumerate(header)}

    def numbers(names: list[str]) -> np.ndarray:
        out = np.empty((len(rows), len(names)), dtype=np.float64)
        for j, name in enumerate(names):
            for i, row in enumerate(rows):
                try:
                    out[i, j] = float(row[column[name]])
                except ValueError:
                    raise CompressError(
                        f"{path}, line {i + 2}, column {name!r}: {row[column[name]][:40]!r} is not a number; "
                        "every feature and target must be numeric"
                    ) from None
        if not np.isfinite(out).all():
            raise CompressError(f"{path}: a feature or target is NaN or infinite; clean or drop those rows")
        return out

    x = numbers(features).astype(np.float32)
    y = numbers(targets)
    return x, (y[:, 0] if len(targets) == 1 else y)


# --- image folders --------------------------------------------------------------------------


def _read_folder(name: str, directory: Path, options: FolderOptions = FolderOptions()) -> RawData:
    layout_hint = "DIR/train/<class>/*.png and DIR/test/<class>/*.png"
    _require_dir(directory, name, layout_hint)
    train_dirs = _class_dirs(directory / "train", layout_hint)
    test_dirs = _class_dirs(directory / "test", layout_hint)
    classes = sorted(train_dirs)
    extra = sorted(set(test_dirs) - set(train_dirs))
    if extra:
        raise CompressError(
            f"{directory / 'test'} has classes missing from train: "
            f"{', '.join(extra)}; every test class needs a train folder"
        )
    train_files, y_train = _list_images(train_dirs, classes)
    test_files, y_test = _list_images(test_dirs, classes)
    for split, files in (("train", train_files), ("test", test_files)):
        if not files:
            raise CompressError(f"{directory / split} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add some")
    files = train_files + test_files
    headers = [_header(p) for p in files]
    size = options.size
    if size is None:
        size = headers[0][1]
        other = next((i for i, (_, s) in enumerate(headers) if s != size), None)
        if other is not None:
            w, h = headers[other][1]
            raise CompressError(
                f"images in {directory} differ in size: {files[0].relative_to(directory)} is {size[0]}x{size[1]} "
                f"but {files[other].relative_to(directory)} is {w}x{h}; add ?size=WxH to the data path to bring "
                f"every image to the model's input size, e.g. folder:{directory}?size=224x224 (aspect kept by a "
                "centre crop; &fit=pad or &fit=stretch otherwise)"
            )
    if options.channels is None:
        channels = "gray" if all(m in _GRAY_MODES for m, _ in headers) else "rgb"
    else:
        channels = options.channels
    width, height = size
    depth = 1 if channels == "gray" else 3
    _MemoryBudget().claim(
        directory,
        f"{len(headers)} images of {width}x{height} pixels and {depth} channel{'s' * (depth > 1)}",
        len(headers) * depth * width * height,
    )
    return RawData(
        name,
        _load_images(train_files, channels, size, options.fit),
        y_train,
        _load_images(test_files, channels, size, options.fit),
        y_test,
        labels=classes,
        scale=1 / 255,
        files=[str(p) for p in train_files + test_files],
    )


def _class_dirs(split_dir: Path, layout_hint: str) -> dict[str, Path]:
    if not split_dir.is_dir():
        raise CompressError(f"{split_dir} does not exist; a folder source needs {layout_hint}")
    dirs = {p.name: p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not dirs:
        raise CompressError(
            f"{split_dir} has no class sub-folders; put each class's images in its own sub-folder, e.g. train/cat/1.png"
        )
    return dirs


def _list_images(class_dirs: dict[str, Path], classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image files in class then name order, with their class indices."""
    files, labels = [], []
    for index, cls in enumerate(classes):
        if cls not in class_dirs:
            continue
        found = sorted(
            p
            for p in class_dirs[cls].iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        files += found
        labels += [index] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """An image's mode and (width, height), read without decoding the pixels; refused above MAX_IMAGE_PIXELS."""
    # Pillow's own limit, above ours, warns before it refuses: such images are refused below in one line instead
    with warnings.catch_warnings(), _image_errors(path):
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            mode, (width, height) = img.mode, img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise CompressError(
            f"image {path} is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS} compress decodes; {_DOWNSCALE}"
        )
    return mode, (width, height)


def _load_images(files: list[Path], channels: str, size: tuple[int, int], fit: str = "crop") -> np.ndarray:
    """Decode every file into one uint8 (N, C, H, W) array: converted to ``channels`` (rgb, bgr or
    gray) and brought to ``size`` (width, height) as ``fit`` says (an image of that size is kept as is)."""
    mode = "L" if channels == "gray" else "RGB"
    out = np.empty((len(files), 1 if mode == "L" else 3, size[1], size[0]), dtype=np.uint8)
    for i, path in enumerate(files):
        with _image_errors(path), Image.open(path) as img:
            converted = _fit(img.convert(mode), size, fit)
        pixels = np.asarray(converted)
        planes = pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)
        out[i] = planes[::-1] if channels == "bgr" else planes
    return out


def _fit(img: Image.Image, size: tuple[int, int], fit: str) -> Image.Image:
    """``img`` as exactly ``size`` (width, height), bilinear. crop: the centred box of the target's aspect
    is scaled to it (scaled to cover, centre-cropped, with no oversized intermediate); pad: scaled to fit
    inside and centred on black; stretch: scaled to it, aspect not kept."""
    (w, h), (width, height) = img.size, size
    if (w, h) == size:
        return img
    if fit == "stretch":
        return img.resize(size, Image.Resampling.BILINEAR)
    if fit == "crop":
        if w * height > width * h:  # wider than the target: crop the sides
            crop_w = h * width / height
            box = ((w - crop_w) / 2, 0.0, (w + crop_w) / 2, float(h))
        else:  # taller (or the same aspect): crop top and bottom
            crop_h = w * height / width
            box = (0.0, (h - crop_h) / 2, float(w), (h + crop_h) / 2)
        return img.resize(size, Image.Resampling.BILINEAR, box=box)
    scale = min(width / w, height / h)
    inner = (min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale))))
    canvas = Image.new(img.mode, size, 0)
    canvas.paste(img.resize(inner, Image.Resampling.BILINEAR), ((width - inner[0]) // 2, (height - inner[1]) // 2))
    return canvas


@contextlib.contextmanager
def _image_errors(path: Path) -> Iterator[None]:
    """Turn whatever Pillow raises on a bad file into a CompressError naming it."""
    try:
        yield
    except Image.DecompressionBombError as e:
        raise CompressError(f"image {path} is too large to decode ({first_line(e)}); {_DOWNSCALE}") from None
    except Exception as e:  # Pillow's decoders raise many unrelated exception types
        raise CompressError(f"cannot read image {path} ({first_line(e)}); fix or remove it") from None


def _require_dir(directory: Path, name: str, expected: str) -> None:
    if not directory.is_dir():
        raise CompressError(
            f"{name} directory {directory} does not exist (or is not a directory); it should contain {expected}"
        )


_BUILT_IN = {"digits": _read_digits, "diabetes": _read_diabetes}  # the BUILT_IN_SOURCES
_PATH_READERS = {
    "mnist": _read_idx_dir,
    "fashion-mnist": _read_idx_dir,
    "npz": _read_npz,
    "folder": _read_folder,
    "csv": None,  # read by _read_table, with its options
    "tsv": None,
}
