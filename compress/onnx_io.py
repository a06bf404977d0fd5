"""Reading ONNX files and running them through ONNX Runtime, with user errors made plain.

Shared by export (parity check), quantize (calibration, accuracy, timing), distill (ONNX
teachers) and bench.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from .errors import CompressError, first_line, foreign_errors
from .hardware import available_memory_bytes

# ONNX Runtime graph optimisation levels (bench times at any; export saves a graph optimised at one)
OptimizationLevel = Literal["disable", "basic", "extended", "all"]

# What compress feeds and scores today: one float32 input (a batch of samples) and (N, C) float logits.
INPUT_TYPE = "tensor(float)"
LOGIT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")
TAKES = "compress measures single-label classifiers today: one float32 input (N, ...) and (N, C) float logits"
PROTOBUF_LIMIT = 2**31 - 1  # bytes; shape inference serialises the model, so a larger one is read without weights
ALLOCATION_FAILURE = re.compile(
    r"while running (\w+) node.*Failed to allocate memory for requested buffer of size (\d+)", re.DOTALL
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep the chatter of torch.onnx, onnxscript and onnxruntime's optimizers and quantizers
    (log records, prints, warnings, graph dumps) off the terminal.

    What matters reaches the user through an exception, which the caller turns into one line.
    """
    names = ["", "torch", "onnxscript", "onnxruntime"] + [  # "": the root logger
        name for name in logging.root.manager.loggerDict if name.startswith(("torch.", "onnxscript.", "onnxruntime."))
    ]
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@functools.cache
def max_runtime_opset() -> int:
    """The newest default-domain opset the installed ONNX Runtime accepts (probed, milliseconds)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [value("x", TensorProto.FLOAT, [1])],
        [value("y", TensorProto.FLOAT, [1])],
    )
    for opset in range(onnx.defs.onnx_opset_version(), 6, -1):
        opset_ids = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opset_ids, ir_version=helper.find_min_ir_version_for(opset_ids))
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # onnxruntime: "opset N is under development / not supported"
            continue
    raise CompressError(
        "the installed onnxruntime runs no ONNX opset this onnx package writes; "
        "reinstall compress to get matching onnx and onnxruntime versions"
    )


def load_model(path: str | Path, role: str = "model", check: bool = True):
    """Parse an ONNX file (and its external data) and run ``onnx.checker`` on it."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CompressError(f"{role} {path} does not exist; check the path")
    # protobuf DecodeError, missing external data, ...
    with foreign_errors(
        f"{role} {path} is not a readable ONNX model", "give an .onnx file written by `compress export` or torch.onnx"
    ):
        model = onnx.load(str(path))
    if not model.graph.node and not model.graph.input:
        raise CompressError(f"{role} {path} holds no ONNX graph; give an .onnx model file")
    if check:
        with foreign_errors(f"{role} {path} fails the ONNX checker", "re-export it"):
            onnx.checker.check_model(str(path))
    opset = default_opset(model)
    if opset is not None and opset > max_runtime_opset():
        raise CompressError(
            f"{role} {path} uses opset {opset}, newer than onnxruntime runs "
            f"(max {max_runtime_opset()}); re-export with --opset {max_runtime_opset()}"
        )
    return model


def default_opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def load_classifier(path: str | Path, role: str = "model") -> OnnxClassifier:
    """An :class:`OnnxClassifier` for a model file from anywhere, refused up front, before anything
    runs: :func:`load_model`'s checks, then :func:`check_memory` on the shapes ONNX shape inference
    finds (before a session exists: ONNX Runtime may fold constants while creating one), then the
    inputs and outputs as ONNX Runtime sees them."""
    model = load_model(path, role)
    name = f"{role} {path}"
    inferred = _infer_shapes(model, path)
    if inferred is not None:
        check_memory(inferred, name)
    return OnnxClassifier(open_session(path, role=role), name)


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


