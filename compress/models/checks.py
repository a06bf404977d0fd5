"""Argument checks shared by the zoo factories; each failure is a one-line CompressError."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import CompressError


def check_in_shape(model: str, in_shape: Sequence[int]) -> tuple[int, ...]:
    """``in_shape`` as a tuple of positive ints."""
    shape = tuple(in_shape)
    if not shape or not all(_is_int(d) and d > 0 for d in shape):
        raise CompressError(
            f"model '{model}' got input shape {shape}; give positive sizes "
            "without the batch dimension, e.g. 1,28,28 for images or 64 for "
            "features"
        )
    return shape


def image_shape(model: str, in_shape: Sequence[int]) -> tuple[int, int, int]:
    """``in_shape`` as (C, H, W); other ranks are refused with a pointer to ``mlp``."""
    shape = check_in_shape(model, in_shape)
    if len(shape) != 3:
        raise CompressError(
            f"model '{model}' needs image input (C,H,W), got input shape {shape}; "
            "give the shape as C,H,W (e.g. 1,8,8) or use 'mlp' for flat features"
        )
    return shape  # type: ignore[return-value]


def flat_features(model: str, in_shape: Sequence[int]) -> int:
    """The number of features of one flattened input."""
    return math.prod(check_in_shape(model, in_shape))


def check_num_classes(model: str, num_classes: Any) -> int:
    if not _is_int(num_classes) or num_classes < 1:
        raise CompressError(f"model '{model}' got num_classes={num_classes!r}; give a positive number of classes")
    return num_classes


def positive_ints(model: str, name: str, value: Any, allow_empty: bool = False) -> tuple[int, ...]:
    """An int or a sequence of positive ints, as a tuple."""
    values = (value,) if _is_int(value) else value
    ok = isinstance(values, (list, tuple)) and all(_is_int(v) and v > 0 for v in values)
    if not ok or (not values and not allow_empty):
        raise CompressError(
            f"model '{model}': {name} must be positive integers, got {value!r}; write it like {name}=64,128"
        )
    return tuple(values)


def positive_int(model: str, name: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise CompressError(
            f"model '{model}': {name} must be a positive integer, got {value!r}; write it like {name}=16"
        )
    return value


def probability(model: str, name: str, value: Any) -> float:
    """A dropout rate in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise CompressError(
            f"model '{model}': {name} must be a number in [0, 1), got {value!r}; write it like {name}=0.5"
        )
    return float(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
