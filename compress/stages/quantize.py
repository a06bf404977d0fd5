"""``compress quantize``: int8 through onnxruntime.quantization (or fp16 for GPU providers), checked for
accuracy and for speed.

The quantization itself is ONNX Runtime's (``quant_pre_process``, ``quantize_static``,
``quantize_dynamic``), or NNCF's (``--backend nncf``). Models of any signature: the samples come from
:mod:`compress.data.model_data`. What compress adds around it:

* types chosen for the CPU at hand, with the reason stated;
* fidelity, always: int8 against fp32 on held-out samples (the validation split, or synthetic inputs
  when there is no data) — with targets, the task's primary metric lost (accuracy or mAP points, RMSE's
  rise in percent); without, top-1 disagreements, changed multi-label decisions or the relative L2 error
  of regression outputs (and cosine, relative L2, max abs difference) — within a budget
  (``max_accuracy_drop``, default 1 point). Over budget the quantization narrows: only Conv/MatMul/Gemm quantized, then the nodes
  whose quantization hurts most kept in float, greedily; a model that still misses it is not written;
* ``search``: every sensible setting quantized, its accuracy measured and its latency timed in
  rounds alternating with fp32, the one with the best speed-up within budget kept;
* an honest timing of fp32 against int8 afterwards, with the likely cause when int8 is not faster.

``mode="fp16"`` converts the float tensors to float16 with ``onnxruntime.transformers.float16`` instead
(inputs and outputs stay float32): for GPU providers (CUDA/TensorRT). It is judged and narrowed the same
way (compute ops only, then nodes kept in float32 by the converter's node block list) and checked to load
in the CPU provider. Both judging and timing run there: the CPU provider computes most fp16 nodes in fp32
(so the judgement measures the weights' rounding) and is usually no faster in fp16; the summary says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ..artifacts import (
    input_record,
    manifest_path,
    new_manifest,
    read_manifest,
    sha256_file,
    staging_dir,
    write_manifest,
)
from ..data import PREPROCESSING_HELP, PreprocessingChoice
from ..data.model_data import ModelData, load_model_data
from ..errors import CompressError, first_line
from ..feeds import Samples, parse_ranges, parse_shapes
from ..hardware import CpuInfo, cpu_info
from ..measure.fidelity import classifier_accuracy, compare_all, compare_outputs, loss_measure
from ..measure.latency import compare
from ..onnx_io import OnnxModel, load_any, model_info, open_session, quiet, session_options
from ..tasks import CLASSIFICATION, Task, get_task, task_of
from .base import RANGES_HELP, SHAPES_HELP, Cli, InputRanges, InputShapes, Stage, StageConfig, output_suffix
from .export import EXTERNAL_DATA_THRESHOLD_BYTES
from .train import DATA_HELP, MAX_BATCH, MAX_SAMPLES, MAX_SEED, MAX_THREADS

# The ops whose int8 kernels make the speed; a node of these types is what the accuracy loop keeps in float.
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
logger = logging.getLogger(__name__)
log = logger.info

# Fidelity budget without --max-accuracy-drop: the task's metric lost with targets (accuracy or mAP points, RMSE's
# rise in percent), else top-1 disagreements in points (multi-label: changed label decisions in percent; outputs
# without classes: the relative L2 error in percent).
DEFAULT_BUDGET_POINTS = 1.0
SENSITIVITY_SAMPLES = 128  # held-out samples that rank the nodes by quantization error (one pass per node)
SYNTHETIC_SAMPLES = 1000  # inputs drawn from the signature when there is no data (one is 0.1 points)
NOT_FASTER_RATIO = 1.05  # int8 below this speed-up counts as "not faster"
# Settings of how int8 is made, refused with mode fp16.
INT8_ONLY = (
    "format",
    "activation_type",
    "weight_type",
    "per_channel",
    "calibration",
    "calibration_samples",
    "preprocess",
    "search",
    "backend",
    "nncf_preset",
)
FP16_ON_CPU = (
    "fp16 is for GPU providers (CUDA/TensorRT), whose fp16 kernels usually run it faster, in half the memory; on the "
    "CPU provider it is usually no faster and often slower (ONNX Runtime casts to fp32 around the ops it has no fp16 "
    "kernels for), so a slower CPU timing is expected, not a fault: time it on a GPU with compress bench FP32_MODEL "
    "FP16_MODEL --providers cuda"
)
FP16_JUDGED_ON_CPU = (
    "judged on the CPU provider, which computes most fp16 nodes in fp32 (ONNX Runtime drops the casts around them): "
    "this measures the rounding of the weights to fp16, not fp16 arithmetic; a GPU computes in fp16, so compare there "
    "too (compress bench FP32_MODEL FP16_MODEL --providers cuda)"
)
# How the messages of a model over budget say it for fp16: narrowed to, kept in, and why outputs are non-finite.
FP16_WORDS = ("in fp16", "float32", "; fp16 holds values up to 65504 only, so larger activations overflow")


class QuantizeConfig(StageConfig):
    model: Annotated[str, Cli(argument=True)] = Field(description="The fp32 ONNX model to quantize.")
    out: str = Field(
        description="Quantized (int8 or fp16) ONNX model to write (.onnx); its manifest goes beside it (.onnx.json)."
    )
    data: str | None = Field(
        None, description=f"Calibration and validation data (default: the data in the model's manifest): {DATA_HELP}."
    )
    preprocessing: PreprocessingChoice | None = Field(
        None,
        description=f"For a model without a manifest: {PREPROCESSING_HELP}.",
    )
    mode: Literal["static", "dynamic", "fp16"] = Field(
        "static",
        description="static: int8, activation ranges calibrated on --data; dynamic: int8, ranges computed at run "
        "time; fp16: float16 weights and activations (inputs and outputs stay float32) for GPU providers "
        "(CUDA/TensorRT), usually no faster on the CPU provider.",
    )
    format: Literal["qdq", "qoperator"] = Field(
        "qdq", description="Static format: QuantizeLinear/DequantizeLinear pairs, or integer operators."
    )
    activation_type: Literal["auto", "u8", "s8"] = Field(
        "auto", description="auto: what runs fast on this CPU (printed with the reason)."
    )
    weight_type: Literal["auto", "u8", "s8"] = "auto"
    per_channel: bool = Field(False, description="One scale per output channel of each weight.")
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="How activation ranges are set."
    )
    calibration_samples: int = Field(
        512, ge=1, le=MAX_SAMPLES, description="Training samples that calibrate (static mode)."
    )
    preprocess: bool = Field(
        True, description="Run onnxruntime's quant_pre_process (shape inference, optimisation) first."
    )
    max_accuracy_drop: Annotated[float | None, Cli(metavar="POINTS")] = Field(
        None,
        ge=0,
        lt=100,
        description="Fidelity budget against fp32 on held-out samples, in points (default 1). With targets, the "
        "task's metric lost: accuracy points (classification), mAP points (multilabel), RMSE's rise in percent "
        "of fp32's (regression); without, how far the outputs move: top-1 disagreements in percent of samples "
        "(classification), changed label decisions in percent (multilabel), relative L2 error in percent "
        "(regression). Over it, only Conv/MatMul/Gemm are quantized, then the most sensitive nodes kept in "
        "float, until it is met.",
    )
    allow_over_budget: bool = Field(
        False, description="Write the model even when the budget cannot be met (else: exit 2, nothing written)."
    )
    search: bool = Field(
        False,
        description="Try every sensible mode/format/type/per-channel setting, time "
        "each, keep the fastest within the budget (1 point unless --max-accuracy-drop).",
    )
    batch_size: int = Field(64, ge=1, le=MAX_BATCH, description="Batch size of the timing.")
    threads: int | None = Field(
        None, ge=1, le=MAX_THREADS, description="Intra-op threads of the timing (default: onnxruntime's)."
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the choice of calibration samples.")
    backend: Literal["onnxruntime", "nncf"] = Field(
        "onnxruntime",
        description="Who quantizes: onnxruntime.quantization, or NNCF's post-training quantization (static QDQ, "
        "per-channel s8 weights; pip install 'compress[nncf]'). Fidelity is checked and narrowed either way.",
    )
    nncf_preset: Literal["performance", "mixed"] = Field(
        "performance", description="NNCF: symmetric (performance) or asymmetric (mixed) activations."
    )
    shapes: InputShapes = Field(default_factory=list, description=SHAPES_HELP)
    input_ranges: InputRanges = Field(default_factory=list, description=RANGES_HELP)

    _out = output_suffix(".onnx")

    @model_validator(mode="after")
    def _keeps_the_input(self) -> QuantizeConfig:
        if Path(self.out).resolve() == Path(self.model).resolve():
            raise ValueError("`out` must differ from the input model; the fp32 model is kept")
        return self

    @model_validator(mode="after")
    def _fp16_has_no_int8_settings(self) -> QuantizeConfig:
        """fp16 converts every float tensor: how int8 is made (types, calibration, search, backend) does not apply."""
        if self.mode != "fp16":
            return self
        for name in INT8_ONLY:
            if name in self.model_fields_set:
                raise ValueError(
                    f"`{name}` applies to int8 only; `mode` fp16 converts the float tensors with onnxruntime's float16 "
                    "converter (no types, calibration, preprocessing, search or backend to choose): drop it, or use "
                    "`mode` static or dynamic"
                )
        return self

    @model_validator(mode="after")
    def _nncf_sets_its_own(self) -> QuantizeConfig:
        """NNCF chooses format, types and calibration itself: those of onnxruntime's settings do not apply."""
        if self.backend != "nncf":
            return self
        defaults = QuantizeConfig.model_fields
        for name in ("mode", "format", "activation_type", "weight_type", "per_channel", "calibration", "search"):
            if getattr(self, name) != defaults[name].default:
                raise ValueError(
                    f"`{name}` sets how onnxruntime quantizes; NNCF chooses that itself (static QDQ, per-channel s8 "
                    "weights): with the nncf backend, choose only its preset"
                )
        return self


