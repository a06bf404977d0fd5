"""How faithful a compressed model is to its original: the same inputs through both, outputs compared.

With targets, what matters is the task's metric (accuracy, mAP, RMSE); without them (or besides them), how
far the outputs moved: the agreement of the top-1 class for classifier outputs (N, C), the share of label
decisions kept for multi-label outputs, and for any output the cosine similarity, the relative L2 error and
the largest absolute difference.

What the outputs are comes from the task the model's manifest records (``kind``: classification, multilabel
or regression); without one (``kind`` None), from the output's shape and type: float scores (N, C) of two or
more classes are a classifier's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..tasks import THRESHOLD

# A multi-label output is one logit per label: the label is predicted when its sigmoid reaches THRESHOLD,
# i.e. when the logit reaches this.
DECISION_LOGIT = math.log(THRESHOLD / (1 - THRESHOLD))


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, kind: str | None = None) -> dict[str, Any]:
    """``candidate``'s outputs against ``reference``'s, sample by sample (same inputs, same order); outputs of
    inf or NaN give NaN figures, quietly (the callers say what that means). ``kind``: the task of the outputs
    (None: unknown); top-1 agreement is given for a classifier's outputs only, never for multi-label or
    regression ones, and the share of label decisions changed (``decisions_changed``) for multi-label ones."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        found = _compare(reference, candidate)
        if kind in ("multilabel", "regression"):
            found["top1_agreement"] = None
        if kind == "multilabel" and reference.dtype.kind == "f":
            found["decisions_changed"] = decisions_changed(reference, candidate)
        return found


def _compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    if reference.shape != candidate.shape:
        raise ValueError(f"outputs of shape {candidate.shape} cannot be compared with {reference.shape}")
    ref = reference.astype(np.float64).reshape(len(reference), -1)
    out = candidate.astype(np.float64).reshape(len(candidate), -1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cosine = np.where(norms > 0, (ref * out).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
    scale = float(np.linalg.norm(ref))
    found = {
        "samples": len(reference),
        "cosine": float(cosine.mean()),
        "relative_l2": float(np.linalg.norm(out - ref) / scale) if scale > 0 else float(np.linalg.norm(out)),
        "max_abs_diff": float(np.abs(out - ref).max()) if out.size else 0.0,
        "top1_agreement": None,
    }
    if reference.ndim == 2 and reference.shape[1] > 1:
        found["top1_agreement"] = top1_agreement(reference, candidate)
    return found


# The reference's own scores of two classes closer than this fraction of the sample's score range are
# a tie: the reference did not decide between them, so the candidate choosing the other is no change.
TIE_TOLERANCE = 1e-3


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The fraction of samples whose top-1 class the candidate keeps (ties of the reference kept)."""
    rows = np.arange(len(reference))
    ref_top, cand_top = reference.argmax(1), candidate.argmax(1)
    spread = reference.max(1).astype(np.float64) - reference.min(1)
    margin = reference[rows, ref_top].astype(np.float64) - reference[rows, cand_top]
    return float(((ref_top == cand_top) | (margin <= TIE_TOLERANCE * spread)).mean())


def decisions_changed(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The share of (sample, label) decisions of multi-label logits (label predicted: logit >= the threshold's)
    that the candidate changed; NaN when the candidate gives inf or NaN (as the other figures)."""
    if not reference.size:
        return 0.0
    if not np.isfinite(candidate).all():
        return math.nan
    return float(np.mean((reference >= DECISION_LOGIT) != (candidate >= DECISION_LOGIT)))


def gives_classes(output: np.ndarray) -> bool:
    """A classifier's output: float scores of two or more classes for each sample, (N, C)."""
    return output.ndim == 2 and output.shape[1] > 1 and output.dtype.kind == "f"


def classifier_accuracy(output: np.ndarray, labels: np.ndarray | None) -> float | None:
    """The share of samples whose top-1 class is their label; None without labels or classes (or when a
    label is not one of the output's classes: the labels are not the model's)."""
    if labels is None or not gives_classes(output) or len(labels) != len(output) or not len(labels):
        return None
    if labels.ndim != 1:  # label sets or regression targets: not class indices
        return None
    if labels.max() >= output.shape[1]:
        return None
    return float((output.argmax(1) == labels).mean())


def loss_measure(output: np.ndarray, kind: str | None = None) -> str:
    """What the fidelity loss of ``output`` is, without labels (see :func:`compare_all`). ``kind``, the task
    of the outputs when known, decides before their shape: multi-label logits are judged by their label
    decisions, regression outputs (even several per sample) by their relative L2 error."""
    if kind == "multilabel" and output.dtype.kind == "f":
        return "label decisions changed in percent"
    if kind == "regression" and output.dtype.kind == "f":
        return "relative L2 error in percent"
    if gives_classes(output):
        return "top-1 disagreements in points"
    if output.dtype.kind in "iub":
        return "changed values in percent"
    return "relative L2 error in percent"


def compare_all(
    references: list[np.ndarray], candidates: list[np.ndarray], names: list[str], kind: str | None = None
) -> dict[str, Any]:
    """Every output of a candidate against the reference's: the first output's figures, its loss in
    points without labels (top-1 disagreements for classes, the share of changed label decisions for
    multi-label logits, the share of changed values for integer outputs, else the relative L2 error in
    percent), and each output's figures under ``outputs``. ``kind``: the task of the first output (the
    model's), when known (see :func:`loss_measure`); the other outputs are judged by their shape."""
    each = []
    for i, (name, reference, candidate) in enumerate(zip(names, references, candidates)):
        found = compare_outputs(reference, candidate, kind if i == 0 else None)
        if reference.dtype.kind in "iub":
            found["changed"] = float(np.mean(reference != candidate)) if reference.size else 0.0
        each.append({"name": name, **found})
    first = dict(each[0])
    first.pop("name")
    measure = loss_measure(references[0], kind)
    if measure.startswith("top-1"):
        loss = 100 * (1 - first["top1_agreement"])
    elif measure.startswith("label decisions"):
        loss = 100 * first["decisions_changed"]
    elif measure.startswith("changed"):
        loss = 100 * first["changed"]
    else:
        loss = 100 * first["relative_l2"]
    first.pop("changed", None)
    return {**first, "loss_points": loss, "outputs": each if len(each) > 1 else None}
