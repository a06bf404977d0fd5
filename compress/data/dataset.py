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
from ..tasks import CLASSIFICATION, TargetScaling, Task, infer_task, task_of
from .preprocessing import Preprocessing
from .sources import MAX_CLASSES, RawData, read_source

MAX_VAL_FRACTION = 0.9
logger = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Preprocessed float32 splits of one data source, plus what identifies them.

    The targets ``y_*`` are what networks learn: class indices (int64), 0/1 label sets (float32, (N, K)) or
    regression targets standardised by ``target_scaling`` (float32, (N, K))."""

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
    task: Task = CLASSIFICATION
    target_scaling: TargetScaling | None = None  # regression: how the targets were standardised

    @property
    def num_classes(self) -> int:
        """The width of a model's output: classes, labels or regression targets."""
        return len(self.labels)

    def in_units(self, values: np.ndarray) -> np.ndarray:
        """Targets or network outputs in the targets' own units (regression; others as they are)."""
        return values if self.target_scaling is None else self.target_scaling.to_units(values)

    def task_record(self) -> dict[str, Any]:
        """The manifest's ``task`` record of a network trained on this data."""
        return self.task.record(self.target_scaling)

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
            "task": self.task.name,
            "sizes": {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)},
        }


# how inputs of a model without a manifest were normalised (see load_dataset_for)
PreprocessingChoice = Literal["fit", "scale", "raw"]
PREPROCESSING_HELP = (
    "how its inputs were normalised (fit: mean/std of the training split, as compress train does; scale: "
    "pixels to [0, 1]; raw); a manifest always wins"
)


def load_dataset(
    spec: str,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    preprocessing: Preprocessing | str | None = None,
    task: str | None = None,
    target_scaling: TargetScaling | None = None,
) -> Dataset:
    """Load ``spec`` and normalise it.

    ``preprocessing``: a :class:`Preprocessing` to reuse, or ``None``/``"fit"`` to fit mean and
    std on the training split, ``"scale"`` for the source's scale alone (e.g. pixels to [0, 1]),
    ``"raw"`` for the values as stored. ``task``: what the targets are (``--task``; None: what the source
    says, else inferred from the targets). ``target_scaling``: for regression, the standardisation a network
    was trained with (None: fitted on the training split).
    """
    _check_split_args(val_fraction, split_seed)
    raw = read_source(spec)
    chosen_task = infer_task(raw.y_train, task or raw.task, f"{spec} (y_train)")
    infer_task(raw.y_test, chosen_task.name, f"{spec} (y_test)")
    labels, y_train, y_test = _targets(raw, chosen_task, spec)
    in_shape = tuple(int(d) for d in raw.x_train.shape[1:])
    train_idx, val_idx = split_indices(len(y_train), val_fraction, split_seed)
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
    if chosen_task.name == "regression":
        if target_scaling is None:
            target_scaling = TargetScaling.fit(y_train[train_idx])
        elif len(target_scaling.mean) != y_train.shape[1]:
            raise CompressError(
                f"{spec} has {y_train.shape[1]} regression targets but the model was trained on "
                f"{len(target_scaling.mean)}; use the data it was trained on"
            )
        y_train, y_test = target_scaling.standardise(y_train), target_scaling.standardise(y_test)
    else:
        target_scaling = None
    return Dataset(
        spec=spec,
        name=raw.name,
        labels=labels,
        in_shape=in_shape,
        preprocessing=preprocessing,
        x_train=preprocessing.apply(x_train),
        y_train=y_train[train_idx],
        x_val=preprocessing.apply(raw.x_train[val_idx]),
        y_val=y_train[val_idx],
        x_test=preprocessing.apply(raw.x_test),
        y_test=y_test,
        fingerprint=fingerprint(raw),
        files=list(raw.files),
        val_fraction=float(val_fraction),
        split_seed=int(split_seed),
        task=chosen_task,
        target_scaling=target_scaling,
    )


def _targets(raw: RawData, task: Task, spec: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The names of the classes, labels or targets, and the train and test targets as ``task`` learns them."""
    for split, y in (("train", raw.y_train), ("test", raw.y_test)):
        if len(y) == 0:
            raise CompressError(f"{spec}: the {split} set has no samples; provide at least one")
    if task.name == "classification":
        for split, y in (("train", raw.y_train), ("test", raw.y_test)):
            # checked before the cast, which would wrap values beyond int64
            if y.max() >= MAX_CLASSES:
                raise CompressError(
                    f"{spec}: y_{split} holds label {int(y.max())}, beyond the {MAX_CLASSES} classes compress "
                    "supports; labels must be class indices 0..K-1 (K = number of classes)"
                )
        y_train, y_test = raw.y_train.astype(np.int64), raw.y_test.astype(np.int64)
        labels = raw.labels
        if labels is None:
            labels = [str(i) for i in range(int(max(y_train.max(), y_test.max())) + 1)]
        _check_labels(y_train, y_test, len(labels), spec)
        return list(labels), y_train, y_test
    y_train, y_test = (np.asarray(y, dtype=np.float32).reshape(len(y), -1) for y in (raw.y_train, raw.y_test))
    width = y_train.shape[1]
    names = raw.names or raw.labels
    if names is not None and len(names) != width:
        raise CompressError(
            f"{spec} names {len(names)} {'labels' if task.name == 'multilabel' else 'targets'} but its targets have "
            f"{width} columns; give one name per column"
        )
    if names is None:
        names = ["target"] if task.name == "regression" and width == 1 else [str(i) for i in range(width)]
    return list(names), y_train, y_test


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


def _check_labels(y_train: np.ndarray, y_test: np.ndarray, num_classes: int, spec: str) -> None:
    """Every label a valid class index."""
    for split, y in (("train", y_train), ("test", y_test)):
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
    task = task_of(manifest).name if manifest else None
    scaling = TargetScaling.from_record((manifest or {}).get("task"))
    key = (spec, val_fraction, split_seed, repr(chosen), task, scaling)
    if cache is not None and key in cache:
        return cache[key]
    try:
        dataset = load_dataset(spec, val_fraction, split_seed, chosen, task, scaling)
    except CompressError as exc:
        if data is None:  # the source recorded in the manifest: it may have moved
            raise CompressError(
                f"{exc} (the data recorded in the manifest of {artifact}; pass --data to read it from elsewhere)"
            ) from None
        raise
    if cache is not None:
        cache[key] = dataset
    return dataset