@dataclass(frozen=True)
class Settings:
    """One way to quantize: what onnxruntime.quantization is called with."""

    mode: str
    format: str
    activation_type: str  # u8 | s8 (dynamic: always u8, computed at run time)
    weight_type: str
    per_channel: bool
    reduce_range: bool
    calibration: str
    reasons: tuple[str, ...] = ()
    op_types: tuple[str, ...] | None = None  # the op types quantized (None: every one the backend can)
    backend: str = "onnxruntime"
    nncf_preset: str | None = None  # backend nncf: performance | mixed

    @property
    def precision(self) -> str:
        """What the quantized model computes in: fp16, or int8."""
        return "fp16" if self.mode == "fp16" else "int8"

    @property
    def label(self) -> str:
        only = f" ({'/'.join(self.op_types)} only)" if self.op_types else ""
        if self.mode == "fp16":
            return f"fp16{only}"
        if self.backend == "nncf":
            return f"NNCF {self.nncf_preset} QDQ{only}"
        if self.mode == "dynamic":
            return f"dynamic {self.weight_type} weights{' per-channel' if self.per_channel else ''}{only}"
        return (
            f"static {self.format.upper() if self.format == 'qdq' else 'QOperator'} "
            f"{self.activation_type}{self.weight_type}{' per-channel' if self.per_channel else ''}"
            f" {self.calibration}{only}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["op_types"] = list(self.op_types) if self.op_types else None
        return d


@dataclass
class Candidate:
    settings: Settings
    path: Path
    excluded: list[str] = field(default_factory=list)
    accuracy: float | None = None
    metrics: dict | None = None  # the task's metrics on the held-out targets (None: no targets)
    loss: float = 0.0  # points against fp32: the task's metric lost, or how far the outputs moved (see Judge)
    fidelity: dict | None = None  # compare_outputs against fp32 on the held-out samples
    latency: dict | None = None
    speedup: tuple[float, float, float] | None = None


def choose_settings(config: QuantizeConfig, cpu: CpuInfo) -> Settings:
    """Fill in ``auto`` types for this CPU and say why (after ONNX Runtime's quantization guide)."""
    if config.mode == "fp16":
        return Settings(
            mode="fp16",
            format="fp16",
            activation_type="fp16",
            weight_type="fp16",
            per_channel=False,
            reduce_range=False,
            calibration="none",
        )
    if config.backend == "nncf":
        symmetric = config.nncf_preset == "performance"
        return Settings(
            mode="static",
            format="qdq",
            activation_type="s8" if symmetric else "u8",
            weight_type="s8",
            per_channel=True,
            reduce_range=False,
            calibration="minmax",
            reasons=(f"NNCF's {config.nncf_preset} preset: {'' if symmetric else 'a'}symmetric activations",),
            backend="nncf",
            nncf_preset=config.nncf_preset,
        )
    reasons = []
    activation, weight = config.activation_type, config.weight_type
    if config.mode == "dynamic":
        if activation not in ("auto", "u8"):
            raise CompressError(
                "dynamic quantization computes uint8 activations at run time; "
                "drop --activation-type or use --mode static"
            )
        activation = "u8"
        if weight == "auto":
            weight = "s8"
            reasons.append("weights s8: MatMulInteger/ConvInteger's u8 x s8 kernels")
    elif cpu.is_x86:
        if config.format == "qoperator" and activation == "s8" and weight == "s8":
            raise CompressError(
                "QOperator with s8 activations and s8 weights is documented by ONNX "
                "Runtime as slow on x86-64; use --activation-type u8 or --format qdq"
            )
        if activation == "auto":
            activation = "u8"
            reasons.append(
                "activations u8, weights s8: the u8 x s8 pairing that ONNX Runtime's x86 "
                "int8 kernels (VNNI/AVX512/AVX2) take natively"
            )
        if weight == "auto":
            weight = "s8"
    else:  # ARM64 and others: ONNX Runtime's default, S8S8, is the recommended first choice
        if activation == "auto":
            activation = "s8"
            reasons.append("activations s8, weights s8: ONNX Runtime's recommended default off x86")
        if weight == "auto":
            weight = "s8"
    # Without VNNI, x86 multiplies u8 x s8 pairs with VPMADDUBSW, whose 16-bit sums can saturate:
    # ONNX Runtime's guide recommends 7-bit weights (reduce_range) there.
    reduce_range = cpu.is_x86 and not cpu.has_vnni and activation == "u8" and weight == "s8"
    if reduce_range:
        reasons.append("reduce_range: this x86 CPU has no VNNI, so 7-bit weights avoid VPMADDUBSW saturation")
    elif cpu.is_x86 and cpu.has_vnni:
        reasons.append("full 8-bit range: this CPU has VNNI (no u8 x s8 saturation)")
    return Settings(
        mode=config.mode,
        format=config.format if config.mode == "static" else "qoperator",
        activation_type=activation,
        weight_type=weight,
        per_channel=config.per_channel,
        reduce_range=reduce_range,
        calibration=config.calibration,
        reasons=tuple(reasons),
    )


def search_space(base: Settings, cpu: CpuInfo) -> list[Settings]:
    """The settings --search tries: both modes and formats, both type pairings, per-channel or not.

    Left out: QOperator S8S8 on x86 (documented as slow there) and s8 activations for dynamic
    quantization (it computes u8 ones).
    """
    found = []
    for per_channel in (False, True):
        found.append(
            replace(
                base,
                mode="dynamic",
                format="qoperator",
                activation_type="u8",
                weight_type="s8",
                per_channel=per_channel,
                reasons=(),
            )
        )
        for fmt in ("qdq", "qoperator"):
            for activation in ("u8", "s8"):
                if fmt == "qoperator" and activation == "s8" and cpu.is_x86:
                    continue
                found.append(
                    replace(
                        base,
                        mode="static",
                        format=fmt,
                        activation_type=activation,
                        weight_type="s8",
                        per_channel=per_channel,
                        reasons=(),
                    )
                )
    return found


class _CalibrationReader:
    """onnxruntime.quantization's data-reader protocol over the calibration samples."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self._batches = batches
        self._next = iter(self._batches)

    def get_next(self):
        return next(self._next, None)

    def rewind(self):
        self._next = iter(self._batches)


class Quantizer:
    """Quantizes one float model in various ways; calibration runs once per method and is reused."""

    def __init__(self, float_path: Path, workdir: Path, model: OnnxModel, calibration: Samples | None, batch: int):
        self.float_path = float_path
        self.workdir = workdir
        self.calibration = calibration
        # the feeds of each calibration batch (a last, smaller one is dropped: a fixed batch size refuses it)
        self.batches = []
        if calibration is not None:
            self.batches = [
                calibration.rows(slice(i, i + batch)).feeds(model.inputs)
                for i in range(0, len(calibration) - batch + 1, batch)
            ] or [calibration.feeds(model.inputs)]
        self._count = 0

    def quantize(self, settings: Settings, exclude: list[str] = (), only: list[str] | None = None) -> Path:
        if settings.mode == "fp16":
            return self._convert_to_fp16(settings, exclude, only)
        if settings.backend == "nncf":
            return self._quantize_with_nncf(settings, exclude, only)
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        self._count += 1
        out = self.workdir / f"candidate{self._count}.onnx"
        types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
        common = dict(
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            weight_type=types[settings.weight_type],
            op_types_to_quantize=list(settings.op_types) if settings.op_types else None,
            nodes_to_exclude=_with_split_names(exclude),
            nodes_to_quantize=_with_split_names(only) if only is not None else None,
        )
        try:
            with quiet():
                if settings.mode == "dynamic":
                    quantize_dynamic(self.float_path, out, **common)
                else:
                    if self.calibration is None:
                        raise CompressError(
                            "static quantization needs calibration data; pass --data (or use --mode dynamic)"
                        )
                    method = {
                        "minmax": CalibrationMethod.MinMax,
                        "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile,
                    }[settings.calibration]
                    reader = _CalibrationReader(self.batches)
                    quantize_static(
                        self.float_path,
                        out,
                        reader,
                        quant_format=QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator,
                        activation_type=types[settings.activation_type],
                        calibrate_method=method,
                        calibration_cache_path=self.workdir / f"calibration-{settings.calibration}.json",
                        **common,
                    )
        except CompressError:
            raise
        except Exception as exc:  # onnxruntime.quantization raises plain exceptions
            raise CompressError(
                f"onnxruntime.quantization failed ({settings.label}): {first_line(exc)}; try another --mode/--format"
            ) from None
        return out

    def _quantize_with_nncf(self, settings: Settings, exclude: list[str], only: list[str] | None) -> Path:
        from ..nncf_backend import quantize_with_nncf

        if self.calibration is None:
            raise CompressError("NNCF quantizes static QDQ, calibrated on real samples; pass --data")
        self._count += 1
        out = self.workdir / f"candidate{self._count}.onnx"
        if only is not None:  # NNCF takes what to leave out: every other compute node
            exclude = [name for name in _quantizable_nodes(self.float_path) if name not in only]
        quantize_with_nncf(self.float_path, out, self.batches, settings.nncf_preset, exclude, settings.op_types)
        return out

    def _convert_to_fp16(self, settings: Settings, exclude: list[str], only: list[str] | None) -> Path:
        """float16 by onnxruntime's converter, inputs and outputs kept float32; the nodes left out (``exclude``,
        those not in ``only``, those not of ``settings.op_types``) stay float32 through its node block list (their
        weights and arithmetic: the converter still passes the tensors between nodes through fp16). Checked to load in the CPU provider, where ONNX Runtime casts around fp16 nodes it has no kernels for."""
        import onnx
        import onnxruntime as ort
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel as TransformersModel

        self._count += 1
        out = self.workdir / f"candidate{self._count}.onnx"
        model = onnx.load(str(self.float_path))  # the converter changes the model it is given: a fresh copy
        blocked = set(exclude)
        for node in model.graph.node:
            if (only is not None and node.name not in only) or (
                settings.op_types and node.op_type not in settings.op_types
            ):
                blocked.add(node.name)
        try:
            with quiet():
                converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(blocked))
                # the converter appends its casts at the end of the graph: in order again, as ONNX requires (the
                # checker of every stage that reads the model refuses it otherwise)
                TransformersModel.graph_topological_sort(converted.graph)
                onnx.checker.check_model(converted)
                onnx.save(converted, str(out))
        except Exception as exc:  # the converter and onnx raise plain exceptions (a model over 2 GB in fp16 too)
            raise CompressError(
                f"onnxruntime's float16 converter failed on {Path(self.float_path).name} ({first_line(exc)}); "
                "keep fp32, or quantize to int8 (--mode static or dynamic)"
            ) from None
        try:
            with quiet():
                ort.InferenceSession(str(out), session_options(), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types
            raise CompressError(
                f"onnxruntime's CPU provider cannot load the fp16 model ({first_line(exc, 160)}); keep fp32, or "
                "quantize to int8 (--mode static or dynamic)"
            ) from None
        return out


def _with_split_names(nodes: list[str]) -> list[str]:
    """Node names as onnxruntime's quantizer matches them: dynamic quantization first splits a Gemm
    into MatMul + Add and names the MatMul ``NAME_MatMul``, so a Gemm is named both ways."""
    return [*nodes, *(f"{name}_MatMul" for name in nodes)]


def quantize(config: QuantizeConfig) -> dict[str, Any]:
    """Quantize ``config.model`` to ``config.out`` (with manifest); return the manifest.

    Progress goes to the ``compress`` logger. Raises CompressError for bad input, and for a model that
    misses the accuracy budget unless ``allow_over_budget``; then nothing is written.
    """
    float_model = load_any(config.model, role="model")
    source = read_manifest(config.model) or {}
    data = _data(config, source, float_model)
    cpu = cpu_info()
    base = choose_settings(config, cpu)
    precision = base.precision
    budget = DEFAULT_BUDGET_POINTS if config.max_accuracy_drop is None else config.max_accuracy_drop
    # real samples when there is data (zeros can take faster paths), repeated to fill the batch
    timing_input = data.test.batch(float_model.fixed_batch or config.batch_size)
    float_model.run(timing_input)  # one run before any work: a model that fails here stops here
    judge = Judge(float_model, *_held_out(data), data.task)
    if data.kind == "synthetic":
        values = "; ".join(f"{i['name']}: {i['values']}" for i in data.inputs)
        log(f"no data: {precision} is judged against fp32 on {SYNTHETIC_SAMPLES} synthetic samples ({values})")
    if judge.resolution > budget:
        logger.warning(
            f"{len(judge.x)} {judge.split} samples judge {precision}: one of them is {judge.resolution:.2f} points, "
            f"more than the budget of {budget}, so {precision} must match fp32 on every one; give more data or a "
            "larger --max-accuracy-drop"
        )

    out = Path(config.out)
    with staging_dir(out) as workdir:
        if precision == "fp16":  # the converter takes the model as exported, and nothing calibrates
            float_path, preprocess_note, calibration = Path(config.model), "not run (fp16)", None
        else:
            float_path, preprocess_note = _preprocess(Path(config.model), workdir, config.preprocess)
            calibration = _calibration_samples(data.train, config) if data.kind != "synthetic" else None
        quantizer = Quantizer(float_path, workdir, float_model, calibration, float_model.fixed_batch or 32)

        candidates: list[Candidate] = []
        failed: list[dict[str, str]] = []  # search settings the quantizer failed on
        chosen: Candidate | None = None
        if config.search:
            candidates = _search(quantizer, search_space(base, cpu), judge, timing_input, config, failed)
            chosen = _pick([c for c in candidates if c.loss <= budget], base)
            if chosen is None:
                log(f"search: no setting is within {budget} points; narrowing the default setting")
        if chosen is None:
            chosen = judge(Candidate(base, quantizer.quantize(base)))
        sensitivity = None
        if chosen.loss > budget:
            chosen, sensitivity = _narrow(quantizer, chosen, judge, budget)
        over_budget = chosen.loss > budget
        narrowed_to, float_, overflow = ("quantized", "float", "") if precision == "int8" else FP16_WORDS
        if not np.isfinite(chosen.loss):
            raise CompressError(
                f"{precision} gives non-finite outputs (inf or NaN) where fp32 does not, however it is narrowed; "
                f"nothing written (not even with --allow-over-budget){overflow}"
            )
        if over_budget and not config.allow_over_budget:
            raise CompressError(
                f"{precision} misses the fidelity budget: {judge.describe(chosen)} with only Conv/MatMul/Gemm "
                f"{narrowed_to} and {len(chosen.excluded)} of them kept in {float_}, budget {budget}"
                f"{judge.budget_unit}; nothing written — raise --max-accuracy-drop, or pass --allow-over-budget to "
                "keep this model"
            )
        if over_budget:
            logger.warning(f"{precision} is over the fidelity budget ({judge.describe(chosen)}); written as asked")

        # a copy: the search figures of the chosen candidate stay as they were measured
        speed = _time_candidates(config.model, [replace(chosen)], timing_input, config)
        warnings_ = _speed_warnings(chosen, speed, cpu) if precision == "int8" else []
        for warning in warnings_:
            logger.warning(warning)
        coverage = _int8_coverage(chosen.path) if precision == "int8" else _fp16_coverage(chosen.path)
        # The model and its manifest are made in the staging folder and moved into place last, once
        # every check passed: a failure anywhere leaves nothing under the output's name.
        staged = workdir / "out" / out.name
        staged.parent.mkdir()
        shutil.copyfile(chosen.path, staged)
        manifest = new_manifest(out, "quantize", config.model_dump(mode="json"))
        manifest["inputs"] = [input_record("model", config.model)]
        for key in ("model", "input_spec", "output_spec", "preprocessing", "labels", "data", "task"):
            manifest[key] = source.get(key)
        if manifest["task"] is None and data.task is not CLASSIFICATION:  # a model without a manifest: its data's
            manifest["task"] = data.task.record()
        if data.dataset is not None:
            manifest["preprocessing"] = data.dataset.preprocessing.to_dict()
            manifest["labels"] = manifest["labels"] or data.dataset.labels
            manifest["data"] = manifest["data"] or data.dataset.describe()
        manifest["quantization"] = {
            **chosen.settings.to_dict(),
            "precision": precision,
            "excluded_nodes": chosen.excluded,
            "calibration_samples": 0 if calibration is None or chosen.settings.mode == "dynamic" else len(calibration),
            "calibration_split": "train" if calibration is not None else None,
            "preprocessed": preprocess_note,
            "cpu": cpu.describe(),
            "budget_points": budget,
            "over_budget": over_budget,
            "coverage": coverage,
            "sensitivity": sensitivity,
            "search": [_candidate_record(c) for c in candidates] or None,
            "search_failed": failed or None,
            "judged": judge.judged,
            "data": data.describe(),
            "synthetic_inputs": data.inputs,
        }
        quantized_info = model_info(staged)
        by_targets = judge.y is not None
        manifest["metrics"] = {
            "accuracy_split": judge.split if by_targets else None,
            "float_accuracy": judge.float_accuracy,
            "accuracy": chosen.accuracy,
            "accuracy_drop_points": chosen.loss if by_targets and judge.task is CLASSIFICATION else None,
            # every task: its metrics of fp32 and of the quantized model on the targets, and how much worse the
            # quantized model is by the primary one, in metric_drop_unit (None without targets)
            "task": judge.task.name,
            "metric": judge.task.metric if by_targets else None,
            "float_metrics": _finite_values(judge.float_metrics),
            "task_metrics": _finite_values(chosen.metrics) if by_targets else None,
            "metric_drop": _finite(chosen.loss) if by_targets else None,
            "metric_drop_unit": judge.measure if by_targets else None,
            "fidelity": {
                **chosen.fidelity,
                "output": float_model.outputs[0].name,
                "split": judge.split,
                "provider": "cpu",
                "measure": judge.measure,
                "loss_points": chosen.loss,
                "budget_points": budget,
                "resolution_points": judge.resolution,
            },
            "float_size_bytes": model_info(config.model)["size_bytes"],
            "size_bytes": quantized_info["size_bytes"],
            "latency": speed,
            "warnings": warnings_,
            "recommendation": _recommendation(precision, speed),
        }
        manifest["onnx"] = {key: quantized_info[key] for key in ("opset", "nodes", "op_types")}
        manifest["sha256"] = sha256_file(staged)
        manifest["size_bytes"] = quantized_info["size_bytes"]
        write_manifest(staged, manifest)
        os.replace(staged, out)  # the model first: its manifest names its hash
        os.replace(manifest_path(staged), manifest_path(out))
    return manifest


def _pick(within: list[Candidate], base: Settings) -> Candidate | None:
    """The fastest candidate by speed-up over fp32 (each was timed beside fp32, so drift between pairs
    cancels) — but among those not slower than it beyond its round-to-round spread, the most faithful,
    and the default setting on a tie: a winner by noise never costs fidelity."""
    if not within:
        return None
    fastest = max(within, key=lambda c: c.speedup[0])
    default = next((c for c in within if replace(c.settings, reasons=()) == replace(base, reasons=())), None)
    as_fast = [c for c in within if c.speedup[0] >= fastest.speedup[1]]
    chosen = min(as_fast, key=lambda c: (c.loss, c is not default, -c.speedup[0]))
    if chosen is not fastest:
        log(
            f"search: keeping {'the default ' if chosen is default else ''}{chosen.settings.label} "
            f"({chosen.speedup[0]:.2f}x, {chosen.loss:.2f} points): the fastest, {fastest.settings.label} "
            f"({fastest.speedup[0]:.2f}x, {fastest.loss:.2f} points), is not faster beyond its spread "
            f"({fastest.speedup[1]:.2f}-{fastest.speedup[2]:.2f}x)"
        )
    return replace(chosen, settings=base) if chosen is default else chosen


def _search(
    quantizer: Quantizer,
    space: list[Settings],
    judge: Judge,
    timing_input: Samples,
    config: QuantizeConfig,
    failed: list[dict[str, str]],
) -> list[Candidate]:
    """Every setting of ``space`` quantized, judged against fp32, each timed beside fp32. A setting the
    quantizer fails on is left out, said and recorded in ``failed``; when every one fails, the first
    failure is the error."""
    log(f"search: trying {len(space)} settings")
    candidates = []
    for settings in space:
        try:
            candidate = judge(Candidate(settings, quantizer.quantize(settings)))
        except CompressError as exc:
            failed.append({"settings": settings.label, "error": str(exc)})
            log(f"  {settings.label}: failed, left out ({exc})")
            continue
        candidates.append(candidate)
        log(f"  {settings.label}: {judge.describe(candidate)}")
    if not candidates:
        raise CompressError(failed[0]["error"])
    _time_candidates(config.model, candidates, timing_input, config, rounds=3)
    return candidates


def _finite(value: Any) -> Any:
    """``value``, or None for a float that is inf or NaN (manifests are strict JSON)."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _finite_values(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if metrics is None else {name: _finite(value) for name, value in metrics.items()}


