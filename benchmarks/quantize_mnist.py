"""int8 on real MNIST: what compress quantize gives against fp32 and against ONNX Runtime's defaults.

    python benchmarks/quantize_mnist.py --data ../shared/data/mnist

Takes the ResNet-8 teacher and the distilled 800-800 MLP student of benchmarks/distill_mnist.py
(run that first), exports both with `compress export`, quantizes each with `compress quantize`
(dynamic; static with each calibration method; `--search`), and, as the reference, with plain
`onnxruntime.quantization.quantize_static` defaults on the same calibration samples. Then, in one
process: accuracy on the 10,000 test images, and p50 latency at batch 1 and 64 on 1 and 2 threads,
each variant interleaved with its fp32 model in rounds (ratios are per round, so the
machine's noise hits both sides alike). Writes a section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import RESULTS, commands_block, machine, write_section

from compress.artifacts import manifest_path
from compress.data import Preprocessing, load_dataset
from compress.measure.latency import compare
from compress.onnx_io import OnnxClassifier, model_info, open_session

SECTION = "quantize_mnist"
DISTILL_WORK = Path("runs/bench/distill_mnist")
TEACHER = DISTILL_WORK / "teacher-resnet8.pt"
STUDENT = DISTILL_WORK / "mlp800-800-kd-teacher-resnet8-T8-a0.9-e30-shift-s0.pt"
BUDGET = 0.3  # accuracy points
VARIANTS = [  # name, extra `compress quantize` arguments
    ("dynamic", ["--mode", "dynamic"]),
    ("static minmax", ["--calibration", "minmax"]),
    ("static entropy", ["--calibration", "entropy"]),
    ("static percentile", ["--calibration", "percentile"]),
    ("searched", ["--search", "--max-accuracy-drop", str(BUDGET)]),
    ("searched for batch 1", ["--search", "--max-accuracy-drop", str(BUDGET), "--batch-size", "1", "--threads", "2"]),
]


def compress_cli(args: list[str], commands: list[str], reuse: bool) -> None:
    out = Path(args[args.index("--out") + 1])
    command = "compress " + " ".join(shlex.quote(a) for a in args)
    commands.append(command)
    if reuse and manifest_path(out).exists():
        return
    print(f"$ {command}", flush=True)
    subprocess.run([sys.executable, "-m", "compress.cli", *args], check=True)


def ort_default(fp32: Path, out: Path, calibration: np.ndarray, input_name: str) -> None:
    """The reference: onnxruntime.quantization.quantize_static with every default left alone."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: calibration[i : i + 32]} for i in range(0, len(calibration), 32)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(out), Reader())


def measure(
    models: dict[str, Path], x_test: np.ndarray, y_test: np.ndarray, batches: list[int], threads: list[int], rounds: int
) -> dict:
    """Accuracy of each model, and latency of each int8 variant interleaved with fp32, pair by pair.

    Only the two sessions of a pair exist while it is timed: ONNX Runtime's idle worker threads
    spin for a while after each run, and a crowd of idle sessions would steal the cores.
    """
    results = {name: {"size_bytes": model_info(path)["size_bytes"]} for name, path in models.items()}
    for name, path in models.items():
        runner = OnnxClassifier(open_session(path, threads=2))
        results[name]["accuracy"] = runner.accuracy(x_test, y_test)
    for t in threads:
        for b in batches:
            feed = np.ascontiguousarray(x_test[:b])
            fp32_p50 = []
            for name, path in models.items():
                if name == "fp32":
                    continue
                pair = {
                    n: OnnxClassifier(open_session(p, threads=t)) for n, p in (("fp32", models["fp32"]), (name, path))
                }
                calls = {
                    n: (lambda r=r, feed=feed: r.session.run([r.output_name], {r.input_name: feed}))
                    for n, r in pair.items()
                }
                comparison = compare(calls, baseline="fp32", batch_size=b, rounds=rounds, seconds_per_round=0.3)
                ratio, low, high = comparison.speedup(name)
                results[name][f"b{b}t{t}"] = {
                    "p50_ms": comparison.stats[name].p50_ms,
                    "cv": comparison.stats[name].cv,
                    "speedup": ratio,
                    "speedup_range": [low, high],
                }
                fp32_p50.append(comparison.stats["fp32"].p50_ms)
                del pair, calls
            results["fp32"][f"b{b}t{t}"] = {
                "p50_ms": float(np.median(fp32_p50)),
                "p50_range_ms": [min(fp32_p50), max(fp32_p50)],
            }
            print(f"  timed batch {b}, {t} thread(s)", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        default=os.environ.get("COMPRESS_MNIST_DIR", "../shared/data/mnist"),
        help="directory with the MNIST IDX files (default: $COMPRESS_MNIST_DIR or ../shared/data/mnist)",
    )
    parser.add_argument("--teacher", default=str(TEACHER))
    parser.add_argument("--student", default=str(STUDENT))
    parser.add_argument("--work", default="runs/bench/quantize_mnist")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per configuration")
    parser.add_argument("--fresh", action="store_true", help="re-run the compress commands even if done")
    parser.add_argument("--results", default=str(RESULTS))
    options = parser.parse_args()
    if not Path(options.data).is_dir():
        sys.exit(f"error: MNIST directory {options.data} not found; pass --data DIR")
    for path in (options.teacher, options.student):
        if not Path(path).is_file():
            sys.exit(f"error: {path} not found; run benchmarks/distill_mnist.py first (or pass --teacher/--student)")
    data = f"mnist:{Path(options.data).resolve()}"
    work = Path(options.work)
    work.mkdir(parents=True, exist_ok=True)
    commands: list[str] = []
    started = time.perf_counter()
    table, notes = [], []
    for role, checkpoint in (("teacher", Path(options.teacher)), ("student", Path(options.student))):
        fp32 = work / f"{role}.onnx"
        compress_cli(["export", str(checkpoint), "--out", str(fp32), "--data", data], commands, not options.fresh)
        models = {"fp32": fp32}
        for name, extra in VARIANTS:
            out = work / f"{role}.int8-{name.replace(' ', '-')}.onnx"
            compress_cli(
                ["quantize", str(fp32), "--out", str(out), "--data", data, *extra], commands, not options.fresh
            )
            models[name] = out
        manifest = json.loads(manifest_path(fp32).read_text())
        dataset = load_dataset(data, preprocessing=Preprocessing.from_dict(manifest["preprocessing"]))
        reference = work / f"{role}.int8-ort-default.onnx"
        calibration_idx = np.sort(np.random.default_rng(0).choice(len(dataset.x_train), 512, replace=False))
        ort_default(fp32, reference, dataset.x_train[calibration_idx], manifest["input_spec"]["name"])
        commands.append(
            f"onnxruntime.quantization.quantize_static({fp32}, {reference}, reader)  "
            "# every default, same 512 calibration samples"
        )
        models["ORT default static"] = reference
        print(f"measuring {role}: {len(models)} models", flush=True)
        results = measure(models, dataset.x_test, dataset.y_test, [1, 64], [1, 2], options.rounds)
        searched = {
            name: json.loads(manifest_path(models[name]).read_text()) for name in models if name.startswith("searched")
        }
        table += rows(role, results, searched)
        notes += search_notes(role, searched)
    elapsed = time.perf_counter() - started
    write_results(Path(options.results), table, notes, commands, elapsed, options.rounds)


