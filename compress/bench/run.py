"""``compress bench``: latency and accuracy of ONNX models against a baseline, as a report.

For every provider, batch size and thread count, each model is timed in rounds alternating
with the baseline (only that pair of sessions alive), so the speed-up and its interval come from
one interleaved measurement. Accuracy is measured on the test split through ONNX Runtime.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..artifacts import read_manifest, sha256_file
from ..data import Dataset, load_dataset_for
from ..errors import CompressError
from ..hardware import machine_info
from ..onnx_io import OPTIMIZATION_LEVELS, load_model, model_info
from .latency import LatencyStats, compare, time_calls
from .runner import first_run_s, load, make_call, node_placement, peak_memory_mb, resolve_providers
from .stats import median_ci, speedup_ci, verdict

REPORT_FORMAT = "compress-bench-report/1"
ROUNDS = 7  # the min-max of 7 per-round speed-ups holds the median speed-up with 98% confidence


@dataclass
class BenchConfig:
    models: list[str]
    report: str  # folder for report.json / .md / .html / .png
    baseline: str | None = None  # default: the first model
    data: str | None = None  # default: each model's manifest data
    preprocessing: str | None = None  # for models without a manifest
    providers: list[str] = field(default_factory=lambda: ["cpu"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    threads: list[int] = field(default_factory=lambda: [1])
    warmup: int = 10
    min_runs: int = 50
    min_seconds: float = 1.0  # per model and configuration
    optimization: str = "all"
    include_copies: bool = False  # GPU: time host<->device copies too
    accuracy_samples: int | None = None  # default: the whole test split
    memory: bool = True
    confidence: float = 0.95


def check_config(config: BenchConfig) -> None:
    if not config.models:
        raise CompressError("no models given; pass one or more .onnx files")
    if len(set(map(_key, config.models))) != len(config.models):
        raise CompressError("a model is listed twice; list each once")
    if config.baseline is not None and _key(config.baseline) not in map(_key, config.models):
        config.models.insert(0, config.baseline)  # the baseline is measured too, first
    if Path(config.report).exists() and not Path(config.report).is_dir():
        raise CompressError(f"{config.report} exists and is not a folder; choose another --report")
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise CompressError("batch sizes must be at least 1, e.g. --batch-sizes 1,64")
    if not config.threads or min(config.threads) < 1:
        raise CompressError("thread counts must be at least 1, e.g. --threads 1,2")
    if config.optimization not in OPTIMIZATION_LEVELS:
        raise CompressError(f"unknown optimisation level {config.optimization!r}")
    if config.min_runs < 1 or config.min_seconds < 0 or config.warmup < 0:
        raise CompressError("--min-runs must be at least 1, --min-time and --warmup at least 0")
    if config.accuracy_samples is not None and config.accuracy_samples < 1:
        raise CompressError("--accuracy-samples must be at least 1")


def _key(path: str) -> Path:
    return Path(path).resolve()


def bench(config: BenchConfig, log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Measure every model; return the report (written to disk by ``report.write_report``)."""
    check_config(config)
    providers = resolve_providers(config.providers)
    paths = [Path(m) for m in config.models]
    baseline = Path(config.baseline) if config.baseline else paths[0]
    models = {}
    datasets: dict[tuple, Dataset] = {}
    for path in paths:
        load_model(path, role="model")
        manifest = read_manifest(path)
        dataset = _dataset(path, manifest, config, datasets)
        models[path] = {"manifest": manifest, "dataset": dataset, "name": _name(path, paths)}
    sample_counts = {len(m["dataset"].y_test) for m in models.values()}
    if 0 in sample_counts:
        raise CompressError("the test split has no samples; use data with test samples")

    entries = {path: _describe(path, info, baseline) for path, info in models.items()}
    rows = []
    for provider in providers:
        log(f"{provider}: accuracy")
        predictions = {}
        for path, info in models.items():
            loaded = load(path, provider, max(config.threads), config.optimization)
            x, y = _test_split(info["dataset"], config.accuracy_samples)
            loaded.runner.check_fits(info["dataset"].in_shape, info["dataset"].spec)
            # the very first run of a fresh session, before anything else touches it
            first = first_run_s(make_call(loaded, _batch(x, max(config.batch_sizes)), config.include_copies))
            logits = loaded.runner.predict(x)
            predictions[path] = logits.argmax(1)
            entries[path]["providers"][provider] = {
                "session_create_s": loaded.create_s,
                "first_run_s": first,
                **_accuracy(logits, y),
                "placement": (
                    node_placement(path, provider, max(config.threads), config.optimization, _batch(x, 1))
                    if provider != "cpu"
                    else None
                ),
                **_memory(path, provider, config, _batch(x, max(config.batch_sizes))),
            }
        for path in models:
            record = entries[path]["providers"][provider]
            base_record = entries[baseline]["providers"][provider]
            record["agreement_with_baseline"] = (
                float((predictions[path] == predictions[baseline]).mean())
                if len(predictions[path]) == len(predictions[baseline])
                else None
            )
            record["accuracy_delta_points"] = 100 * (record["top1"] - base_record["top1"])
        for threads in config.threads:
            for batch_size in config.batch_sizes:
                log(f"{provider}: batch {batch_size}, {threads} thread(s)")
                rows += _time_group(models, baseline, provider, threads, batch_size, config)
    return {
        "format": REPORT_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(config),
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
            "min_seconds": config.min_seconds,
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


def _dataset(path: Path, manifest: dict | None, config: BenchConfig, cache: dict) -> Dataset:
    recorded = (manifest or {}).get("data") or {}
    key = (config.data or recorded.get("spec"), repr((manifest or {}).get("preprocessing")), config.preprocessing)
    if key not in cache:
        cache[key] = load_dataset_for(str(path), manifest, config.data, config.preprocessing)
    return cache[key]


def _describe(path: Path, info: dict, baseline: Path) -> dict[str, Any]:
    manifest = info["manifest"] or {}
    model = manifest.get("model") or {}
    params = model.get("params") or (manifest.get("metrics") or {}).get("params")
    return {
        "name": info["name"],
        "path": str(path),
        "sha256": sha256_file(path),
        "size_bytes": model_info(path)["size_bytes"],
        "params": params,
        "macs": model.get("macs"),
        "stage": manifest.get("stage"),
        "baseline": path == baseline,
        "data": info["dataset"].spec,
        "providers": {},
    }


def _memory(path: Path, provider: str, config: BenchConfig, batch: np.ndarray) -> dict[str, Any]:
    if not config.memory:
        return {"peak_memory_mb": None, "process_memory_mb": None}
    peak, before = peak_memory_mb(path, provider, max(config.threads), config.optimization, batch)
    return {"peak_memory_mb": peak, "process_memory_mb": before}


def _test_split(dataset: Dataset, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    return dataset.x_test[:limit], dataset.y_test[:limit]


def _batch(x: np.ndarray, size: int) -> np.ndarray:
    """``size`` real samples (repeated when the split is smaller), contiguous, made once."""
    return np.ascontiguousarray(x[np.arange(size) % len(x)])


def _accuracy(logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    top1 = float((logits.argmax(1) == y).mean())
    top5 = None
    if logits.shape[1] > 5:
        best5 = np.argpartition(-logits, 5, axis=1)[:, :5]
        top5 = float((best5 == y[:, None]).any(axis=1).mean())
    return {"top1": top1, "top5": top5, "test_samples": int(len(y))}


def _time_group(
    models: dict, baseline: Path, provider: str, threads: int, batch_size: int, config: BenchConfig
) -> list[dict[str, Any]]:
    """One provider x threads x batch size: each model timed against the baseline."""
    per_round = config.min_seconds / ROUNDS
    runs_per_round = -(-config.min_runs // ROUNDS)
    base_loaded = load(baseline, provider, threads, config.optimization)
    base_batch = _batch(models[baseline]["dataset"].x_test, batch_size)
    base_call = make_call(base_loaded, base_batch, config.include_copies)
    base_times, timed = [], {}
    others = [p for p in models if p != baseline]
    if not others:  # a single model: nothing to alternate with
        base_times.append(time_calls(base_call, config.warmup, config.min_runs, config.min_seconds))
    for path in others:
        loaded = load(path, provider, threads, config.optimization)
        call = make_call(loaded, _batch(models[path]["dataset"].x_test, batch_size), config.include_copies)
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
        timed[path] = (result.seconds["model"], result.round_ratios("model"))
        del loaded, call
    pooled = np.concatenate(base_times)
    rows = [_row(models[baseline]["name"], provider, threads, batch_size, pooled, None, config)]
    for path, (times, ratios) in timed.items():
        rows.append(_row(models[path]["name"], provider, threads, batch_size, times, ratios, config))
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
        "speedup": None,
        "speedup_ci": None,
        "verdict": "baseline",
    }
    if round_ratios is not None:
        ratio, s_low, s_high = speedup_ci(round_ratios, config.confidence)
        row.update(speedup=ratio, speedup_ci=[s_low, s_high], verdict=verdict(s_low, s_high))
    return row