class Port(NamedTuple):
    """A tensor of a graph, described by the fields of ONNX Runtime's ``NodeArg`` (for messages)."""

    name: str
    type: str  # "tensor(float)", ...
    shape: list  # ints, str or None for symbolic dimensions; [] when unknown


def check_signature(name: str, inputs: list, outputs: list) -> None:
    """CompressError unless ``name`` takes one float32 input and gives (N, C) float logits first.

    ``inputs`` and ``outputs``: ONNX Runtime ``NodeArg`` s. An unknown output rank passes here;
    :meth:`OnnxClassifier.run` checks what actually comes out.
    """
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs)
        raise CompressError(f"{name} has {len(inputs)} inputs ({names}); {TAKES}")
    x = inputs[0]
    if x.type != INPUT_TYPE:
        raise CompressError(
            f"{name} takes input {x.name!r} as {_shown(x)}; {TAKES} — export it with a float32 input "
            "(a cast inside the graph if it needs another type)"
        )
    if not outputs:
        raise CompressError(f"{name} has no outputs; {TAKES}")
    y = outputs[0]
    if y.type not in LOGIT_TYPES or (y.shape and len(y.shape) != 2):
        raise CompressError(
            f"{name} gives output {y.name!r} as {_shown(y)}; {TAKES} as its first output — "
            "export it with the logits as the first output"
        )


def check_memory(model, name: str) -> None:
    """CompressError when one tensor of the graph, by its inferred shape, needs more memory than is
    available (symbolic dimensions count as 1, so the size is a lower bound).

    ONNX Runtime's allocator raises for a request larger than the system grants, but where memory
    is granted lazily a merely too-large one gets the process killed mid-run; this is refused first.
    Only the top-level graph is seen, one tensor at a time.
    """
    available = available_memory_bytes()
    if available is None:
        return
    graph = model.graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        size = _min_bytes(value)
        if size > available:
            by = f"{made_by[value.name]} node output" if value.name in made_by else "tensor"
            raise CompressError(
                f"{name}: its {by} {value.name!r} ({_shown(_port(value))}) needs at least "
                f"{size / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB of memory available; "
                "check the shapes the graph asks for (a shape fed to Expand, ConstantOfShape, Tile or "
                "Reshape), or run it on a machine with more memory"
            )


def _infer_shapes(model, path: str | Path):
    """The model with ONNX shape inference's shapes filled in (constant shape inputs followed), or
    None when inference cannot follow the graph."""
    import onnx

    if model.ByteSize() > PROTOBUF_LIMIT:
        model = onnx.load(str(path), load_external_data=False)
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # an operator inference rejects: ONNX Runtime's own errors then apply
        return None


def _port(value) -> Port:
    """A tensor's ``ValueInfoProto`` described as ONNX Runtime describes it."""
    from onnx import TensorProto

    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    try:
        dtype = TensorProto.DataType.Name(tensor.elem_type).lower()
    except ValueError:  # a type number this onnx does not know
        dtype = f"type {tensor.elem_type}"
    return Port(value.name, f"tensor({dtype})", dims)


def _shown(port) -> str:
    """``float64 [N, 1, 8, 8]``: the dtype and shape of a ``NodeArg`` or :class:`Port`."""
    inner = port.type[len("tensor(") : -1] if port.type.startswith("tensor(") else None
    if inner is None:
        return f"{port.type} (not a tensor)"
    dtype = {"float": "float32", "double": "float64"}.get(inner, inner)
    dims = ", ".join("?" if d is None else str(d) for d in port.shape)
    return f"{dtype} [{dims}]" if port.shape else f"{dtype} of unknown shape"


def _min_bytes(value) -> int:
    """Bytes a tensor holds at least: symbolic and unknown dimensions count as 1."""
    from onnx import helper

    if not value.type.HasField("tensor_type"):
        return 0
    tensor = value.type.tensor_type
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
    except KeyError:  # an undefined type: 1 byte keeps the bound
        itemsize = 1
    return math.prod(d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim) * itemsize