def rows(role: str, results: dict, searched: dict[str, dict]) -> list[str]:
    fp32 = results["fp32"]
    lines = []
    for name, r in results.items():
        label = name
        if name in searched:
            q = searched[name]["quantization"]
            label += (
                f" ({q['mode']} {q['format']} {q['activation_type']}{q['weight_type']}"
                f"{' per-channel' if q['per_channel'] else ''})"
            )
        cells = [
            f"{role}",
            label,
            f"{100 * r['accuracy']:.2f}",
            f"{100 * (r['accuracy'] - fp32['accuracy']):+.2f}",
            f"{r['size_bytes'] / 1024:.0f}",
        ]
        for key in ("b1t1", "b1t2", "b64t1", "b64t2"):
            m = r[key]
            if name == "fp32":  # the median over the pairs, and its range
                cells.append(f"{m['p50_ms']:.3f} ms ({m['p50_range_ms'][0]:.3f}–{m['p50_range_ms'][1]:.3f})")
            else:
                low, high = m["speedup_range"]
                cells.append(f"{m['p50_ms']:.3f} ms, **{m['speedup']:.2f}x** ({low:.2f}–{high:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def search_notes(role: str, searched: dict[str, dict]) -> list[str]:
    lines = []
    for name, manifest in searched.items():
        metrics, latency = manifest["metrics"], manifest["metrics"]["latency"]
        threads = latency["threads"] or "default"
        lines.append(
            f"- {role}, {name}: `--search` tried {len(manifest['quantization']['search'])} "
            f"settings, timed at batch {latency['batch_size']} on {threads} threads; its own "
            f"check measured {latency['speedup']:.2f}x over fp32 "
            f"({latency['speedup_range'][0]:.2f}–{latency['speedup_range'][1]:.2f}); "
            f"recommendation: **{metrics['recommendation']}**."
        )
        for warning in metrics["warnings"]:
            lines.append(f'  Warning printed: "{warning}"')
    return lines


def write_results(
    path: Path, table: list[str], notes: list[str], commands: list[str], elapsed: float, rounds: int
) -> None:
    body = [
        "## int8 quantization on MNIST (`benchmarks/quantize_mnist.py`)",
        "",
        f"Command: `python benchmarks/quantize_mnist.py --data ../shared/data/mnist` "
        f"({time.strftime('%Y-%m-%d')}, {elapsed / 60:.1f} min).",
        f"Machine: {machine()}.",
        "",
        "Accuracy on the 10,000 MNIST test images through ONNX Runtime (CPU EP). Latency: p50 of "
        f"`session.run` on real test images; each int8 variant timed interleaved with its fp32 "
        f"model (only that pair of sessions alive) over {rounds} rounds of 0.3 s; the speed-up is "
        "the median of the per-round ratios fp32 p50 / int8 p50, with the lowest and highest round "
        "in brackets. The fp32 row gives the median of its p50 over all pairs, with the range.",
        "",
        "| model | variant | accuracy % | Δ points | size KiB | batch 1, 1 thread | batch 1, 2 threads "
        "| batch 64, 1 thread | batch 64, 2 threads |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *table,
        "",
        *notes,
        "",
        *commands_block(commands),
    ]
    write_section(path, SECTION, body)


if __name__ == "__main__":
    main()
