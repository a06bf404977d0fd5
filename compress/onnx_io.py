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
from .feeds import NUMPY_TYPES, Input, batch_axes, dtype_name, shown_dims
from .hardware import available_memory_bytes

# ONNX Runtime graph optimisation levels (bench times at any; export saves a graph optimised at one)
OptimizationLevel = Literal["disable", "basic", "extended", "all"]

# What a teacher (distillation) and an exported student (parity check) are: one float32 input (a batch
# of samples) and (N, C) float logits. Quantize and bench take models of any signature (OnnxModel).
INPUT_TYPE = "tensor(float)"
LOGIT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")
TAKES = "a classifier to distil from takes one float32 input (N, ...) and gives (N, C) float logits"
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


def load_any(path: str | Path, role: str = "model") -> OnnxModel:
    """An :class:`OnnxModel` for a model file from anywhere, refused up front, before anything runs:
    :func:`load_model`'s checks, then :func:`check_memory` on the shapes ONNX shape inference finds
    (before a session exists: ONNX Runtime may fold constants while creating one). The graph also tells
    which integer inputs index an embedding, for synthetic ids in range."""
    model = load_model(path, role)
    name = f"{role} {path}"
    inferred = _infer_shapes(model, path)
    if inferred is not None:
        check_memory(inferred, name)
    return OnnxModel(open_session(path, role=role), name, vocabularies(model.graph))


