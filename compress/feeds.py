"""What an ONNX model is fed: its inputs as declared (type, shape, batch axis), batches of samples for
them, and synthetic samples made from the signature alone when there is no data.

Samples travel with one sample per row along axis 0 of every batched input (the convention of data
files); :meth:`Samples.feeds` moves them to the axis the model declares as its batch axis (a recurrent
state of shape ``[2, batch, 128]`` takes them on axis 1) and casts them to the declared type. Inputs
without a batch axis (a scalar sample rate, a fixed-size state) are fed the same array for every batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CompressError
from .hardware import available_memory_bytes

# ONNX Runtime's type names of the tensors compress can feed, as NumPy types
NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class Input:
    """One input of a model: its declared type and dimensions (ints, or str/None where symbolic), the
    axis that holds the samples of a batch (None: fed whole), and, for integer ids that index an
    embedding table, the table's size."""

    name: str
    type: str
    dims: tuple
    batch_axis: int | None
    vocabulary: int | None = None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(NUMPY_TYPES[self.type])

    @property
    def sample_dims(self) -> tuple:
        """The dimensions of one sample: all but the batch axis."""
        return tuple(d for i, d in enumerate(self.dims) if i != self.batch_axis)

    def shown(self) -> str:
        """``int32 [N, 2048]``."""
        return f"{dtype_name(self.type)} {shown_dims(self.dims)}"


def dtype_name(tensor_type: str) -> str:
    """``tensor(float)`` -> ``float32``: an ONNX Runtime tensor type as NumPy names it."""
    inner = tensor_type[len("tensor(") : -1]
    return {"float": "float32", "double": "float64"}.get(inner, inner)


def shown_dims(dims) -> str:
    """``[N, 3, ?, ?]``: dimensions with symbolic ones by name, unknown ones as ``?``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def batch_axes(shapes: list[list]) -> list[tuple[int | None, bool]]:
    """Where each tensor of ``shapes`` holds the samples of a batch, judged from the first input, and
    whether that is certain.

    The first input's leading axis is the batch. Where it is a named symbolic dimension, a tensor with
    the same symbol holds the batch there (certain). Otherwise the first axis of a tensor that is
    symbolic (when the batch is) or the same number as the batch holds it (a guess: exporters name the
    batch of each tensor differently, e.g. ``unk__214`` in and ``unk__215`` out, or not at all, as in a
    state of shape ``[2, ?, 128]``). Scalars and tensors without such an axis hold none.
    """
    if not shapes or not shapes[0]:
        return [(None, False)] * len(shapes)
    batch = shapes[0][0]
    axes: list[tuple[int | None, bool]] = []
    for dims in shapes:
        if isinstance(batch, str) and batch in dims:
            axes.append((list(dims).index(batch), True))
            continue
        like_batch = [
            i for i, d in enumerate(dims) if (d == batch if isinstance(batch, int) else not isinstance(d, int))
        ]
        axes.append((like_batch[0], False) if like_batch else (None, False))
    return axes


def fits(dims: tuple, shape: tuple) -> bool:
    """An array of ``shape`` fits declared ``dims`` (symbolic dimensions take any size)."""
    return len(dims) == len(shape) and all(not isinstance(d, int) or d == s for d, s in zip(dims, shape))


class Samples:
    """Samples for every input of a model: ``arrays`` hold one sample per row (axis 0) for the batched
    inputs, ``constants`` the arrays of inputs without a batch axis, fed whole."""

    def __init__(self, arrays: dict[str, np.ndarray], constants: dict[str, np.ndarray] | None = None):
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) > 1:
            counts = ", ".join(f"{name} {len(a)}" for name, a in arrays.items())
            raise CompressError(f"the inputs have different numbers of samples ({counts}); give each as many")
        self.arrays = arrays
        self.constants = constants or {}

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 1

    def rows(self, index: slice | np.ndarray) -> Samples:
        return Samples({name: a[index] for name, a in self.arrays.items()}, self.constants)

    def batch(self, size: int) -> Samples:
        """``size`` samples (repeated when there are fewer), contiguous, made once."""
        index = np.arange(size) % len(self)
        return Samples({name: np.ascontiguousarray(a[index]) for name, a in self.arrays.items()}, self.constants)

    def padded(self, size: int) -> Samples:
        """Filled up to ``size`` samples with zeros (for models with a fixed batch size)."""
        return Samples(
            {
                name: np.concatenate([a, np.zeros((size - len(a), *a.shape[1:]), a.dtype)])
                for name, a in self.arrays.items()
            },
            self.constants,
        )

    def feeds(self, inputs: list[Input]) -> dict[str, np.ndarray]:
        """The arrays as ONNX Runtime takes them: samples on each input's batch axis."""
        feeds = {}
        for spec in inputs:
            if spec.batch_axis is None:
                feeds[spec.name] = self.constants[spec.name]
            else:
                array = self.arrays[spec.name]
                feeds[spec.name] = (
                    np.ascontiguousarray(np.moveaxis(array, 0, spec.batch_axis)) if spec.batch_axis else array
                )
        return feeds

    def describe(self) -> str:
        """``bytes [16, 2048]``, the arrays and their shapes, for messages."""
        parts = [f"{name} {list(a.shape)}" for name, a in (*self.arrays.items(), *self.constants.items())]
        return ", ".join(parts)


