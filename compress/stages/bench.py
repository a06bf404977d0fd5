"""``compress bench``: latency and accuracy of ONNX models against a baseline, as a report.

For every provider, batch size and thread count, each model is timed in rounds alternating
with the baseline (only that pair of sessions alive), so the speed-up and its interval come from
one interleaved measurement. The task's metrics (top-1/top-5 accuracy for a classifier; mAP and
F1 for a multi-label model; RMSE, MAE and R² for a regressor: see :mod:`compress.tasks`) are
measured on the test split through ONNX Runtime where the first output fits the targets; the
outputs are also compared with the baseline's, and without data every model runs on synthetic
inputs drawn from its signature. Models of different tasks are not benched together.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..artifacts import cached_sha256, read_manifest
from ..data import PREPROCESSING_HELP, PreprocessingChoice
from ..data.model_data import ModelData, load_model_data
from ..errors import CompressError
from ..feeds import Samples, parse_ranges, parse_shapes
from ..hardware import machine_info
from ..measure.fidelity import classifier_accuracy, compare_outputs, gives_classes
from ..measure.latency import LatencyStats, compare, time_calls
from ..measure.report import REPORT_FILES, write_report
from ..measure.runner import PROVIDERS, check_gpu, first_run_s, load, make_call, node_placement, peak_memory_mb
from ..measure.stats import median_ci, speedup_ci, verdict
from ..onnx_io import OptimizationLevel, load_any, model_info
from ..tasks import CLASSIFICATION, Task
from .base import RANGES_HELP, SHAPES_HELP, Cli, InputRanges, InputShapes, Shortcut, Stage, StageConfig
from .train import DATA_HELP, MAX_BATCH, MAX_SAMPLES, MAX_THREADS

REPORT_FORMAT = "compress-bench-report/1"
log = logging.getLogger(__name__).info
SYNTHETIC_SAMPLES = 1000  # inputs drawn from the signature when there is no data
MAX_RUNS = 100_000  # the timing harness stops at this many runs (time_calls' max_runs)
ROUNDS = 7  # the min-max of 7 per-round speed-ups holds the median speed-up with 98% confidence


def _comma_list(item: type) -> Callable[[str], list]:
    """``--batch-sizes 1,64`` -> [1, 64]."""

    def parse(text: str) -> list:
        try:
            return [item(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            kind = "whole numbers, e.g. 1,64" if item is int else "names"
            raise ValueError(f"a comma-separated list of {kind}, got {text!r}") from None

    return parse


class BenchConfig(StageConfig):
    models: Annotated[list[str], Cli(argument=True)] = Field(description="The ONNX models to measure.")
    report: str = Field(
        "bench-report",
        description="Folder for report.json, report.md, report.html and plot.png, relative to the current folder; "
        "a report already there is replaced.",
    )
    baseline: str | None = Field(None, description="The model the others are compared with (default: the first).")
    data: str | None = Field(
        None,
        description=f"Test data (default: each model's manifest data; none: latency only, on synthetic inputs): "
        f"{DATA_HELP}; or npz:FILE with arrays named after the model's inputs and optionally y (labels).",
    )
    preprocessing: PreprocessingChoice | None = Field(
        None,
        description=f"For a model without a manifest: {PREPROCESSING_HELP}.",
    )
    providers: Annotated[list[Literal[tuple(PROVIDERS)]], Cli(parse=_comma_list(str))] = Field(
        default_factory=lambda: ["cpu"],
        min_length=1,
        description="Execution providers, comma-separated: cpu, cuda, tensorrt; cuda-graph is CUDA replaying one "
        "captured CUDA graph per batch size.",
    )
    batch_sizes: Annotated[list[Annotated[int, Field(ge=1, le=MAX_BATCH)]], Cli(parse=_comma_list(int))] = Field(
        default_factory=lambda: [1, 64], min_length=1, description="Batch sizes, comma-separated."
    )
    threads: Annotated[list[Annotated[int, Field(ge=1, le=MAX_THREADS)]], Cli(parse=_comma_list(int))] = Field(
        default_factory=lambda: [1], min_length=1, description="Intra-op thread counts, comma-separated."
    )
    warmup: int = Field(10, ge=0, le=MAX_RUNS, description="Untimed runs first.")
    min_runs: int = Field(50, ge=1, le=MAX_RUNS, description="Timed runs per model and configuration, at least.")
    min_time: float = Field(
        1.0, gt=0, le=3600, description="Seconds of timed runs per model and configuration, at least."
    )
    optimization: OptimizationLevel = Field("all", description="ONNX Runtime graph optimisation.")
    include_copies: bool = Field(
        False, description="GPU: time host-to-device and back copies too (default: IOBinding keeps data on the device)."
    )
    accuracy_samples: int | None = Field(
        None, ge=1, le=MAX_SAMPLES, description="Test samples for accuracy (default: all; 1000 synthetic ones)."
    )
    memory: bool = Field(True, description="Measure each model's peak resident memory in a fresh process.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the intervals (0.5-1).")
    shapes: InputShapes = Field(default_factory=list, description=SHAPES_HELP)
    input_ranges: InputRanges = Field(default_factory=list, description=RANGES_HELP)

    @field_validator("models")
    @classmethod
    def _each_once(cls, models: list[str]) -> list[str]:
        if not models:
            raise ValueError("no models given; pass one or more .onnx files")
        if len(set(map(_key, models))) != len(models):
            raise ValueError("a model is listed twice; list each once")
        return models

    @field_validator("report")
    @classmethod
    def _a_folder(cls, report: str) -> str:
        folder = Path(report)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{report} exists and is not a folder; choose another `report`")
        # the whole folder is replaced by the new report: never one that holds anything else
        try:
            others = sorted(p.name for p in folder.iterdir() if p.name not in REPORT_FILES) if folder.is_dir() else []
        except OSError as exc:
            raise ValueError(f"cannot read {report} ({exc.strerror or exc}); choose another `report`") from None
        if others:
            raise ValueError(
                f"{report} holds files that are not a bench report ({', '.join(others[:3])}); the report replaces "
                "the whole folder, so choose a new or empty folder for `report`"
            )
        return report

    @model_validator(mode="after")
    def _no_copies_in_a_graph(self) -> BenchConfig:
        if self.include_copies and "cuda-graph" in self.providers:
            raise ValueError(
                "`include_copies` cannot time cuda-graph: a CUDA graph replays on device buffers bound once, "
                "so there are no copies in its runs; drop cuda-graph from `providers`, or `include_copies`"
            )
        return self

    @model_validator(mode="after")
    def _baseline_measured_first(self) -> BenchConfig:
        if self.baseline is not None and _key(self.baseline) not in map(_key, self.models):
            self.models = [self.baseline, *self.models]
        return self


def _key(path: str) -> Path:
    return Path(path).resolve()


def bench(config: BenchConfig) -> dict[str, Any]:
    """Measure every model, write the report into ``config.report``; return the report."""
    report = measure(config)
    write_report(report, config.report)
    return report


def measure(config: BenchConfig) -> dict[str, Any]:
    """Measure every model; the report as a dict (providers are checked by the stage's preflight)."""
    providers = config.providers
    paths = [Path(m) for m in config.models]
    baseline = Path(config.baseline) if config.baseline else paths[0]
    shapes, ranges = parse_shapes(config.shapes), parse_ranges(config.input_ranges)
    models = {}
    cache: dict[tuple, Any] = {}
    for path in paths:
        model = load_any(path, role="model")
        manifest = read_manifest(path)
        data = load_model_data(
            path,
            model,
            manifest,
            config.data,
            config.preprocessing,
            shapes,
            ranges,
            config.accuracy_samples or SYNTHETIC_SAMPLES,
            cache=cache,
        )
        if not len(data.test):
            raise CompressError("the test split has no samples; use data with test samples")
        # one run before any measuring: a model that fails here stops here
        model.run(data.test.batch(max(config.batch_sizes)))
        models[path] = {"manifest": manifest, "data": data, "name": _name(path, paths)}
    _one_task(models, baseline)
    if "cuda-graph" in providers:  # a model onnxruntime cannot capture stops the run before anything is timed
        for path, info in models.items():
            graph = load(path, "cuda-graph", max(config.threads), config.optimization)
            first_run_s(graph, info["data"].test.batch(max(config.batch_sizes)), include_copies=False)

    entries = {path: _describe(path, info, baseline, config) for path, info in models.items()}
    rows = []
    for provider in providers:
        log(f"{provider}: accuracy")
        outputs = {}
        for path, info in models.items():
            loaded = load(path, provider, max(config.threads), config.optimization)
            x, y = _test_split(info["data"], config.accuracy_samples)
            # the very first run of a fresh session, before anything else touches it
            largest = x.batch(max(config.batch_sizes))
            first = first_run_s(loaded, largest, config.include_copies)
            outputs[path] = loaded.runner.predict(x)[0]
            task = info["task"]
            accuracy = _accuracy(outputs[path], y, task)
            if y is not None and accuracy["metrics"] is None:
                entries[path]["accuracy_not_measured"] = _why_not_measured(
                    loaded.runner.outputs[0].name, outputs[path], y, info["data"], task
                )
            placement = None
            if provider != "cpu":
                placement = node_placement(path, provider, max(config.threads), config.optimization, x.batch(1))
                _say_cpu_nodes(info["name"], provider, placement)
            entries[path]["providers"][provider] = {
                "session_create_s": loaded.create_s,
                "first_run_s": first,
                **accuracy,
                "placement": placement,
                **_memory(path, provider, config, largest),
            }
        for path in models:
            record = entries[path]["providers"][provider]
            base_record = entries[baseline]["providers"][provider]
            same_inputs = models[path]["data"].fingerprint == models[baseline]["data"].fingerprint
            task = models[path]["task"]
            record.update(_against_baseline(outputs[path], outputs[baseline], same_inputs, path == baseline, task))
            both = record["top1"] is not None and base_record["top1"] is not None
            record["accuracy_delta_points"] = 100 * (record["top1"] - base_record["top1"]) if both else None
            record["metric_loss_points"] = _loss_points(task, base_record["metrics"], record["metrics"])
        for threads in config.threads:
            for batch_size in config.batch_sizes:
                log(f"{provider}: batch {batch_size}, {threads} thread(s)")
                rows += _time_group(models, baseline, provider, threads, batch_size, config)
    return {
        "format": REPORT_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config.model_dump(mode="json"),
        "machine": machine_info(with_gpus=any(p != "cpu" for p in providers)),
        "session": {
            "graph_optimization": config.optimization,
            "execution_mode": "sequential",
            "inter_op_threads": 1,
            "io_binding": any(p != "cpu" for p in providers) and not config.include_copies,
            "include_copies": config.include_copies,
        },
        "timing": {
            "warmup": config.warmup,
            "min_runs": config.min_runs,
            "min_seconds": config.min_time,
            "rounds": ROUNDS,
            "confidence": config.confidence,
            "method": "each model in rounds alternating with the baseline; p50 interval: order "
            "statistics of the runs; speed-up: median of the per-round ratios of "
            "p50s, interval: order statistics of those ratios",
        },
        "baseline": entries[baseline]["name"],
        "models": list(entries.values()),
        "rows": rows,
    }


def _name(path: Path, paths: list[Path]) -> str:
    """The file name, or the path when two models share a file name."""
    return path.name if sum(p.name == path.name for p in paths) == 1 else str(path)


def _describe(path: Path, info: dict, baseline: Path, config: BenchConfig) -> dict[str, Any]:
    manifest, data = info["manifest"] or {}, info["data"]
    model = manifest.get("model") or {}
    params = model.get("params") or (manifest.get("metrics") or {}).get("params")
    return {
        "name": info["name"],
        "path": str(path),
        "sha256": cached_sha256(path),
        "size_bytes": model_info(path)["size_bytes"],
        "params": params,
        "macs": model.get("macs"),
        "stage": manifest.get("stage"),
        "baseline": path == baseline,
        "task": info["task"].name,
        "data": data.describe(),
        # load_dataset_for's rule: a manifest's record wins over --preprocessing
        "preprocessing": _fed(data, manifest, config),
        "accuracy_not_measured": _why_no_accuracy(data, info["task"]),
        "synthetic_inputs": data.inputs,
        "providers": {},
    }


def _fed(data: ModelData, manifest: dict, config: BenchConfig) -> str | None:
    """How the model's inputs were normalised: by its manifest's record, by --preprocessing, or not at all
    (arrays fed as stored, synthetic inputs)."""
    if data.kind != "dataset":
        return None
    return "manifest" if manifest.get("preprocessing") else config.preprocessing


def _one_task(models: dict[Path, dict], baseline: Path) -> None:
    """Set each model's task (``info["task"]``): its own where it is known (recorded in its manifest, or
    that of the targets it is measured on); a model of unknown task (no record, no targets) is judged as
    the others are. CompressError when two models are of different tasks: their metrics do not compare."""
    known = {path: _known_task(info) for path, info in models.items()}
    # the baseline first: a conflict names it
    order = sorted((p for p in models if known[p] is not None), key=lambda p: p != baseline)
    for path in order[1:]:
        first = order[0]
        if known[path] is not known[first]:
            role = " (the baseline)" if first == baseline else ""
            raise CompressError(
                f"{models[first]['name']}{role} is a {known[first].name} model but {models[path]['name']} is a "
                f"{known[path].name} model; their metrics do not compare, so bench models of one task together"
            )
    common = known[order[0]] if order else CLASSIFICATION
    for path, info in models.items():
        info["task"] = known[path] or common


def _known_task(info: dict) -> Task | None:
    """A model's task when something says it: its manifest's record, or the targets it is measured on."""
    data: ModelData = info["data"]
    if (info["manifest"] or {}).get("task") or data.y_test is not None:
        return data.task
    return None


def _why_no_accuracy(data: ModelData, task: Task = CLASSIFICATION) -> str | None:
    if data.kind == "synthetic":
        measured = "accuracy" if task is CLASSIFICATION else "its metrics"
        return f"no data: latency only, on synthetic inputs (pass --data for {measured})"
    if data.y_test is None:
        targets = "labels" if task is CLASSIFICATION else "targets"
        return f"{data.spec} has no {targets} (an array named y)"
    return None


def _why_not_measured(name: str, output: np.ndarray, y: np.ndarray, data: ModelData, task: Task) -> str:
    """Why the first output could not be scored against the targets there are."""
    shape = list(output.shape)
    if task is CLASSIFICATION:
        return (
            f"its first output, {name!r} of shape {shape}, gives no scores of the {len(data.labels or [])} "
            f"classes the labels of {data.spec} name"
        )
    what = "logits of the" if task.name == "multilabel" else "values of the"
    kind = "labels" if task.name == "multilabel" else "targets"
    return (
        f"its first output, {name!r} of shape {shape}, does not give the {what} {y.shape[1]} {kind} of "
        f"{data.spec} per sample (a float array of shape [N, {y.shape[1]}])"
    )


def _say_cpu_nodes(name: str, provider: str, placement: dict[str, int]) -> None:
    """A warning when a GPU provider left nodes to the CPU (the report's placement keeps the counts)."""
    on_cpu, total = placement.get(PROVIDERS["cpu"], 0), sum(placement.values())
    if not on_cpu:
        return
    if provider == "cuda-graph":
        consequence = (
            "outside the graph: shape computations onnxruntime leaves there, run before the capture and not in "
            "the replays timed"
        )
    else:
        consequence = "where the GPU providers left them: its figures include them and the copies around them"
    logging.getLogger(__name__).warning(
        f"{name} on {provider}: {on_cpu} of {total} nodes ran on the CPU, {consequence}"
    )


def _memory(path: Path, provider: str, config: BenchConfig, batch: Samples) -> dict[str, Any]:
    if not config.memory:
        return {"peak_memory_mb": None, "process_memory_mb": None}
    peak, before = peak_memory_mb(
        path, provider, max(config.threads), config.optimization, batch, config.include_copies
    )
    return {"peak_memory_mb": peak, "process_memory_mb": before}


def _test_split(data: ModelData, limit: int | None) -> tuple[Samples, np.ndarray | None]:
    y = data.y_test[:limit] if data.y_test is not None else None
    return data.test.rows(slice(0, limit)), y


def _accuracy(output: np.ndarray, y: np.ndarray | None, task: Task = CLASSIFICATION) -> dict[str, Any]:
    """The task's metrics of the first output against the targets (None without targets, or an output that
    does not fit them); for a classifier also top-1 and top-5 (else None)."""
    if task is not CLASSIFICATION:
        fitting = _fitting(output, y)
        metrics = None if fitting is None else _finite_or_none(task.measure(fitting, y))
        return {"top1": None, "top5": None, "metrics": metrics, "test_samples": int(len(output))}
    top1 = classifier_accuracy(output, y)
    top5 = None
    if top1 is not None and output.shape[1] > 5:
        best5 = np.argpartition(-output, 5, axis=1)[:, :5]
        top5 = float((best5 == y[:, None]).any(axis=1).mean())
    metrics = None if top1 is None else {"accuracy": top1}
    return {"top1": top1, "top5": top5, "metrics": metrics, "test_samples": int(len(output))}


def _fitting(output: np.ndarray, y: np.ndarray | None) -> np.ndarray | None:
    """A multi-label or regression output as (N, K) floats beside targets (N, K); None when it does not fit."""
    if y is None or not len(y) or output.dtype.kind != "f" or len(output) != len(y) or output.size != y.size:
        return None
    if output.ndim == 2 or (output.ndim == 1 and y.shape[1] == 1):  # (N,): one value per sample
        return output.reshape(y.shape)
    return None


def _finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN (undefined, e.g. R² of one sample) and inf as None: JSON has neither."""
    return {k: (float(v) if v is not None and np.isfinite(v) else None) for k, v in metrics.items()}


def _loss_points(task: Task, base: dict | None, metrics: dict | None) -> float | None:
    """How much worse than the baseline the primary metric is, in the task's points (positive: worse);
    None where either is not measured or the figure is not finite (an RMSE rise over a baseline of 0)."""
    if not base or not metrics or base.get(task.metric) is None or metrics.get(task.metric) is None:
        return None
    loss = task.loss_points(base, metrics)
    return float(loss) if np.isfinite(loss) else None


def _against_baseline(
    output: np.ndarray, base: np.ndarray, same_inputs: bool, is_baseline: bool, task: Task = CLASSIFICATION
) -> dict[str, Any]:
    """The first output against the baseline's on the same inputs: the agreement (a classifier's top-1
    class; a multi-label model's label decisions; none for regression) and how far the values moved; None
    where the inputs or the output shapes differ."""
    agrees = _agrees(output, task)
    if is_baseline or not same_inputs or output.shape != base.shape:
        return {"agreement_with_baseline": 1.0 if is_baseline and agrees else None, "fidelity_to_baseline": None}
    found = compare_outputs(base, output, None if task is CLASSIFICATION else task.name)
    distance = {k: found[k] for k in ("cosine", "relative_l2", "max_abs_diff")}
    if not all(np.isfinite(v) for v in distance.values()):
        logging.getLogger(__name__).warning("outputs of inf or NaN: their distance to the baseline is not reported")
        distance = None
    agreement = None
    if agrees and task.name == "multilabel":
        changed = found.get("decisions_changed")
        agreement = None if changed is None or not np.isfinite(changed) else 1.0 - changed
    elif agrees:
        agreement = found["top1_agreement"]
    return {"agreement_with_baseline": agreement, "fidelity_to_baseline": distance}


def _agrees(output: np.ndarray, task: Task) -> bool:
    """Whether an agreement with the baseline is given for ``output``: a classifier's classes, a multi-label
    model's float logits (label decisions); never for a regressor."""
    if task.name == "multilabel":
        return output.dtype.kind == "f"
    return task is CLASSIFICATION and gives_classes(output)


def _time_group(
    models: dict, baseline: Path, provider: str, threads: int, batch_size: int, config: BenchConfig
) -> list[dict[str, Any]]:
    """One provider x threads x batch size: each model timed against the baseline."""
    per_round = config.min_time / ROUNDS
    runs_per_round = -(-config.min_runs // ROUNDS)
    base_loaded = load(baseline, provider, threads, config.optimization)
    base_call = make_call(base_loaded, models[baseline]["data"].test.batch(batch_size), config.include_copies)
    base_times, timed = [], {}
    others = [p for p in models if p != baseline]
    if not others:  # a single model: nothing to alternate with
        base_times.append(time_calls(base_call, config.warmup, config.min_runs, config.min_time))
    for path in others:
        loaded = load(path, provider, threads, config.optimization)
        call = make_call(loaded, models[path]["data"].test.batch(batch_size), config.include_copies)
        result = compare(
            {"baseline": base_call, "model": call},
            baseline="baseline",
            batch_size=batch_size,
            rounds=ROUNDS,
            seconds_per_round=per_round,
            min_runs_per_round=runs_per_round,
            warmup=config.warmup,
        )
        base_times.append(result.seconds["baseline"])
        timed[path] = (result.seconds["model"], result.round_ratios("model"), result.seconds["baseline"])
        del loaded, call
    # the baseline's own row pools every pairing; each model's row names the baseline p50 of its own
    pooled = np.concatenate(base_times)
    rows = [_row(models[baseline]["name"], provider, threads, batch_size, pooled, None, config)]
    for path, (times, ratios, paired) in timed.items():
        row = _row(models[path]["name"], provider, threads, batch_size, times, ratios, config)
        row["baseline_p50_ms"] = float(np.median(paired)) * 1e3
        rows.append(row)
    return rows


def _row(
    name: str,
    provider: str,
    threads: int,
    batch_size: int,
    seconds: np.ndarray,
    round_ratios: np.ndarray | None,
    config: BenchConfig,
) -> dict[str, Any]:
    stats = LatencyStats.from_times(seconds, batch_size)
    low, high = median_ci(seconds * 1e3, config.confidence)
    row = {
        "model": name,
        "provider": provider,
        "threads": threads,
        "batch_size": batch_size,
        **stats.to_dict(),
        "p50_ci_ms": [low, high],
        "baseline_p50_ms": None,
        "speedup": None,
        "speedup_ci": None,
        "verdict": "baseline",
    }
    if round_ratios is not None:
        ratio, s_low, s_high = speedup_ci(round_ratios, config.confidence)
        row.update(speedup=ratio, speedup_ci=[s_low, s_high], verdict=verdict(s_low, s_high))
    return row


def summary(report: dict[str, Any]) -> list[str]:
    from ..measure.report import terminal_table

    return terminal_table(report).splitlines()


def show_changes(paths: tuple[str, str], options: dict[str, Any]) -> list[str]:
    """``--compare OLD NEW``: what got faster or slower beyond noise between two reports."""
    from ..measure.report import compare_reports, load_report

    if options.get("models"):
        raise CompressError("--compare takes two reports and no models; run them separately")
    return [
        f"{c['model']:<28} {c['provider']:<5} batch {c['batch_size']:<4} threads {c['threads']:<2} p50 "
        f"{c['old_p50_ms']:.3f} -> {c['new_p50_ms']:.3f} ms ({c['ratio']:.2f}x): {c['verdict']}"
        for c in compare_reports(load_report(paths[0]), load_report(paths[1]))
    ]


STAGE = Stage(
    name="bench",
    config=BenchConfig,
    run=bench,
    summary=summary,
    reads=("models", "baseline"),
    writes=("report",),
    folders=("report",),
    preflight=lambda config: check_gpu(config.providers),
    shortcuts=(
        Shortcut(
            "--compare",
            "OLD NEW",
            "Compare two report.json files instead: what got faster or slower beyond noise.",
            show_changes,
            nargs=2,
        ),
    ),
    help="""Latency and accuracy (or the task's metrics) of ONNX models against a baseline, written up as a report.

    \b
    Examples:
      compress bench runs/mnist/teacher.onnx runs/mnist/student.onnx runs/mnist/student.int8.onnx \\
          --baseline runs/mnist/teacher.onnx --providers cpu,cuda --batch-sizes 1,64 --threads 1,2 \\
          --report reports/mnist
      # vendor/model.onnx has no manifest: it gets --preprocessing; the student, its manifest's
      compress bench vendor/model.onnx runs/mnist/student.onnx --data mnist:DIR --preprocessing scale
      # no data: latency only, on inputs drawn from each model's signature
      compress bench vendor/detector.onnx vendor/detector.int8.onnx --shape x=1x3x640x640
      compress bench --compare reports/old/report.json reports/new/report.json
    """,
)