def session_options(
    threads: int | None = None,
    optimization: OptimizationLevel = "all",
    optimized_model_path: str | Path | None = None,
    external_initializers: str | None = None,
):
    import onnxruntime as ort

    options = ort.SessionOptions()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options.graph_optimization_level = levels[optimization]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
        if external_initializers:  # a model over 2 GiB keeps its weights in a file beside it
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", external_initializers
            )
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    # Fatal only: ORT's warnings and errors would reach the terminal as raw log lines; errors
    # arrive as exceptions, which the callers turn into one-line messages.
    options.log_severity_level = 4
    return options


def open_session(
    model: str | Path | bytes,
    role: str = "model",
    threads: int | None = None,
    optimization: str = "all",
    providers: list[str] | None = None,
    optimized_model_path: str | Path | None = None,
    external_initializers: str | None = None,
):
    """An ``InferenceSession``; a model ONNX Runtime cannot load is a CompressError."""
    import onnxruntime as ort

    options = session_options(threads, optimization, optimized_model_path, external_initializers)
    source = model if isinstance(model, bytes) else str(model)
    where = "the model" if isinstance(model, bytes) else source
    with foreign_errors(
        f"onnxruntime cannot load {role} {where}", "re-export it or check that its operators are supported"
    ):
        return ort.InferenceSession(source, sess_options=options, providers=providers or ["CPUExecutionProvider"])


def _dims(shape: list) -> str:
    """``[N, 3, ?, ?]``: a shape with its symbolic dimensions by name, unknown ones as ``?``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _fits(dims: list, sample_shape: tuple[int, ...]) -> bool:
    """Samples of ``sample_shape`` fit an input's dimensions after the batch (symbolic ones fit any size)."""
    return len(dims) == len(sample_shape) and all(not isinstance(d, int) or d == s for d, s in zip(dims, sample_shape))


