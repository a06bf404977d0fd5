"""``load_dataset``: read a source, check it, carve validation off train, normalise."""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from ..errors import CompressError
from .preprocessing import Preprocessing
from .sources import RawData, read_source

MAX_VAL_FRACTION = 0.9
logger = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Preprocessed float32 splits of one data source, plus what identifies them."""

    spec: str
    name: str
    labels: list[str]
    in_shape: tuple[int, ...]
    preprocessing: Preprocessing
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    fingerprint: str
    files: list[str]
    val_fraction: float
    split_seed: int

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for manifests."""
        return {
            "spec": self.spec,
            "name": self.name,
            "fingerprint": self.fingerprint,
            "num_classes": self.num_classes,
            "in_shape": list(self.in_shape),
            "val_fraction": self.val_fraction,
            "split_seed": self.split_seed,
            "sizes": {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)},
        }


# how inputs of a model without a manifest were normalised (see load_dataset_for)
PreprocessingChoice = Literal["fit", "scale", "raw"]
PREPROCESSING_HELP = (
    "how its inputs were normalised (fit: mean/std of the training split, as compress train does; scale: "
    "pixels to [0, 1]; raw); a manifest always wins"
)


def load_dataset(
    spec: str, val_fraction: float = 0.1, split_seed: int = 0, preprocessing: Preprocessing | str | None = None
) -> Dataset:
    """Load ``spec`` and normalise it.

    ``preprocessing``: a :class:`Preprocessing` to reuse, or ``None``/``"fit"`` to fit mean and
    std on the training split, ``"scale"`` for the source's scale alone (e.g. pixels to [0, 1]),
    ``"raw"`` for the values as stored.
    """
    _check_split_args(val_fraction, split_seed)
    raw = read_source(spec)
    _check_raw(raw, spec)
    in_shape = tuple(int(d) for d in raw.x_train.shape[1:])
    train_idx, val_idx = split_indices(len(raw.y_train), val_fraction, split_seed)
    x_train = raw.x_train[train_idx]
    if preprocessing is None or preprocessing == "fit":
        preprocessing = Preprocessing.fit(x_train, raw.scale, raw.layout)
    elif preprocessing in ("scale", "raw"):
        preprocessing = Preprocessing(
            layout=raw.layout,
            scale=raw.scale if preprocessing == "scale" else 1.0,
            mean=[0.0] * in_shape[0],
            std=[1.0] * in_shape[0],
        )
    elif isinstance(preprocessing, Preprocessing):
        preprocessing.check_input(in_shape)
    else:
        raise CompressError(
            f"unknown preprocessing {preprocessing!r}; use one of {', '.join(get_args(PreprocessingChoice))}"
        )
    return Dataset(
        spec=spec,
        name=raw.name,
        labels=list(raw.labels),
        in_shape=in_shape,
        preprocessing=preprocessing,
        x_train=preprocessing.apply(x_train),
        y_train=raw.y_train[train_idx],
        x_val=preprocessing.apply(raw.x_train[val_idx]),
        y_val=raw.y_train[val_idx],
        x_test=preprocessing.apply(raw.x_test),
        y_test=raw.y_test,
        fingerprint=fingerprint(raw),
        files=list(raw.files),
        val_fraction=float(val_fraction),
        split_seed=int(split_seed),
    )


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices of ``range(n)``: a seeded random ``val_fraction`` for val."""
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def fingerprint(raw: RawData) -> str:
    """sha256 over dtype, shape and bytes of the raw train and test images and labels."""
    return fingerprint_arrays([raw.x_train, raw.y_train, raw.x_test, raw.y_test])


def fingerprint_arrays(arrays: list[np.ndarray]) -> str:
    """sha256 over dtype, shape and bytes of ``arrays``, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _check_split_args(val_fraction: float, split_seed: int) -> None:
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, numbers.Real)
        or not (math.isfinite(val_fraction) and 0 <= val_fraction < MAX_VAL_FRACTION)
    ):
        raise CompressError(
            f"validation fraction must be in [0, {MAX_VAL_FRACTION}), got "
            f"{val_fraction!r}; use e.g. 0.1 (or 0 for no validation split)"
        )
    if isinstance(split_seed, bool) or not isinstance(split_seed, numbers.Integral) or split_seed < 0:
        raise CompressError(f"split seed must be a non-negative integer, got {split_seed!r}; use e.g. 0")


def _check_raw(raw: RawData, spec: str) -> None:
    """Every split non-empty and every label a valid class index."""
    num_classes = len(raw.labels)
    for split, y in (("train", raw.y_train), ("test", raw.y_test)):
        if len(y) == 0:
            raise CompressError(f"{spec}: the {split} set has no samples; provide at least one")
        bad = y[(y < 0) | (y >= num_classes)]
        if len(bad):
            raise CompressError(
                f"{spec}: {split} label {int(bad[0])} is out of range for {num_classes} "
                f"classes (valid: 0..{num_classes - 1}); fix the labels, or for npz give a "
                "'labels' array naming every class"
            )


def load_dataset_for(
    artifact: str,
    manifest: dict | None,
    data: str | None = None,
    preprocessing: str | None = None,
    cache: dict[tuple, Dataset] | None = None,
) -> Dataset:
    """The data to feed ``artifact``: its manifest's data and preprocessing.

    ``data`` replaces the manifest's data source (same preprocessing). ``preprocessing`` is for a
    model whose manifest does not record one: a manifest that does always wins (it says how the
    model was trained; a flag given for other models of the same command must not change that).
    Without a manifest both must be given, since nothing else says how the inputs were normalised.
    ``cache``: datasets already loaded by this command, so that models fed alike share one load.
    """
    recorded = (manifest or {}).get("data") or {}
    spec = data or recorded.get("spec")
    if spec is None:
        raise CompressError(f"{artifact} has no manifest naming its data; pass --data (e.g. --data mnist:DIR)")
    if manifest and manifest.get("preprocessing"):
        chosen: Preprocessing | str = Preprocessing.from_dict(manifest["preprocessing"])
        if preprocessing is not None:
            logger.info(
                "%s is fed as its manifest records; --preprocessing %s applies only to models without one",
                artifact,
                preprocessing,
            )
    elif preprocessing is None:
        raise CompressError(
            f"{artifact} has no manifest, so how its inputs were normalised is "
            "unknown; pass --preprocessing fit (mean/std of the training split, "
            "as compress train does), scale (pixels to [0, 1]) or raw"
        )
    else:
        chosen = preprocessing
    val_fraction, split_seed = recorded.get("val_fraction", 0.1), recorded.get("split_seed", 0)
    key = (spec, val_fraction, split_seed, repr(chosen))
    if cache is not None and key in cache:
        return cache[key]
    try:
        dataset = load_dataset(spec, val_fraction=val_fraction, split_seed=split_seed, preprocessing=chosen)
    except CompressError as exc:
        if data is None:  # the source recorded in the manifest: it may have moved
            raise CompressError(
                f"{exc} (the data recorded in the manifest of {artifact}; pass --data to read it from elsewhere)"
            ) from None
        raise
    if cache is not None:
        cache[key] = dataset
    return dataset