def _pct(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{100 * accuracy:.2f}%"


class Judge:
    """Judges a quantized model against fp32 on the held-out samples, by its first output (the model's; what it
    means is ``task``, the task its manifest records or its data's targets show, classification when neither
    does).

    With targets: the task's primary metric, fp32's against the candidate's (``Task.loss_points``): accuracy
    points lost (classification), mAP points lost (multilabel), RMSE's rise in percent of fp32's (regression).
    Without (or when they do not fit the output): how far the outputs moved, in points: top-1 disagreements
    for classifier outputs, the share of (sample, label) decisions changed for multi-label logits, the
    relative L2 error in percent for regression (even several targets per sample) and other float outputs,
    the share of values that changed for integer outputs. The other fidelity figures, of every output, are
    recorded either way."""

    def __init__(
        self, float_model: OnnxModel, x: Samples, y: np.ndarray | None, split: str, task: Task = CLASSIFICATION
    ):
        self.x, self.split = x, split
        self.model = float_model
        self.task = task
        self.judged: list[dict[str, Any]] = []  # every candidate judged, in order: what was tried
        self.references = float_model.predict(x)
        self.reference = self.references[0]
        for port, output in zip(float_model.outputs, self.references):
            if output.dtype.kind == "f" and not np.isfinite(output).all():
                raise CompressError(
                    f"{float_model.name} gives non-finite values (inf or NaN) in output {port.name!r} on the {split} "
                    "samples, so int8 cannot be compared with it; check the data (or --input-range) it is fed"
                )
        self.float_accuracy: float | None = None
        self.float_metrics: dict[str, float] | None = None  # the task's metrics of fp32 (None: no targets)
        if task is CLASSIFICATION:
            self.float_accuracy = classifier_accuracy(self.reference, y)
            if y is not None and self.float_accuracy is None:
                log(
                    f"labels of {split} not used: output {float_model.outputs[0].name!r} of shape "
                    f"{list(self.reference.shape)} gives no classes; judging how far the outputs move"
                )
            self.y = y if self.float_accuracy is not None else None
            if self.y is not None:
                self.float_metrics = {"accuracy": self.float_accuracy}
        else:
            self.y = self._fitting_targets(y)
            if self.y is not None:
                self.float_metrics = task.measure(_per_sample(self.reference), self.y)
                if not np.isfinite(task.score(self.float_metrics)):
                    log(
                        f"targets of {split} not used: fp32's {task.metric_title(task.metric)} cannot be measured on "
                        "them (a multi-label split needs a label with positives); judging how far the outputs move"
                    )
                    self.y, self.float_metrics = None, None
        if self.y is None:
            self.measure = loss_measure(self.reference, task.name)
        else:
            self.measure = "accuracy points lost" if task is CLASSIFICATION else task.loss_unit

    def _fitting_targets(self, y: np.ndarray | None) -> np.ndarray | None:
        """``y`` (label sets or regression targets, one row per sample) when the first output gives one float per
        target for each sample, else None (said)."""
        if y is None:
            return None
        y = y.reshape(len(y), -1)
        output = _per_sample(self.reference)
        if self.reference.dtype.kind != "f" or output.shape != y.shape:
            log(
                f"{self.task.name} targets of {self.split} ({y.shape[1]} per sample) not used: output "
                f"{self.model.outputs[0].name!r} of shape {list(self.reference.shape)} does not give one float each; "
                "judging how far the outputs move"
            )
            return None
        return y

    @property
    def by_task_metric(self) -> bool:
        """Judged by a non-classification task's metric on targets (not accuracy, not output movement)."""
        return self.y is not None and self.task is not CLASSIFICATION

    @property
    def resolution(self) -> float:
        """What one sample is worth, in points (one (sample, label) decision for multi-label outputs without
        targets; 0 for a regression's continuous measures)."""
        if self.task.name == "regression":
            return 0.0
        if self.measure.startswith("label decisions"):
            return 100 / max(_per_sample(self.reference).size, 1)
        return 100 / len(self.x)

    @property
    def budget_unit(self) -> str:
        """What the budget counts, after its number in messages."""
        return "% RMSE rise" if self.by_task_metric and self.task.metric not in self.task.percent else " points"

    def outputs(self, path: Path, x: Samples) -> list[np.ndarray]:
        session = open_session(path, role="quantized model")
        return OnnxModel(session, "the quantized model").predict(x)

    def __call__(self, candidate: Candidate) -> Candidate:
        """``candidate`` with its accuracy (or task metrics), fidelity and loss filled in."""
        outputs = self.outputs(candidate.path, self.x)
        candidate.fidelity = compare_all(self.references, outputs, [o.name for o in self.model.outputs], self.task.name)
        if self.y is not None and self.task is CLASSIFICATION:
            candidate.accuracy = classifier_accuracy(outputs[0], self.y)
            candidate.metrics = {"accuracy": candidate.accuracy}
            candidate.loss = 100 * (self.float_accuracy - candidate.accuracy)
        elif self.y is not None:
            output = _per_sample(outputs[0])
            if np.isfinite(output).all():
                candidate.metrics = self.task.measure(output, self.y)
                candidate.loss = self.task.loss_points(self.float_metrics, candidate.metrics)
            else:  # scikit-learn refuses inf and NaN: the candidate is as far from fp32 as can be
                candidate.metrics, candidate.loss = None, float("inf")
        else:
            candidate.loss = candidate.fidelity["loss_points"]
        if not np.isfinite(candidate.loss):  # int8 outputs of inf or NaN: as far from fp32 as can be
            candidate.loss = float("inf")
            candidate.fidelity = {k: _finite(v) for k, v in candidate.fidelity.items()}
        # exactly one sample over 100 is 1.0000000000000002 points in floating point: not over a budget of 1
        candidate.loss = round(candidate.loss, 9)
        self.judged.append(
            {
                "settings": candidate.settings.label,
                "float_nodes": len(candidate.excluded),
                "loss_points": _finite(candidate.loss),  # None: non-finite outputs
            }
        )
        return candidate

    def describe(self, candidate: Candidate) -> str:
        if candidate.loss == float("inf"):
            return f"non-finite outputs (inf or NaN) on {len(self.x)} {self.split} samples"
        if self.y is not None and self.task is CLASSIFICATION:
            return (
                f"accuracy {_pct(self.float_accuracy)} -> {_pct(candidate.accuracy)} on {self.split} "
                f"(drop {candidate.loss:.2f} points)"
            )
        if self.y is not None:
            task, name = self.task, self.task.metric
            return (
                f"{task.metric_title(name)} {task.format(name, self.float_metrics[name])} -> "
                f"{task.format(name, candidate.metrics[name])} on {self.split} "
                f"({loss_text(task, candidate.loss)})"
            )
        agreement = candidate.fidelity["top1_agreement"]
        changed = candidate.fidelity.get("decisions_changed")
        shown = f"top-1 agreement {_pct(agreement)}, " if agreement is not None else ""
        shown += f"label decisions kept {_pct(1 - changed)}, " if changed is not None else ""
        return (
            f"{shown}relative L2 {candidate.fidelity['relative_l2']:.4f}, cosine {candidate.fidelity['cosine']:.4f} "
            f"on {len(self.x)} {self.split} samples ({candidate.loss:.2f} points)"
        )


def _per_sample(output: np.ndarray) -> np.ndarray:
    """An output as one row per sample, (N, K), as ``Task.measure`` takes it."""
    return output.reshape(len(output), -1)


def loss_text(task: Task, loss: float) -> str:
    """A candidate's loss by ``task``'s primary metric: ``0.25 points lost`` (a fraction such as mAP), or its
    rise in percent (an error such as RMSE), ``+0.72%``."""
    return f"{loss:.2f} points lost" if task.metric in task.percent else f"{loss:+.2f}%"


def _data(config: QuantizeConfig, source: dict, model: OnnxModel) -> ModelData:
    """The samples that calibrate and judge int8 (or judge fp16): ``--data`` or the manifest's data, else
    (dynamic and fp16 modes only: static mode calibrates activation ranges on real samples) synthetic inputs
    from the signature."""
    data = load_model_data(
        config.model,
        model,
        source or None,
        config.data,
        config.preprocessing,
        parse_shapes(config.shapes),
        parse_ranges(config.input_ranges),
        SYNTHETIC_SAMPLES,
        config.seed,
    )
    if data.kind == "synthetic" and (config.mode == "static" or config.search):
        raise CompressError(
            f"{config.model} has no manifest naming its data, and static quantization calibrates on real samples; "
            "pass --data (and --preprocessing for a model without a manifest), or use --mode dynamic"
        )
    return data


def _held_out(data: ModelData) -> tuple[Samples, np.ndarray | None, str]:
    """The samples int8 is judged on, their labels and what they are: the validation split (the test
    split stays unseen by decisions), else the test split, else — without data — synthetic inputs, which
    show whether the outputs moved but not accuracy."""
    if data.kind == "synthetic":
        return data.test, None, "synthetic"
    if data.val is not None:
        return data.val, data.y_val, "val"
    return data.test, data.y_test, "test"


def _calibration_samples(train: Samples, config: QuantizeConfig) -> Samples:
    rng = np.random.default_rng(config.seed)
    n = min(config.calibration_samples, len(train))
    return train.rows(np.sort(rng.choice(len(train), n, replace=False)))


def _preprocess(path: Path, workdir: Path, enabled: bool) -> tuple[Path, str]:
    """ONNX Runtime's quant_pre_process (symbolic shape inference, graph optimisation), run inside the
    staging folder: when shape inference fails it saves the model there (``sym_shape_infer_temp.onnx``
    and its weights), not in the user's working folder. Graphs that defeat symbolic shape inference
    (exported from other frameworks) are tried again without it, since the optimisation alone still
    lets more of the graph fuse into int8 kernels."""
    if not enabled:
        return _without_recorded_shapes(path, workdir), "skipped (--no-preprocess)"
    from onnxruntime.quantization import quant_pre_process

    source, out = path.resolve(), (workdir / "preprocessed.onnx").resolve()  # before moving into workdir
    failures = []
    for skip_symbolic_shape in (False, True):
        try:
            with quiet(), _inside(workdir):
                quant_pre_process(str(source), str(out), skip_symbolic_shape=skip_symbolic_shape)
        except Exception as exc:  # onnxruntime's tools raise plain exceptions
            failures.append(first_line(exc, 100))
            continue
        if not skip_symbolic_shape:
            return out, "quant_pre_process"
        note = f"quant_pre_process without symbolic shape inference (it failed: {failures[0]})"
        log(f"preprocessing: {note}")
        return _without_recorded_shapes(out, workdir), note
    note = f"quant_pre_process failed ({failures[-1]}); quantized as exported"
    logger.warning(
        f"{note}: without inferred shapes and fusions, fewer ops run in int8 and the int8 model can come out "
        "larger or slower (see the timing below)"
    )
    return _without_recorded_shapes(path, workdir), note


def _without_recorded_shapes(path: Path, workdir: Path) -> Path:
    """A copy of the model without the intermediate shapes its exporter recorded (``value_info``).

    Symbolic shape inference rewrites them; without it, onnxruntime's quantizer re-infers shapes
    after splitting a Gemm into MatMul + Add and trips over the recorded ones. They are hints only.
    """
    import onnx

    model = onnx.load(str(path))
    del model.graph.value_info[:]
    out = workdir / "unshaped.onnx"
    onnx.save(model, str(out), save_as_external_data=model.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES)
    return out


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """Work inside ``folder`` (for tools that write into the current folder), then go back."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _quantizable_nodes(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name]


def _narrow(quantizer: Quantizer, chosen: Candidate, judge: Judge, budget: float) -> tuple[Candidate, list | None]:
    """Over budget: quantize only the compute ops (Conv/MatMul/Gemm), then keep their most sensitive
    nodes in float one at a time; the first within budget is kept (the most int8 of those tried),
    else the most faithful. Returns it and the sensitivity ranking, if one was made."""
    verb = "quantizing" if chosen.settings.precision == "int8" else "converting"
    log(f"{chosen.settings.label}: {judge.describe(chosen)}, over the budget of {budget}; {verb} only compute ops")
    compute = replace(chosen.settings, op_types=COMPUTE_OPS)
    narrowed = judge(Candidate(compute, quantizer.quantize(compute)))
    log(f"  {compute.label}: {judge.describe(narrowed)}")
    if narrowed.loss <= budget:
        return narrowed, None
    log("  still over budget; ranking the compute nodes by quantization error")
    ranking = _rank_nodes(quantizer, compute, judge)
    found = _exclude_until_within(quantizer, narrowed, ranking, budget, judge)
    if found.loss <= budget:
        return found, ranking
    return min((chosen, narrowed, found), key=lambda c: c.loss), ranking


def _rank_nodes(quantizer: Quantizer, settings: Settings, judge: Judge) -> list[dict[str, Any]]:
    """Quantize one compute node at a time; rank nodes by the relative error they cause in the outputs."""
    x = judge.x.rows(slice(0, SENSITIVITY_SAMPLES))
    reference = judge.model.predict(x)[0].astype(np.float64)
    scale = float(np.mean(reference**2)) or 1.0
    ranking = []
    for name in _quantizable_nodes(quantizer.float_path):
        path = quantizer.quantize(settings, only=[name])
        outputs = judge.outputs(path, x)[0]
        with np.errstate(invalid="ignore", over="ignore"):  # int8 outputs of inf: a relative_mse of None
            mse = float(np.mean((outputs.astype(np.float64) - reference) ** 2)) / scale
        ranking.append(
            {
                "node": name,
                "relative_mse": _finite(mse),
                "top1_agreement": compare_outputs(reference, outputs, judge.task.name)["top1_agreement"],
            }
        )
        path.unlink()
    # a node whose int8 alone gives inf or NaN (relative_mse None) is the most sensitive of all
    return sorted(ranking, key=lambda r: -(r["relative_mse"] if r["relative_mse"] is not None else float("inf")))


def _exclude_until_within(
    quantizer: Quantizer, start: Candidate, ranking: list[dict], budget: float, judge: Judge
) -> Candidate:
    """From ``start``, keep the most sensitive nodes in float: the first 1, 2, 4, ... of the ranking until
    the budget is met, then the fewest between the last two counts that still meets it (bisection), so a
    graph of hundreds of nodes takes a handful of tries; else the most faithful candidate tried. At least
    one node stays int8: a model with every compute node in float is fp32 under another name."""
    tried: dict[int, Candidate] = {0: start}
    ranking = ranking[:-1]

    def attempt(count: int) -> Candidate:
        if count not in tried:
            excluded = [entry["node"] for entry in ranking[:count]]
            candidate = judge(Candidate(start.settings, quantizer.quantize(start.settings, exclude=excluded), excluded))
            log(f"  float: {_named(excluded)} -> {judge.describe(candidate)}")
            tried[count] = candidate
        return tried[count]

    over, within = 0, None  # counts known to miss / to meet the budget
    count = 1
    while within is None and over < len(ranking):
        count = min(count, len(ranking))
        if attempt(count).loss <= budget:
            within = count
        else:
            over, count = count, 2 * count
    if within is None:
        return min(tried.values(), key=lambda c: c.loss)
    while within - over > 1:
        middle = (over + within) // 2
        if attempt(middle).loss <= budget:
            within = middle
        else:
            over = middle
    return tried[within]


def _named(nodes: list[str], shown: int = 3) -> str:
    """``a, b, c and 5 more``: nodes in a progress line."""
    more = f" and {len(nodes) - shown} more" if len(nodes) > shown else ""
    return f"{len(nodes)} node{'s' if len(nodes) > 1 else ''} ({', '.join(nodes[:shown])}{more})"


def _time_candidates(
    float_model: str, candidates: list[Candidate], x: Samples, config: QuantizeConfig, rounds: int = 5
) -> dict[str, Any]:
    """Time each candidate against fp32, pair by pair (on the CPU provider); fill its latency and speed-up.

    Only the pair's two sessions exist while it is timed: ONNX Runtime's idle worker threads
    spin for a while after each run, and other idle sessions would steal the cores. Returns the
    figures of the last candidate.
    """
    float_runner = OnnxModel(open_session(float_model, threads=config.threads), f"model {float_model}")
    for c in candidates:
        precision = c.settings.precision
        quantized = OnnxModel(open_session(c.path, threads=config.threads), f"the {precision} model")
        pair = {"fp32": float_runner, precision: quantized}
        calls = {name: r.call(x) for name, r in pair.items()}
        result = compare(calls, baseline="fp32", batch_size=len(x), rounds=rounds, seconds_per_round=0.2)
        c.latency = result.stats[precision].to_dict()
        c.speedup = result.speedup(precision)
        float_stats = result.stats["fp32"].to_dict()
    last = candidates[-1]
    return {
        "batch_size": len(x),
        "threads": config.threads,
        "provider": "cpu",
        "float": float_stats,
        last.settings.precision: last.latency,
        "speedup": last.speedup[0],
        "speedup_range": [last.speedup[1], last.speedup[2]],
        "rounds": rounds,
    }


def _speed_warnings(chosen: Candidate, speed: dict, cpu: CpuInfo) -> list[str]:
    """When int8 is not faster than fp32, the likely causes, most specific first."""
    if speed["speedup"] >= NOT_FASTER_RATIO:
        return []
    s = chosen.settings
    counts = _int8_coverage(chosen.path)
    causes = []
    if s.mode == "dynamic":
        causes.append(
            "dynamic quantization computes activation scales at run time "
            "(DynamicQuantizeLinear before each layer); try --mode static"
        )
    if s.format == "qoperator" and s.activation_type == "s8" and cpu.is_x86:
        causes.append("QOperator with s8 activations has no fast kernels on x86-64")
    if cpu.is_x86 and not cpu.has_vnni:
        causes.append("this CPU has no VNNI, so int8 dot products take slower AVX2/AVX512BW paths")
    if counts["float_compute"]:
        causes.append(
            f"{counts['float_compute']} of {counts['float_compute'] + counts['int8_compute']} compute ops stay in float"
        )
    if counts["conversions"] > 2 * max(counts["int8_compute"], 1):
        causes.append(
            f"{counts['conversions']} quantize/dequantize conversions for "
            f"{counts['int8_compute']} int8 ops: ops without int8 kernels (pooling, means, "
            "reshapes) split the int8 graph"
        )
    causes.append(
        f"at batch {speed['batch_size']} the layers are small, so per-op overhead outweighs the cheaper int8 arithmetic"
    )
    return [
        f"int8 is not faster than fp32 here ({speed['speedup']:.2f}x at batch "
        f"{speed['batch_size']}); likely: " + "; ".join(causes) + ". Consider keeping fp32."
    ]


def _recommendation(precision: str, speed: dict) -> str:
    """What to use: int8 when it is faster, else fp32; fp16 on GPU providers, and on the CPU provider only when
    it measured faster there."""
    faster = speed["speedup"] >= NOT_FASTER_RATIO
    if precision == "fp16":
        return "fp16 on GPU providers (CUDA/TensorRT)" + ("" if faster else "; fp32 on the CPU provider")
    return "int8" if faster else "keep fp32"


def _fp16_coverage(path: Path) -> dict[str, int]:
    """Compute ops running in fp16 (fed a float16 tensor) vs float32, and the casts between the two, in a
    graph of onnxruntime's float16 converter (it records the type of every float16 tensor)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    fp16 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    fp16 |= {
        v.name
        for v in (*graph.value_info, *graph.input, *graph.output)
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    }
    compute = [n for n in graph.node if n.op_type in COMPUTE_OPS]
    in_fp16 = sum(any(name in fp16 for name in n.input[:2]) for n in compute)
    casts = sum(n.op_type == "Cast" for n in graph.node)
    return {"fp16_compute": in_fp16, "float_compute": len(compute) - in_fp16, "conversions": casts}