class OnnxClassifier:
    """One-input classifier session: signature and shape checks, batched prediction, and
    onnxruntime's run-time failures as one-line errors."""

    def __init__(self, session, name: str = "model"):
        self.session = session
        self.name = name
        inputs = session.get_inputs()
        check_signature(name, inputs, session.get_outputs())
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)  # ints, or str/None for symbolic dimensions
        self.output_name = session.get_outputs()[0].name
        batch = self.input_shape[0] if self.input_shape else None
        self.fixed_batch = batch if isinstance(batch, int) else None

    @property
    def sample_shape(self) -> tuple | None:
        dims = self.input_shape[1:]
        return tuple(dims) if all(isinstance(d, int) for d in dims) else None

    def synthetic_samples(self, n: int, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> np.ndarray:
        """``n`` standard-normal samples of the input's shape, for timing and fidelity without data.

        ``shapes`` (``--shape NAME=1x3x224x224``) fixes the input's symbolic dimensions; its batch
        dimension is not used (the samples are ``n``)."""
        given = shapes.get(self.input_name)
        unknown = set(shapes) - {self.input_name}
        if unknown:
            raise CompressError(
                f"--shape names {sorted(unknown)[0]!r}, which is not an input of {self.name}; "
                f"its input is {self.input_name!r}"
            )
        if given is not None:
            if not _fits(self.input_shape[1:], given[1:]):
                raise CompressError(
                    f"--shape {self.input_name}={'x'.join(map(str, given))} does not fit input {self.input_name!r} of "
                    f"{self.name}, of shape {_dims(self.input_shape)}; fix only its symbolic dimensions"
                )
            sample = given[1:]
        elif self.sample_shape is not None:
            sample = self.sample_shape
        else:
            example = "x".join(str(d) if isinstance(d, int) else "N" for d in self.input_shape)
            raise CompressError(
                f"{self.name} has symbolic dimensions in input {self.input_name!r} {_dims(self.input_shape)} and no "
                f"data says how large its samples are; give them with --shape {self.input_name}={example} "
                "(numbers for every N), or pass --data"
            )
        return np.random.default_rng(seed).standard_normal((n, *sample)).astype(np.float32)

    def check_fits(self, in_shape: tuple[int, ...], data_name: str) -> None:
        """CompressError unless samples of ``in_shape`` fit the model's input."""
        dims = self.input_shape[1:]
        if _fits(dims, in_shape):
            return
        shown = _dims(self.input_shape)
        # (C, H, W) samples against an (H, W, C) input whose channel axis is fixed: a channels-last model
        if len(in_shape) == 3 and _fits(dims, (*in_shape[1:], in_shape[0])) and isinstance(dims[-1], int):
            raise CompressError(
                f"{self.name} takes input {self.input_name!r} of shape {shown}, channels last (NHWC), but compress "
                f"feeds NCHW samples ({data_name}: {list(in_shape)}); transpose to NCHW: re-export the model with an "
                "(N, C, H, W) input, or put a Transpose(perm=[0, 2, 3, 1]) in front of its input"
            )
        raise CompressError(
            f"{self.name} takes input {self.input_name!r} of shape {shown} but "
            f"{data_name} gives samples of shape {list(in_shape)}; use the data "
            "the model was trained on"
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The logits of ``batch``: one row per sample."""
        try:
            logits = self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as exc:
            raise self.failure(batch, exc) from None
        if not isinstance(logits, np.ndarray) or logits.ndim != 2 or len(logits) != len(batch):
            raise CompressError(
                f"{self.name} gave output {self.output_name!r} of shape {list(np.shape(logits))} for a batch "
                f"of shape {list(batch.shape)}; {TAKES}, one row per sample"
            )
        return logits

    def call(self, batch: np.ndarray) -> Callable[[], object]:
        """A run on ``batch`` for timing: only the run in the hot path (a ``try`` costs nothing
        until it raises); a failure is one line."""
        session, outputs, feeds = self.session, [self.output_name], {self.input_name: batch}

        def run() -> object:
            try:
                return session.run(outputs, feeds)
            except Exception as exc:
                raise self.failure(batch, exc) from None

        return run

    def failure(self, batch: np.ndarray, exc: Exception) -> CompressError:
        """onnxruntime's exception from running ``batch``, as one line with what to do."""
        where = f"{self.name} on a batch of shape {list(batch.shape)}"
        found = ALLOCATION_FAILURE.search(str(exc))
        if found:
            return CompressError(
                f"onnxruntime could not allocate {int(found[2]) / 2**30:,.1f} GiB running {where} (in its "
                f"{found[1]} node); check the shapes the graph asks for, or run it on a machine with more memory"
            )
        return CompressError(
            f"onnxruntime failed running {where} ({first_line(exc)}); check that the model runs in "
            "onnxruntime on float32 batches of this shape"
        )

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits for every row of ``x`` (float32), in batches; a fixed batch size is padded to."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = self.fixed_batch or batch_size
        pieces = []
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            if self.fixed_batch and len(chunk) < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - len(chunk),) + chunk.shape[1:], np.float32)
                pieces.append(self.run(np.concatenate([chunk, pad]))[: len(chunk)])
            else:
                pieces.append(self.run(chunk))
        if not pieces:
            return np.zeros((0, 0), np.float32)
        return np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        if len(y) == 0:
            raise CompressError("no samples to measure accuracy on; use data with a non-empty split")
        return float((self.predict(x).argmax(axis=1) == np.asarray(y)).mean())


def model_info(path: str | Path) -> dict[str, Any]:
    """Size and operator counts of an ONNX file, for manifests."""
    import collections

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(node.op_type for node in model.graph.node)
    size = Path(path).stat().st_size + sum(p.stat().st_size for p in external_data_files(path, model))
    return {
        "size_bytes": size,
        "nodes": sum(ops.values()),
        "op_types": dict(sorted(ops.items())),
        "opset": default_opset(model),
    }


def external_data_files(path: str | Path, model) -> list[Path]:
    """The external-data files an ONNX model refers to (beside it)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    locations = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    return [Path(path).parent / loc for loc in sorted(locations)]