def for_inputs(inputs: list[Input], arrays: dict[str, np.ndarray], source: str, model_name: str) -> Samples:
    """``arrays`` (named after the inputs; samples along axis 0 for batched ones) checked against the
    declared inputs of ``model_name`` and cast to their types: a missing or extra array, a sample shape
    that does not fit, or values the type cannot hold (fractions for integer ids, say) is a CompressError
    naming ``source``."""
    names = [spec.name for spec in inputs]
    missing = [n for n in names if n not in arrays]
    extra = [n for n in arrays if n not in names]
    if missing or extra:
        problem = f"lacks {', '.join(map(repr, missing))}" if missing else f"has {', '.join(map(repr, extra))} too"
        raise CompressError(
            f"{source} {problem}; the inputs of {model_name} are "
            f"{', '.join(spec.name + ' ' + spec.shown() for spec in inputs)}, one array for each, named after it"
        )
    batched, constants = {}, {}
    for spec in inputs:
        array = np.asarray(arrays[spec.name])
        if spec.batch_axis is not None:
            _check_samples_fit(spec, array.shape[1:], source, model_name)
        elif not fits(spec.dims, array.shape):
            raise CompressError(
                f"{model_name} takes input {spec.name!r} as {spec.shown()}, fed whole, but {source} gives an array "
                f"of shape {list(array.shape)}; give it the declared shape"
            )
        (batched if spec.batch_axis is not None else constants)[spec.name] = cast_to(array, spec, source)
    return Samples(batched, constants)


def _check_samples_fit(spec: Input, shape: tuple, source: str, model_name: str) -> None:
    dims = spec.sample_dims
    if fits(dims, shape):
        return
    shown = shown_dims(spec.dims)
    # (C, H, W) samples against an (H, W, C) input whose channel axis is fixed: a channels-last model
    if len(shape) == 3 and fits(dims, (*shape[1:], shape[0])) and isinstance(dims[-1], int):
        raise CompressError(
            f"{model_name} takes input {spec.name!r} of shape {shown}, channels last (NHWC), but compress feeds "
            f"NCHW samples ({source}: {list(shape)}); transpose to NCHW: re-export the model with an (N, C, H, W) "
            "input, or put a Transpose(perm=[0, 2, 3, 1]) in front of its input"
        )
    raise CompressError(
        f"{model_name} takes input {spec.name!r} of shape {shown} but {source} gives samples of shape "
        f"{list(shape)}; use the data the model was trained on"
    )