def vocabularies(graph) -> dict[str, int]:
    """Graph inputs used as the indices of a Gather on a constant table (an embedding lookup), directly
    or through a Cast: the table's size along the gathered axis."""
    from onnx import numpy_helper

    tables = {init.name: list(init.dims) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tables[node.output[0]] = list(numpy_helper.to_array(node.attribute[0].t).shape)
    casts = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Cast"}
    inputs = {value.name for value in graph.input} - set(tables)
    found: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[0] not in tables:
            continue
        source = casts.get(node.input[1], node.input[1])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table = tables[node.input[0]]
        if source in inputs and -len(table) <= axis < len(table):
            found[source] = min(found.get(source, table[axis]), table[axis])
    return found


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
    if not port.type.startswith("tensor("):
        return f"{port.type} (not a tensor)"
    dtype = dtype_name(port.type)
    return f"{dtype} {shown_dims(port.shape)}" if port.shape else f"{dtype} of unknown shape"


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


class OnnxModel:
    """A session of any signature: its inputs as :class:`~compress.feeds.Input` s (type, dimensions, batch
    axis), batched prediction of every output, timing calls, and onnxruntime's run-time failures as one line.

    Inputs are fed from :class:`~compress.feeds.Samples`; a model takes numeric tensors only."""

    def __init__(self, session, name: str = "model", vocabulary: dict[str, int] | None = None):
        self.session = session
        self.name = name
        inputs, outputs = session.get_inputs(), session.get_outputs()
        for port in inputs:
            if port.type not in NUMPY_TYPES:
                raise CompressError(
                    f"{name} takes input {port.name!r} as {_shown(port)}; compress feeds numeric and bool tensors"
                )
        if not outputs:
            raise CompressError(f"{name} has no outputs; a model compress measures gives at least one tensor")
        for port in outputs:
            if port.type not in NUMPY_TYPES:
                raise CompressError(
                    f"{name} gives output {port.name!r} as {_shown(port)}; compress compares numeric and bool tensor "
                    "outputs (a scikit-learn converter's ZipMap: convert with options={'zipmap': False})"
                )
        axes = batch_axes([list(p.shape) for p in [*inputs, *outputs]])
        vocabulary = vocabulary or {}
        self.inputs = [
            Input(p.name, p.type, tuple(p.shape), axes[i][0], vocabulary.get(p.name)) for i, p in enumerate(inputs)
        ]
        self.outputs = [Port(p.name, p.type, list(p.shape)) for p in outputs]
        self._output_axes = [axis for axis, _ in axes[len(inputs) :]]
        self._certain = [certain for _, certain in axes[len(inputs) :]]
        first = self.inputs[0] if self.inputs else None
        batched = first is not None and first.batch_axis is not None
        self.fixed_batch = first.dims[0] if batched and isinstance(first.dims[0], int) else None

    @property
    def single_input(self) -> str | None:
        """The name of the model's one batched float input, when that is all it takes (what image and
        feature data feed), else None."""
        if len(self.inputs) == 1 and self.inputs[0].batch_axis is not None and self.inputs[0].dtype.kind == "f":
            return self.inputs[0].name
        return None

    def signature(self) -> str:
        """``'bytes' int32 [N, 2048]; 'mask' bool [N, 64]``: the inputs, for messages."""
        return "; ".join(f"{spec.name!r} {spec.shown()}" for spec in self.inputs)

    def run(self, samples) -> list[np.ndarray]:
        """Every output for one batch of ``samples``, with the batch on axis 0 of each batched output."""
        try:
            got = self.session.run(None, samples.feeds(self.inputs))
        except Exception as exc:
            raise self.failure(samples, exc) from None
        return [self._samples_first(i, np.asarray(y), len(samples)) for i, y in enumerate(got)]

    def _samples_first(self, index: int, y: np.ndarray, n: int) -> np.ndarray:
        """Output ``index`` with its samples on axis 0, or, for an output that is not per sample, flat
        in one row. A guessed batch axis that the output's actual shape contradicts is replaced by the one
        axis of size ``n``, if there is exactly one, else by none (for this and every later run)."""
        axis = self._output_axes[index]
        port = self.outputs[index]
        if not self._certain[index] and (axis is None or y.ndim <= axis or y.shape[axis] != n):
            sized = [i for i in range(y.ndim) if y.shape[i] == n]
            if axis is not None or not port.shape:  # a wrong guess, or no declared shape to go by
                axis = self._output_axes[index] = sized[0] if len(sized) == 1 else None
        if axis is None:
            return y.reshape(1, -1)  # not per sample: one flat row per batch
        if y.ndim <= axis or y.shape[axis] != n:
            raise CompressError(
                f"{self.name} gave output {port.name!r} of shape {list(y.shape)} for a batch of {n} samples, "
                f"where its declared shape {shown_dims(port.shape)} has the batch on axis {axis}; a model compress "
                "measures keeps one result per sample"
            )
        return np.moveaxis(y, axis, 0) if axis else y

    def predict(self, samples, batch_size: int = 256) -> list[np.ndarray]:
        """Every output for all of ``samples``, in batches (padded to a fixed batch size), samples on axis 0;
        an output that is not per sample comes as one flat row of all its batches' values."""
        step = self.fixed_batch or batch_size
        pieces: list[list[np.ndarray]] = []
        for start in range(0, len(samples), step):
            chunk = samples.rows(slice(start, start + step))
            n = len(chunk)
            if self.fixed_batch and n < self.fixed_batch:
                chunk = chunk.padded(self.fixed_batch)
            pieces.append([y[:n] if self._output_axes[i] is not None else y for i, y in enumerate(self.run(chunk))])
        return [
            np.concatenate([p[i] for p in pieces], axis=0 if self._output_axes[i] is not None else 1)
            for i in range(len(self.outputs))
        ]

    def call(self, samples) -> Callable[[], object]:
        """A run on ``samples`` for timing: the feeds made once, only the run in the hot path."""
        session, feeds = self.session, samples.feeds(self.inputs)

        def run() -> object:
            try:
                return session.run(None, feeds)
            except Exception as exc:
                raise self.failure(samples, exc) from None

        return run

    def failure(self, samples, exc: Exception) -> CompressError:
        return run_failure(f"{self.name} on {samples.describe()}", exc, "inputs of these shapes")


class OnnxClassifier:
    """A classifier's session (an ONNX teacher, an exported student): one float32 input, (N, C) logits
    first; batched prediction, and onnxruntime's run-time failures as one-line errors."""

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
        return run_failure(f"{self.name} on a batch of shape {list(batch.shape)}", exc, "float32 batches of this shape")

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


def run_failure(where: str, exc: Exception, fed: str) -> CompressError:
    """onnxruntime's exception from running a model (``where``: which, on what), as one line with what to do."""
    found = ALLOCATION_FAILURE.search(str(exc))
    if found:
        return CompressError(
            f"onnxruntime could not allocate {int(found[2]) / 2**30:,.1f} GiB running {where} (in its "
            f"{found[1]} node); check the shapes the graph asks for, or run it on a machine with more memory"
        )
    return CompressError(
        f"onnxruntime failed running {where} ({first_line(exc)}); check that the model runs in onnxruntime on {fed}"
    )


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
