"""The samples a stage feeds an ONNX model of any signature, from whichever source there is.

* ``--data`` naming a data source (digits, mnist:DIR, npz:FILE with x_train..., folder:DIR), or the data
  in the model's manifest: a :class:`~compress.data.Dataset`, for models with one batched input;
* ``--data npz:FILE`` whose arrays are named after the model's inputs (one sample per row; inputs without
  a batch axis: the array fed whole) and optionally ``y``, one label per sample: fed as stored, cast to the
  declared types;
* nothing: synthetic samples from the signature (``--shape`` and ``--input-range`` where needed); then
  only latency and how far outputs move can be measured, never accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import CompressError
from ..feeds import Samples, for_inputs, signature_record, synthetic
from ..tasks import CLASSIFICATION, Task, infer_task, task_of
from .dataset import Dataset, fingerprint_arrays, load_dataset_for, split_indices
from .sources import load_npz, npz_members

logger = logging.getLogger(__name__)

# arrays named after the inputs: this part of the samples is held out (judging int8), the rest calibrates
HELD_OUT_FRACTION = 0.2
LABELS_KEY = "y"  # one class index per sample, beside arrays named after the inputs
CLASS_NAMES_KEY = "labels"


@dataclass
class ModelData:
    """Samples for one model: calibration (``train``), held-out (``val``, may be None) and ``test``
    splits, targets where known (None: accuracy cannot be measured) as the ONNX model's outputs are
    compared with them (class indices, 0/1 label sets, regression targets in their own units), and the
    ``task`` that says how."""

    kind: Literal["dataset", "arrays", "synthetic"]
    spec: str | None
    train: Samples | None
    val: Samples | None
    y_val: np.ndarray | None
    test: Samples
    y_test: np.ndarray | None
    labels: list[str] | None
    fingerprint: str
    task: Task = CLASSIFICATION
    dataset: Dataset | None = None  # for kind "dataset": what manifests record
    inputs: list[dict[str, Any]] | None = None  # for kind "synthetic": how the values were drawn

    def describe(self) -> str:
        return self.spec if self.spec is not None else "synthetic inputs"


def load_model_data(
    path: str | Path,
    model,
    manifest: dict | None,
    data: str | None,
    preprocessing: str | None,
    shapes: dict[str, tuple[int, ...]],
    ranges: dict[str, tuple[float, float]],
    synthetic_samples: int,
    seed: int = 0,
    cache: dict | None = None,
) -> ModelData:
    """The samples to feed ``model`` (an :class:`~compress.onnx_io.OnnxModel` read from ``path``): see the
    module's description. CompressError when the data does not fit the model's inputs."""
    recorded = ((manifest or {}).get("data") or {}).get("spec")
    spec = data or recorded
    if spec is None:
        samples = synthetic(model.inputs, synthetic_samples, shapes, ranges, model.name, seed)
        return ModelData(
            kind="synthetic",
            spec=None,
            train=samples,
            val=samples,
            y_val=None,
            test=samples,
            y_test=None,
            labels=None,
            fingerprint=f"synthetic/{seed}/{sorted(shapes.items())}/{sorted(ranges.items())}",
            inputs=signature_record(model.inputs, ranges),
            task=task_of(manifest),
        )
    members = set(npz_members(Path(spec.removeprefix("npz:")))) if spec.startswith("npz:") else set()
    if members & {i.name for i in model.inputs} and "x_train" not in members:  # not a data source's x_train...
        if preprocessing is not None:
            logger.info(
                "%s: arrays named after the model's inputs are fed as stored; --preprocessing is not used", spec
            )
        return _from_arrays(spec, members, model, seed, manifest)
    if len(model.inputs) != 1 or model.inputs[0].batch_axis is None:
        raise CompressError(
            f"{model.name} takes {len(model.inputs)} inputs ({model.signature()}), but {spec} gives one array per "
            "sample; give --data npz:FILE with one array named after each input (one sample per row) and "
            f"optionally {LABELS_KEY!r} (labels), or leave out --data to measure latency on synthetic inputs"
        )
    dataset = load_dataset_for(str(path), manifest, data, preprocessing, cache=cache)
    name = model.inputs[0].name

    def samples(x: np.ndarray) -> Samples:
        return for_inputs(model.inputs, {name: x}, dataset.spec, model.name)

    return ModelData(
        kind="dataset",
        spec=dataset.spec,
        train=samples(dataset.x_train),
        val=samples(dataset.x_val) if len(dataset.y_val) else None,
        y_val=dataset.in_units(dataset.y_val) if len(dataset.y_val) else None,
        test=samples(dataset.x_test),
        y_test=dataset.in_units(dataset.y_test),
        labels=dataset.labels,
        fingerprint=dataset.fingerprint,
        task=dataset.task,
        dataset=dataset,
    )


def _from_arrays(spec: str, members: set[str], model, seed: int, manifest: dict | None) -> ModelData:
    """The arrays of an npz archive whose ``members`` are named after the model's inputs."""
    path = Path(spec.removeprefix("npz:"))
    names = tuple(i.name for i in model.inputs)
    optional = tuple(k for k in (LABELS_KEY, CLASS_NAMES_KEY) if k in members)
    arrays = load_npz(path, required=tuple(n for n in names if n in members) or names, optional=optional)
    samples = for_inputs(model.inputs, {n: arrays[n] for n in names if n in arrays}, spec, model.name)
    n = len(samples)
    if not samples.arrays or n == 0:
        raise CompressError(f"{spec} holds no samples for the batched inputs of {model.name}; give at least one")
    recorded = task_of(manifest).name if (manifest or {}).get("task") else None
    y, task = _targets(arrays.get(LABELS_KEY), n, spec, recorded)
    classes = arrays.get(CLASS_NAMES_KEY)
    labels = [str(v) for v in classes.reshape(-1).tolist()] if classes is not None else None
    if y is not None and labels is None:
        labels = [str(i) for i in range(int(y.max()) + 1 if task is CLASSIFICATION else y.shape[1])]
    if y is not None and task is CLASSIFICATION and y.max() >= len(labels):
        raise CompressError(f"{spec}: label {int(y.max())} is out of range for the {len(labels)} names in 'labels'")
    calibrate, held_out = split_indices(n, HELD_OUT_FRACTION, seed) if n > 1 else (np.arange(1), np.arange(1))
    return ModelData(
        kind="arrays",
        spec=spec,
        train=samples.rows(calibrate),
        val=samples.rows(held_out),
        y_val=None if y is None else y[held_out],
        test=samples,
        y_test=y,
        labels=labels,
        fingerprint=fingerprint_arrays([*samples.arrays.values(), *samples.constants.values()]),
        task=task,
    )


def _targets(y: np.ndarray | None, n: int, spec: str, recorded: str | None) -> tuple[np.ndarray | None, Task]:
    """The targets ``y`` (one row per sample) and their task: the one the model's manifest records, else inferred
    (as for a data source); without targets, the recorded task or classification."""
    if y is None:
        return None, task_of({"task": {"kind": recorded}} if recorded else None)
    if len(y) != n:
        raise CompressError(f"{spec}: {LABELS_KEY!r} has {len(y)} rows but the inputs have {n} samples; give one each")
    task = infer_task(y, recorded, f"{spec} ({LABELS_KEY!r})")
    if task is CLASSIFICATION:
        if y.ndim != 1 or (len(y) and y.min() < 0):
            raise CompressError(
                f"{spec}: {LABELS_KEY!r} must hold one non-negative class index per sample ({n}), got "
                f"{y.dtype} of shape {list(y.shape)}"
            )
        return y.astype(np.int64), task
    return np.asarray(y, dtype=np.float32).reshape(n, -1), task
