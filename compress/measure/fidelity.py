"""How faithful a compressed model is to its original: the same inputs through both, outputs compared.

With labels, what matters is accuracy; without them (or besides them), how far the outputs moved:
the agreement of the top-1 class for classifier outputs (N, C), and for any output the cosine
similarity, the relative L2 error and the largest absolute difference.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """``candidate``'s outputs against ``reference``'s, sample by sample (same inputs, same order)."""
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


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float((outputs.argmax(1) == labels).mean())