def cast_to(array: np.ndarray, spec: Input, source: str) -> np.ndarray:
    """``array`` as ``spec``'s type; values that type cannot hold exactly are a CompressError."""
    dtype = spec.dtype
    if array.dtype == dtype:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise CompressError(f"{source} gives input {spec.name!r} as {array.dtype}; give numbers")
    if dtype.kind in "iub" and array.size:
        exact = array.astype(dtype).astype(np.float64) == array.astype(np.float64)
        if not exact.all():
            bad = array.reshape(-1)[np.argmin(exact.reshape(-1))].item()
            raise CompressError(
                f"{source} gives input {spec.name!r} the value {bad!r}, which {spec.shown()} cannot hold; give "
                f"{dtype.name} values as stored (for data read through a preprocessing, use --preprocessing raw)"
            )
    return np.ascontiguousarray(array.astype(dtype))


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """``["x=1x3x224x224"]`` -> ``{"x": (1, 3, 224, 224)}``: the shapes ``--shape`` gives inputs (ValueError
    naming the item that is not NAME=DxDx...)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or not all(1 <= d <= 1 << 20 for d in shape):
            raise ValueError(f"{item!r} is not NAME=DxDx... with whole dimensions from 1, e.g. input=1x3x224x224")
        if name in shapes:
            raise ValueError(f"input {name!r} is given two shapes; give each input once")
        shapes[name] = shape
    return shapes


def parse_ranges(items: list[str]) -> dict[str, tuple[float, float]]:
    """``["ids=0:30521"]`` -> ``{"ids": (0.0, 30521.0)}``: the values ``--input-range`` gives synthetic
    inputs (ValueError naming the item that is not NAME=LOW:HIGH with LOW <= HIGH)."""
    ranges: dict[str, tuple[float, float]] = {}
    for item in items:
        name, sep, bounds = item.rpartition("=")
        low, colon, high = bounds.partition(":")
        try:
            pair = (float(low), float(high))
        except ValueError:
            pair = None
        if not sep or not name or not colon or pair is None or not all(np.isfinite(pair)) or pair[0] > pair[1]:
            raise ValueError(f"{item!r} is not NAME=LOW:HIGH with finite LOW <= HIGH, e.g. input_ids=0:30521")
        if name in ranges:
            raise ValueError(f"input {name!r} is given two ranges; give each input once")
        ranges[name] = pair
    return ranges


def synthetic(
    inputs: list[Input],
    n: int,
    shapes: dict[str, tuple[int, ...]],
    ranges: dict[str, tuple[float, float]],
    model_name: str,
    seed: int = 0,
) -> Samples:
    """``n`` samples drawn from the signature alone (see :func:`value_rule`), of the declared shapes,
    symbolic dimensions fixed by ``shapes`` (``--shape``; a batch dimension given there is not used)."""
    names = {spec.name for spec in inputs}
    for flag, given in (("--shape", shapes), ("--input-range", ranges)):
        unknown = sorted(set(given) - names)
        if unknown:
            raise CompressError(
                f"{flag} names {unknown[0]!r}, which is not an input of {model_name}; its inputs are "
                f"{', '.join(sorted(names))}"
            )
    full_shapes = {}
    for spec in inputs:
        shape = _sample_shape(spec, shapes.get(spec.name), model_name, inputs)
        full_shapes[spec.name] = (n, *shape) if spec.batch_axis is not None else shape
    _check_fits_in_memory(inputs, full_shapes, n)
    rng = np.random.default_rng(seed)
    batched, constants = {}, {}
    for spec in inputs:
        array = _draw(spec, full_shapes[spec.name], ranges.get(spec.name), rng)
        (batched if spec.batch_axis is not None else constants)[spec.name] = array
    return Samples(batched, constants)


def _check_fits_in_memory(inputs: list[Input], shapes: dict[str, tuple], n: int) -> None:
    """CompressError when the synthetic samples would take more than a quarter of the available memory
    (``--shape`` takes dimensions up to 2^20 each, so their product can be anything)."""
    available = available_memory_bytes()
    needed = sum(math.prod(shapes[spec.name]) * spec.dtype.itemsize for spec in inputs)
    if available is not None and needed > available // 4:
        given = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
        raise CompressError(
            f"{n} synthetic samples of these shapes ({given}) would take {needed / 2**30:,.1f} GiB, more than a "
            f"quarter of the {available / 2**30:,.1f} GiB of memory available; give smaller --shape dimensions"
        )


def value_rule(spec: Input, given: tuple[float, float] | None = None) -> str:
    """How synthetic values of ``spec`` are drawn, in words (for the record and the terminal)."""
    low_high = given or _default_range(spec)
    if low_high is None:
        return "standard normal" if spec.dtype.kind == "f" else "true"
    low, high = low_high
    kind = "uniform" if spec.dtype.kind == "f" else "integers"
    why = " (--input-range)" if given else (" (embedding ids)" if spec.vocabulary else "")
    return f"{kind} in [{low:g}, {high:g}]{why}"


def _default_range(spec: Input) -> tuple[float, float] | None:
    """The range of values drawn without ``--input-range``: None for floats (standard normal) and bools
    (true, as attention masks are); every byte for 8-bit images; ids within the embedding table they
    index; 0 and 1 for other integers, which are mostly masks and flags."""
    kind = spec.dtype.kind
    if kind == "f" or kind == "b":
        return None
    if spec.dtype == np.uint8:
        return (0.0, 255.0)
    if spec.dtype == np.int8:
        return (-128.0, 127.0)
    if spec.vocabulary:
        return (0.0, float(spec.vocabulary - 1))
    return (0.0, 1.0)


def _draw(spec: Input, shape: tuple, given: tuple[float, float] | None, rng: np.random.Generator) -> np.ndarray:
    dtype = spec.dtype
    low_high = given or _default_range(spec)
    if low_high is None:
        if dtype.kind == "b":
            return np.ones(shape, np.bool_)
        return rng.standard_normal(shape).astype(dtype)
    low, high = low_high
    if dtype.kind == "f":  # within what the type holds: float16 overflows to inf at 65504
        limit = float(np.finfo(dtype).max)
        return rng.uniform(max(low, -limit), min(high, limit), shape).astype(dtype)
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is not None:
        low, high = max(low, info.min), min(high, info.max)
    values = rng.integers(int(np.ceil(low)), int(np.floor(high)) + 1, shape)
    return values.astype(dtype)


def _sample_shape(spec: Input, given: tuple[int, ...] | None, model_name: str, inputs: list[Input]) -> tuple:
    """One sample's shape (the whole array's, for an input without a batch axis)."""
    dims = spec.sample_dims if spec.batch_axis is not None else spec.dims
    if given is not None:
        chosen = tuple(d for i, d in enumerate(given) if i != spec.batch_axis) if spec.batch_axis is not None else given
        if not fits(dims, chosen):
            raise CompressError(
                f"--shape {spec.name}={'x'.join(map(str, given))} does not fit input {spec.name!r} of {model_name}, "
                f"of shape {shown_dims(spec.dims)}; fix only its symbolic dimensions"
            )
        return chosen
    if all(isinstance(d, int) for d in dims):
        return tuple(dims)
    example = "x".join(str(d) if isinstance(d, int) else "N" for d in spec.dims)
    others = "" if len(inputs) == 1 else "; one --shape for each input that has them"
    raise CompressError(
        f"{model_name} has symbolic dimensions in input {spec.name!r} {shown_dims(spec.dims)} and no data says "
        f"how large they are; give them with --shape {spec.name}={example} (numbers for every N{others}), or "
        "pass --data"
    )


def signature_record(inputs: list[Input], ranges: dict[str, tuple[float, float]] | None = None) -> list[dict[str, Any]]:
    """The inputs and, for synthetic samples, how their values were drawn (for manifests and reports)."""
    return [
        {
            "name": spec.name,
            "type": spec.shown(),
            "batch_axis": spec.batch_axis,
            **({"values": value_rule(spec, (ranges or {}).get(spec.name))} if ranges is not None else {}),
        }
        for spec in inputs
    ]
