"""``compress quantize``: int8 through onnxruntime.quantization, checked for accuracy and for speed.

The quantization itself is ONNX Runtime's (``quant_pre_process``, ``quantize_static``,
``quantize_dynamic``). What compress adds around it:

* types chosen for the CPU at hand, with the reason stated;
* an accuracy budget: nodes whose quantization hurts most are kept in float, greedily, until
  the int8 model is within ``max_accuracy_drop`` points of the fp32 one on the validation split;
* ``search``: every sensible setting quantized, its accuracy measured and its latency timed in
  rounds alternating with fp32, the one with the best speed-up within budget kept;
* an honest timing of fp32 against int8 afterwards, with the likely cause when int8 is not faster.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
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
from ..data import Dataset, PreprocessingChoice, load_dataset_for
from ..errors import CompressError, first_line
from ..hardware import CpuInfo, cpu_info
from ..measure.latency import compare
from ..onnx_io import OnnxClassifier, load_classifier, model_info, open_session, quiet
from .base import Cli, Stage, StageConfig, output_suffix
from .train import DATA_HELP, MAX_BATCH, MAX_SAMPLES, MAX_SEED, MAX_THREADS

# The ops whose int8 kernels make the speed; a node of these types is what the accuracy loop keeps in float.
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
logger = logging.getLogger(__name__)
log = logger.info

SEARCH_DEFAULT_BUDGET = 1.0  # accuracy points, when --search is given without --max-accuracy-drop
SENSITIVITY_SAMPLES = 512  # validation samples that rank the nodes by quantization error
NOT_FASTER_RATIO = 1.05  # int8 below this speed-up counts as "not faster"


class QuantizeConfig(StageConfig):
    model: Annotated[str, Cli(argument=True)] = Field(description="The fp32 ONNX model to quantize.")
    out: str = Field(description="int8 ONNX model to write (.onnx); its manifest goes beside it (.onnx.json).")
    data: str | None = Field(
        None, description=f"Calibration and validation data (default: the data in the model's manifest): {DATA_HELP}."
    )
    preprocessing: PreprocessingChoice | None = Field(
        None,
        description="For a model without a manifest: how its inputs were normalised (fit: mean/std of the "
        "training split, as compress train does; scale: pixels to [0, 1]; raw).",
    )
    mode: Literal["static", "dynamic"] = Field(
        "static", description="static: activation ranges calibrated on --data; dynamic: computed at run time."
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
        description="Accuracy budget against fp32 on the validation split, in points: keep "
        "the most sensitive nodes in float until it is met.",
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

    _out = output_suffix(".onnx")

    @model_validator(mode="after")
    def _keeps_the_input(self) -> QuantizeConfig:
        if Path(self.out).resolve() == Path(self.model).resolve():
            raise ValueError("`out` must differ from the input model; the fp32 model is kept")
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

    @property
    def label(self) -> str:
        if self.mode == "dynamic":
            return f"dynamic {self.weight_type} weights{' per-channel' if self.per_channel else ''}"
        return (
            f"static {self.format.upper() if self.format == 'qdq' else 'QOperator'} "
            f"{self.activation_type}{self.weight_type}{' per-channel' if self.per_channel else ''}"
            f" {self.calibration}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d


@dataclass
class Candidate:
    settings: Settings
    path: Path
    excluded: list[str] = field(default_factory=list)
    accuracy: float | None = None
    latency: dict | None = None
    speedup: tuple[float, float, float] | None = None


def choose_settings(config: QuantizeConfig, cpu: CpuInfo) -> Settings:
    """Fill in ``auto`` types for this CPU and say why (after ONNX Runtime's quantization guide)."""
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
    """onnxruntime.quantization's data-reader protocol over preprocessed samples."""

    def __init__(self, name: str, samples: np.ndarray, batch: int):
        self._batches = [
            {name: np.ascontiguousarray(samples[i : i + batch])} for i in range(0, len(samples) - batch + 1, batch)
        ] or [{name: samples}]
        self._next = iter(self._batches)

    def get_next(self):
        return next(self._next, None)

    def rewind(self):
        self._next = iter(self._batches)


class Quantizer:
    """Quantizes one float model in various ways; calibration runs once per method and is reused."""

    def __init__(self, float_path: Path, workdir: Path, input_name: str, calibration: np.ndarray | None, batch: int):
        self.float_path = float_path
        self.workdir = workdir
        self.input_name = input_name
        self.calibration = calibration
        self.batch = batch
        self._count = 0

    def quantize(self, settings: Settings, exclude: list[str] = (), only: list[str] | None = None) -> Path:
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
            op_types_to_quantize=None,
            nodes_to_exclude=list(exclude),
            nodes_to_quantize=only,
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
                    reader = _CalibrationReader(self.input_name, self.calibration, self.batch)
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


def quantize(config: QuantizeConfig) -> dict[str, Any]:
    """Quantize ``config.model`` to ``config.out`` (with manifest); return the manifest.

    Progress goes to the ``compress`` logger. Raises CompressError for bad input, and for a model that
    misses the accuracy budget unless ``allow_over_budget``; then nothing is written.
    """
    float_runner = load_classifier(config.model, role="model")
    source = read_manifest(config.model) or {}
    needs_data = config.mode == "static" or config.search or config.max_accuracy_drop is not None
    dataset = _dataset(config, source, float_runner, needs_data)
    cpu = cpu_info()
    base = choose_settings(config, cpu)
    budget = config.max_accuracy_drop
    if config.search and budget is None:
        budget = SEARCH_DEFAULT_BUDGET
    eval_x, eval_y, eval_split = _evaluation_split(dataset)
    timing_input = _timing_input(float_runner, dataset, config.batch_size)
    float_runner.run(timing_input)  # one run before any work: a model that fails or gives no (N, C) logits stops here

    out = Path(config.out)
    with staging_dir(out) as workdir:
        float_path, preprocess_note = _preprocess(Path(config.model), workdir, config.preprocess)
        calibration = _calibration_samples(dataset, config) if dataset is not None else None
        quantizer = Quantizer(float_path, workdir, float_runner.input_name, calibration, float_runner.fixed_batch or 32)
        float_accuracy = float_runner.accuracy(eval_x, eval_y) if eval_x is not None else None
        accuracy_of = _accuracy_meter(eval_x, eval_y)

        def drop(candidate: Candidate) -> float:
            return _drop(float_accuracy, candidate.accuracy)

        candidates: list[Candidate] = []
        chosen: Candidate | None = None
        if config.search:
            candidates = _search(quantizer, search_space(base, cpu), accuracy_of, timing_input, config)
            within = [c for c in candidates if drop(c) <= budget]
            chosen = _pick(within, base)
            if chosen is None:
                log(
                    f"search: no setting is within {budget} points; keeping the most sensitive "
                    "nodes in float for the default setting"
                )
        if chosen is None:
            chosen = Candidate(base, quantizer.quantize(base))
            chosen.accuracy = accuracy_of(chosen.path)

        sensitivity = None
        if budget is not None and drop(chosen) > budget:
            log(
                f"{chosen.settings.label}: accuracy drop {drop(chosen):.2f} points is over the "
                f"budget of {budget}; ranking nodes by quantization error"
            )
            sensitivity = _rank_nodes(quantizer, chosen.settings, float_runner, float_path, eval_x)
            chosen = _exclude_until_within(quantizer, chosen, sensitivity, float_accuracy, budget, accuracy_of)
        over_budget = budget is not None and drop(chosen) > budget
        if over_budget and not config.allow_over_budget:
            raise CompressError(
                f"int8 misses the accuracy budget: {drop(chosen):.2f} points below fp32 "
                f"({_pct(chosen.accuracy)} against {_pct(float_accuracy)} on {eval_split}) with "
                f"{len(chosen.excluded)} nodes kept in float, budget {budget}; nothing written — "
                "raise --max-accuracy-drop, or pass --allow-over-budget to keep this model"
            )

        # a copy: the search figures of the chosen candidate stay as they were measured
        speed = _time_candidates(config.model, [replace(chosen)], timing_input, config)
        warnings_ = _speed_warnings(chosen, speed, cpu)
        for warning in warnings_:
            logger.warning(warning)
        coverage = _int8_coverage(chosen.path)
        # The model and its manifest are made in the staging folder and moved into place last, once
        # every check passed: a failure anywhere leaves nothing under the output's name.
        staged = workdir / "out" / out.name
        staged.parent.mkdir()
        shutil.copyfile(chosen.path, staged)
        manifest = new_manifest(out, "quantize", config.model_dump(mode="json"))
        manifest["inputs"] = [input_record("model", config.model)]
        for key in ("model", "input_spec", "output_spec", "preprocessing", "labels", "data"):
            manifest[key] = source.get(key)
        if dataset is not None:
            manifest["preprocessing"] = dataset.preprocessing.to_dict()
            manifest["labels"] = manifest["labels"] or dataset.labels
            manifest["data"] = manifest["data"] or dataset.describe()
        manifest["quantization"] = {
            **chosen.settings.to_dict(),
            "excluded_nodes": chosen.excluded,
            "calibration_samples": 0 if calibration is None or chosen.settings.mode == "dynamic" else len(calibration),
            "calibration_split": "train",
            "preprocessed": preprocess_note,
            "cpu": cpu.describe(),
            "budget_points": budget,
            "over_budget": over_budget,
            "coverage": coverage,
            "sensitivity": sensitivity,
            "search": [_candidate_record(c, float_accuracy) for c in candidates] or None,
        }
        int8_info = model_info(staged)
        manifest["metrics"] = {
            "accuracy_split": eval_split,
            "float_accuracy": float_accuracy,
            "accuracy": chosen.accuracy,
            "accuracy_drop_points": drop(chosen) if float_accuracy is not None else None,
            "float_size_bytes": model_info(config.model)["size_bytes"],
            "size_bytes": int8_info["size_bytes"],
            "latency": speed,
            "warnings": warnings_,
            "recommendation": "keep fp32" if speed["speedup"] < NOT_FASTER_RATIO else "int8",
        }
        manifest["onnx"] = {"opset": int8_info["opset"], "nodes": int8_info["nodes"], "op_types": int8_info["op_types"]}
        manifest["sha256"] = sha256_file(staged)
        manifest["size_bytes"] = int8_info["size_bytes"]
        write_manifest(staged, manifest)
        os.replace(staged, out)  # the model first: its manifest names its hash
        os.replace(manifest_path(staged), manifest_path(out))
    return manifest


def _pick(within: list[Candidate], base: Settings) -> Candidate | None:
    """The fastest candidate by speed-up over fp32 (each was timed beside fp32, so drift between
    pairs cancels) — unless the default setting is within that one's round-to-round spread: then
    the default, rather than a winner by noise."""
    if not within:
        return None
    fastest = max(within, key=lambda c: c.speedup[0])
    default = next((c for c in within if replace(c.settings, reasons=()) == replace(base, reasons=())), None)
    if default is not None and default is not fastest and default.speedup[0] >= fastest.speedup[1]:
        log(
            f"search: keeping the default {default.settings.label} ({default.speedup[0]:.2f}x): the "
            f"fastest, {fastest.settings.label} ({fastest.speedup[0]:.2f}x), is not faster beyond "
            f"its spread ({fastest.speedup[1]:.2f}-{fastest.speedup[2]:.2f}x)"
        )
        return replace(default, settings=base)
    return fastest


def _search(
    quantizer: Quantizer,
    space: list[Settings],
    accuracy_of: Callable[[Path], float | None],
    timing_input: np.ndarray,
    config: QuantizeConfig,
) -> list[Candidate]:
    """Every setting of ``space`` quantized, its accuracy measured, each timed beside fp32."""
    log(f"search: trying {len(space)} settings")
    candidates = []
    for settings in space:
        candidate = Candidate(settings, quantizer.quantize(settings))
        candidate.accuracy = accuracy_of(candidate.path)
        candidates.append(candidate)
        log(f"  {settings.label}: accuracy {_pct(candidate.accuracy)}")
    _time_candidates(config.model, candidates, timing_input, config, rounds=3)
    return candidates


def _pct(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{100 * accuracy:.2f}%"


def _drop(float_accuracy: float | None, accuracy: float | None) -> float:
    if float_accuracy is None or accuracy is None:
        return 0.0
    return 100 * (float_accuracy - accuracy)


def _dataset(config: QuantizeConfig, source: dict, runner: OnnxClassifier, needed: bool) -> Dataset | None:
    if not needed and not config.data and not source.get("data"):
        return None
    if not config.data and not source.get("data"):
        raise CompressError(
            f"{config.model} has no manifest naming its data, and static "
            "quantization needs calibration data; pass --data (and --preprocessing), "
            "or use --mode dynamic"
        )
    dataset = load_dataset_for(config.model, source or None, config.data, config.preprocessing)
    runner.check_fits(dataset.in_shape, dataset.spec)
    return dataset


def _evaluation_split(dataset: Dataset | None) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """Accuracy is compared on the validation split, so the test split stays unseen by decisions."""
    if dataset is None:
        return None, None, None
    if len(dataset.y_val):
        return dataset.x_val, dataset.y_val, "val"
    return dataset.x_test, dataset.y_test, "test"


def _calibration_samples(dataset: Dataset, config: QuantizeConfig) -> np.ndarray:
    rng = np.random.default_rng(config.seed)
    n = min(config.calibration_samples, len(dataset.x_train))
    return dataset.x_train[np.sort(rng.choice(len(dataset.x_train), n, replace=False))]


def _timing_input(runner: OnnxClassifier, dataset: Dataset | None, batch: int) -> np.ndarray:
    """Real samples when there is data (zeros can take faster paths), repeated to fill the batch."""
    batch = runner.fixed_batch or batch
    if dataset is None:
        shape = runner.sample_shape
        if shape is None:
            raise CompressError(
                f"{runner.name} has symbolic sample dimensions; pass --data so real samples can be timed"
            )
        return np.zeros((batch, *shape), np.float32)
    x = dataset.x_test
    return np.ascontiguousarray(x[np.arange(batch) % len(x)])


def _accuracy_meter(x: np.ndarray | None, y: np.ndarray | None) -> Callable[[Path], float | None]:
    def accuracy(path: Path) -> float | None:
        if x is None:
            return None
        return OnnxClassifier(open_session(path, role="quantized model"), "the quantized model").accuracy(x, y)

    return accuracy


def _preprocess(path: Path, workdir: Path, enabled: bool) -> tuple[Path, str]:
    """ONNX Runtime's quant_pre_process: symbolic shape inference and graph optimisation."""
    if not enabled:
        return path, "skipped (--no-preprocess)"
    from onnxruntime.quantization import quant_pre_process

    out = workdir / "preprocessed.onnx"
    try:
        with quiet():
            quant_pre_process(str(path), str(out))
        return out, "quant_pre_process"
    except Exception as exc:  # some graphs defeat symbolic shape inference: quantize as exported
        return path, f"quant_pre_process failed ({first_line(exc, 100)}); quantized as exported"


def _quantizable_nodes(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name]


def _rank_nodes(
    quantizer: Quantizer, settings: Settings, float_runner: OnnxClassifier, float_path: Path, x: np.ndarray
) -> list[dict[str, Any]]:
    """Quantize one node at a time; rank nodes by the relative error they cause in the logits."""
    x = x[:SENSITIVITY_SAMPLES]
    reference = float_runner.predict(x)
    scale = float(np.mean(reference.astype(np.float64) ** 2)) or 1.0
    ranking = []
    for name in _quantizable_nodes(float_path):
        path = quantizer.quantize(settings, only=[name])
        logits = OnnxClassifier(open_session(path, role="quantized model"), "the quantized model").predict(x)
        error = float(np.mean((logits.astype(np.float64) - reference) ** 2)) / scale
        ranking.append(
            {
                "node": name,
                "relative_mse": error,
                "top1_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
            }
        )
        path.unlink()
    return sorted(ranking, key=lambda r: -r["relative_mse"])


def _exclude_until_within(
    quantizer: Quantizer,
    chosen: Candidate,
    ranking: list[dict],
    float_accuracy: float,
    budget: float,
    accuracy_of: Callable[[Path], float | None],
) -> Candidate:
    """Keep the most sensitive nodes in float, one more at a time, until the budget is met."""
    excluded: list[str] = []
    best = chosen
    for entry in ranking:
        excluded.append(entry["node"])
        candidate = Candidate(
            chosen.settings, quantizer.quantize(chosen.settings, exclude=excluded), excluded=list(excluded)
        )
        candidate.accuracy = accuracy_of(candidate.path)
        drop = _drop(float_accuracy, candidate.accuracy)
        log(f"  float: {', '.join(excluded)} -> accuracy {_pct(candidate.accuracy)}, drop {drop:.2f} points")
        if candidate.accuracy >= best.accuracy:
            best = candidate
        if drop <= budget:
            return candidate
    return best


def _time_candidates(
    float_model: str, candidates: list[Candidate], x: np.ndarray, config: QuantizeConfig, rounds: int = 5
) -> dict[str, Any]:
    """Time each candidate against fp32, pair by pair; fill its latency and speed-up.

    Only the pair's two sessions exist while it is timed: ONNX Runtime's idle worker threads
    spin for a while after each run, and other idle sessions would steal the cores. Returns the
    figures of the last candidate.
    """
    float_runner = OnnxClassifier(open_session(float_model, threads=config.threads), f"model {float_model}")
    for c in candidates:
        int8_runner = OnnxClassifier(open_session(c.path, threads=config.threads), "the quantized model")
        pair = {"fp32": float_runner, "int8": int8_runner}
        calls = {name: r.call(x) for name, r in pair.items()}
        result = compare(calls, baseline="fp32", batch_size=len(x), rounds=rounds, seconds_per_round=0.2)
        c.latency = result.stats["int8"].to_dict()
        c.speedup = result.speedup("int8")
        float_stats = result.stats["fp32"].to_dict()
    last = candidates[-1]
    return {
        "batch_size": len(x),
        "threads": config.threads,
        "float": float_stats,
        "int8": last.latency,
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


def _candidate_record(c: Candidate, float_accuracy: float | None) -> dict[str, Any]:
    return {
        "settings": c.settings.label,
        "mode": c.settings.mode,
        "format": c.settings.format,
        "activation_type": c.settings.activation_type,
        "weight_type": c.settings.weight_type,
        "per_channel": c.settings.per_channel,
        "accuracy": c.accuracy,
        "accuracy_drop_points": _drop(float_accuracy, c.accuracy),
        "p50_ms": c.latency["p50_ms"] if c.latency else None,
        "speedup": c.speedup[0] if c.speedup else None,
        "speedup_range": [c.speedup[1], c.speedup[2]] if c.speedup else None,
    }


def summary(manifest: dict[str, Any]) -> list[str]:
    q, m = manifest["quantization"], manifest["metrics"]
    lines = [
        f"settings: {q['mode']}, {q['format']}, activations {q['activation_type']}, weights "
        f"{q['weight_type']}{', per-channel' if q['per_channel'] else ''}"
        f"{', reduce_range' if q['reduce_range'] else ''}"
        + (f", {q['calibration']} calibration on {q['calibration_samples']} samples" if q["mode"] == "static" else "")
    ]
    lines += [f"  why: {reason}" for reason in q["reasons"]]
    if q["search"]:
        lines.append(f"{'candidate':<42} {'accuracy':>9} {'p50 ms':>8} {'speed-up':>8}")
        for c in q["search"]:
            acc = "n/a" if c["accuracy"] is None else f"{100 * c['accuracy']:.2f}%"
            lines.append(f"{c['settings']:<42} {acc:>9} {c['p50_ms']:>8.3f} {c['speedup']:>7.2f}x")
    if q["excluded_nodes"]:
        lines.append(f"kept in float: {', '.join(q['excluded_nodes'])}")
    if m["float_accuracy"] is not None:
        lines.append(
            f"accuracy ({m['accuracy_split']}): fp32 {100 * m['float_accuracy']:.2f}% -> int8 "
            f"{100 * m['accuracy']:.2f}% (drop {m['accuracy_drop_points']:.2f} points)"
        )
    lat = m["latency"]
    lines.append(
        f"latency (batch {lat['batch_size']}, p50): fp32 {lat['float']['p50_ms']:.3f} ms -> int8 "
        f"{lat['int8']['p50_ms']:.3f} ms, {lat['speedup']:.2f}x "
        f"({lat['speedup_range'][0]:.2f}-{lat['speedup_range'][1]:.2f}x over {lat['rounds']} rounds)"
    )
    lines.append(f"size: {m['float_size_bytes'] / 1024:.1f} KiB -> {m['size_bytes'] / 1024:.1f} KiB")
    lines += [f"recommendation: {m['recommendation']}"] if m["warnings"] else []
    return lines


STAGE = Stage(
    name="quantize",
    config=QuantizeConfig,
    run=quantize,
    summary=summary,
    reads=("model",),
    help="""Quantize an ONNX model to int8 with onnxruntime.quantization, then check accuracy and speed.

    \b
    Examples:
      compress quantize runs/mnist/student.onnx --out runs/mnist/student.int8.onnx
      compress quantize runs/mnist/teacher.onnx --out runs/mnist/teacher.int8.onnx \\
                        --search --max-accuracy-drop 0.3
      compress quantize model.onnx --data mnist:DIR --preprocessing fit --mode dynamic --out model.int8.onnx
    """,
)