def _int8_coverage(path: Path) -> dict[str, int]:
    """Compute ops running in int8 vs float, and the Q/DQ conversions, in a quantized graph.

    In QDQ format a quantized Conv/MatMul/Gemm is still written as the float op, fed by
    DequantizeLinear (ONNX Runtime fuses the pattern into an int8 kernel); in QOperator format it
    is replaced by an integer op.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    integer_ops = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "DynamicQuantizeMatMul")
    int8 = sum(n.op_type in integer_ops for n in graph.node)
    float_compute = 0
    for n in graph.node:
        if n.op_type in COMPUTE_OPS:
            if len(n.input) > 1 and all(i in dequantized for i in n.input[:2]):
                int8 += 1
            else:
                float_compute += 1
    conversions = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear") for n in graph.node)
    return {"int8_compute": int8, "float_compute": float_compute, "conversions": conversions}


def _candidate_record(c: Candidate) -> dict[str, Any]:
    return {
        "settings": c.settings.label,
        "backend": c.settings.backend,
        "mode": c.settings.mode,
        "format": c.settings.format,
        "activation_type": c.settings.activation_type,
        "weight_type": c.settings.weight_type,
        "per_channel": c.settings.per_channel,
        "accuracy": c.accuracy,
        "metrics": _finite_values(c.metrics),
        "loss_points": _finite(c.loss),
        "top1_agreement": c.fidelity["top1_agreement"],
        "p50_ms": c.latency["p50_ms"] if c.latency else None,
        "speedup": c.speedup[0] if c.speedup else None,
        "speedup_range": [c.speedup[1], c.speedup[2]] if c.speedup else None,
    }


def summary(manifest: dict[str, Any]) -> list[str]:
    q, m = manifest["quantization"], manifest["metrics"]
    precision = q["precision"]
    by = f"NNCF, {q['nncf_preset']} preset: " if q.get("backend") == "nncf" else ""
    if precision == "fp16":
        only = f", only {'/'.join(q['op_types'])} in fp16" if q["op_types"] else ""
        lines = [
            "settings: fp16 by onnxruntime.transformers.float16: weights and activations float16, inputs and "
            f"outputs float32{only}"
        ]
    else:
        lines = [
            f"settings: {by}{q['mode']}, {q['format']}, activations {q['activation_type']}, weights "
            f"{q['weight_type']}{', per-channel' if q['per_channel'] else ''}"
            f"{', reduce_range' if q['reduce_range'] else ''}"
            + (
                f", {q['calibration']} calibration on {q['calibration_samples']} samples"
                if q["mode"] == "static"
                else ""
            )
        ]
    lines += [f"  why: {reason}" for reason in q["reasons"]]
    task, metric = get_task(m["task"]) if m.get("task") else task_of(manifest), m.get("metric")
    by_task = metric is not None and task is not CLASSIFICATION  # judged by a multilabel/regression metric
    if q["search"]:
        column = task.metric_title(metric) if by_task else "accuracy"
        lines.append(f"{'candidate':<42} {column:>9} {'p50 ms':>8} {'speed-up':>8}")
        for c in q["search"]:
            if by_task:
                acc = task.format(metric, (c.get("metrics") or {}).get(metric))
            else:
                acc = "n/a" if c["accuracy"] is None else f"{100 * c['accuracy']:.2f}%"
            lines.append(f"{c['settings']:<42} {acc:>9} {c['p50_ms']:>8.3f} {c['speedup']:>7.2f}x")
    if q["excluded_nodes"]:
        kept = "float32 (weights and arithmetic; the converter passes tensors between nodes in fp16)"
        lines.append(f"kept in {kept if precision == 'fp16' else 'float'}: {', '.join(q['excluded_nodes'])}")
    if m["float_accuracy"] is not None:
        lines.append(
            f"accuracy ({m['accuracy_split']}): fp32 {100 * m['float_accuracy']:.2f}% -> {precision} "
            f"{100 * m['accuracy']:.2f}% (drop {m['accuracy_drop_points']:.2f} points)"
        )
    if by_task:
        before, after = m["float_metrics"], m["task_metrics"]
        others = ", ".join(
            f"{task.metric_title(name)} {task.format(name, before.get(name))} -> {task.format(name, after.get(name))}"
            for name in task.metrics
            if name != metric
        )
        lines.append(
            f"{task.metric_title(metric)} ({m['accuracy_split']}): fp32 {task.format(metric, before.get(metric))} -> "
            f"{precision} {task.format(metric, after.get(metric))} ({loss_text(task, m['metric_drop'])})"
            + (f"; {others}" if others else "")
        )
    f = m["fidelity"]
    agreement = "" if f["top1_agreement"] is None else f"top-1 agreement {100 * f['top1_agreement']:.2f}%, "
    if f.get("decisions_changed") is not None:
        agreement += f"label decisions kept {100 * (1 - f['decisions_changed']):.2f}%, "
    lines.append(
        f"fidelity ({f['samples']} {f['split']} samples): {agreement}cosine {f['cosine']:.4f}, relative L2 "
        f"{f['relative_l2']:.4f}, max abs diff {f['max_abs_diff']:.3g}; {f['loss_points']:.2f} {f['measure']}, "
        f"budget {f['budget_points']}"
    )
    lines += [FP16_JUDGED_ON_CPU] if precision == "fp16" else []
    if f["split"] == "synthetic":
        measured = task.metric_title(task.metric) if task is not CLASSIFICATION else "accuracy"
        lines.append(f"{measured} not measured: no data, so {precision} was judged on random inputs only (pass --data)")
    lat = m["latency"]
    lines.append(
        f"latency{' on the CPU provider' if precision == 'fp16' else ''} (batch {lat['batch_size']}, p50): fp32 "
        f"{lat['float']['p50_ms']:.3f} ms -> {precision} {lat[precision]['p50_ms']:.3f} ms, {lat['speedup']:.2f}x "
        f"({lat['speedup_range'][0]:.2f}-{lat['speedup_range'][1]:.2f}x over {lat['rounds']} rounds)"
    )
    lines += [FP16_ON_CPU] if precision == "fp16" else []
    lines.append(f"size: {m['float_size_bytes'] / 1024:.1f} KiB -> {m['size_bytes'] / 1024:.1f} KiB")
    lines += [f"recommendation: {m['recommendation']}"] if m["warnings"] or precision == "fp16" else []
    return lines


STAGE = Stage(
    name="quantize",
    config=QuantizeConfig,
    run=quantize,
    summary=summary,
    reads=("model",),
    help="""Quantize an ONNX model to int8 (or fp16 for GPU providers), then check accuracy and speed.

    int8 by onnxruntime.quantization (or NNCF); --mode fp16 by onnxruntime.transformers.float16.

    \b
    Examples:
      compress quantize runs/mnist/student.onnx --out runs/mnist/student.int8.onnx
      compress quantize runs/mnist/teacher.onnx --out runs/mnist/teacher.int8.onnx \\
                        --search --max-accuracy-drop 0.3
      compress quantize model.onnx --data mnist:DIR --preprocessing fit --mode dynamic --out model.int8.onnx
      # several inputs: an npz with one array per input, named after it (y: labels, optional)
      compress quantize text.onnx --data npz:tokens.npz --out text.int8.onnx
      compress quantize text.onnx --mode dynamic --shape input_ids=1x128 --out text.int8.onnx
      # fp16 for CUDA/TensorRT (inputs and outputs stay float32; usually no faster on the CPU provider)
      compress quantize runs/mnist/student.onnx --mode fp16 --out runs/mnist/student.fp16.onnx
    """,
)
