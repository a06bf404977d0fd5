"""Input normalisation: ``(raw * scale - mean) / std``, per channel (NCHW) or per feature (NF).

The same record travels in every manifest, so a model is always fed exactly as it was trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CompressError

LAYOUTS = ("NCHW", "NF")
_CHUNK_ELEMENTS = 1 << 22  # float64 working set of the fitting passes: 32 MiB
_CONSTANT_RTOL = 1e-9  # a std this small relative to the mean is rounding noise


@dataclass
class Preprocessing:
    """``apply(raw) = (raw * scale - mean) / std``, statistics broadcast over axis 1."""

    layout: str
    scale: float
    mean: list[float]
    std: list[float]

    def check_input(self, in_shape: tuple[int, ...]) -> None:
        """Raise CompressError unless samples of ``in_shape`` fit this layout and width."""
        if _layout_of(in_shape) != self.layout or in_shape[0] != len(self.mean):
            unit = "channels" if self.layout == "NCHW" else "features"
            raise CompressError(
                f"preprocessing expects {self.layout} samples with {len(self.mean)} {unit}, "
                f"but the data has samples of shape {tuple(in_shape)}; use data of the same "
                "kind as the model was trained on"
            )

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Normalise a batch ``(N, *in_shape)`` of any numeric dtype to C-contiguous float32."""
        raw = np.asarray(raw)
        if raw.ndim < 2:
            raise CompressError(
                f"expected a batch of samples (N, ...), got shape {raw.shape}; add a leading batch axis"
            )
        self.check_input(raw.shape[1:])
        x = np.array(raw, dtype=np.float32, order="C")
        x *= np.float32(self.scale)
        x -= self._broadcast(self.mean)
        x /= self._broadcast(self.std)
        return x

    def to_dict(self) -> dict[str, Any]:
        return {"layout": self.layout, "scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Rebuild from ``to_dict`` output; CompressError when the record is malformed."""
        problem = _dict_problem(d)
        if problem:
            raise CompressError(
                f"malformed preprocessing record: {problem}; it must be the "
                "'preprocessing' written by compress (re-run the stage that "
                "produced this artifact)"
            )
        return cls(
            layout=d["layout"],
            scale=float(d["scale"]),
            mean=[float(v) for v in d["mean"]],
            std=[float(v) for v in d["std"]],
        )

    @classmethod
    def fit(cls, raw_train: np.ndarray, scale: float, layout: str) -> Preprocessing:
        """Per-channel/feature mean and std of ``raw_train * scale``; a std of 0 becomes 1."""
        raw_train = np.asarray(raw_train)
        if raw_train.ndim < 2 or _layout_of(raw_train.shape[1:]) != layout:
            raise CompressError(
                f"cannot fit {layout} preprocessing to data of shape {raw_train.shape}; expected (N, C, H, W) or (N, F)"
            )
        if len(raw_train) == 0:
            raise CompressError(
                "cannot fit preprocessing on an empty training set; provide at least one training sample"
            )
        mean, std = _channel_stats(raw_train, scale)
        std[std == 0] = 1.0
        return cls(layout=layout, scale=float(scale), mean=mean.tolist(), std=std.tolist())

    def _broadcast(self, values: list[float]) -> np.ndarray:
        shape = (1, -1, 1, 1) if self.layout == "NCHW" else (1, -1)
        return np.asarray(values, dtype=np.float32).reshape(shape)


def _layout_of(in_shape: tuple[int, ...]) -> str | None:
    return {3: "NCHW", 1: "NF"}.get(len(in_shape))


def _channel_stats(raw: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of ``raw * scale`` over every axis but 1.

    Computed on the raw values in float64, a chunk at a time, then scaled: exact for integer
    data, so a constant channel gets a std of exactly 0.
    """
    axes = (0,) + tuple(range(2, raw.ndim))
    count = raw.size // raw.shape[1]
    rows = max(1, _CHUNK_ELEMENTS // max(1, raw[0].size))
    mean = _sum_chunks(raw, rows, axes, lambda c: c) / count
    centre = mean.reshape((1, -1) + (1,) * (raw.ndim - 2))
    var = _sum_chunks(raw, rows, axes, lambda c: np.square(c - centre)) / count
    std = np.sqrt(var)
    std[std <= _CONSTANT_RTOL * np.abs(mean)] = 0.0  # float rounding on a constant channel
    return mean * scale, std * scale


def _sum_chunks(raw: np.ndarray, rows: int, axes: tuple[int, ...], fn) -> np.ndarray:
    """``sum(fn(chunk as float64))`` over ``axes``, ``rows`` samples at a time."""
    return sum(fn(raw[i : i + rows].astype(np.float64)).sum(axis=axes) for i in range(0, len(raw), rows))


def _dict_problem(d: Any) -> str | None:
    """What is wrong with a would-be ``to_dict`` record, or None."""
    if not isinstance(d, dict):
        return f"expected a mapping, got {type(d).__name__}"
    missing = [k for k in ("layout", "scale", "mean", "std") if k not in d]
    if missing:
        return f"missing {', '.join(missing)}"
    if d["layout"] not in LAYOUTS:
        return f"layout {d['layout']!r} is not one of {', '.join(LAYOUTS)}"
    if not _is_number(d["scale"]) or not d["scale"] > 0:
        return f"scale {d['scale']!r} is not a positive number"
    for key in ("mean", "std"):
        values = d[key]
        if not isinstance(values, list) or not values or not all(map(_is_number, values)):
            return f"{key} is not a non-empty list of finite numbers"
    if len(d["mean"]) != len(d["std"]):
        return f"mean has {len(d['mean'])} entries but std has {len(d['std'])}"
    if not all(v > 0 for v in d["std"]):
        return "std has an entry that is not positive"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
