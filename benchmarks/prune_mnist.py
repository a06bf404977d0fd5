"""Structured pruning on real MNIST: speed and accuracy of a pruned ResNet-8 against the unpruned one.

    python benchmarks/prune_mnist.py --data ../shared/data/mnist

Takes the ResNet-8 teacher of benchmarks/distill_mnist.py (run that first) and prunes it with
`compress prune` at 30%, 50% and 70% of its channels, each recovered by distillation from the
unpruned model; exports each with `compress export` and quantizes it with `compress quantize`;
then times every model against the unpruned fp32 one with `compress bench` (batch 1 and 64,
1 and 2 threads, rounds alternating with the baseline) and writes a section of
benchmarks/RESULTS.md with accuracy, params, MACs and speed-ups.
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

from common import RESULTS, commands_block, machine, write_section

from compress.artifacts import manifest_path

SECTION = "prune_mnist"
TEACHER = Path("runs/bench/distill_mnist/teacher-resnet8.pt")
AMOUNTS = (0.3, 0.5, 0.7)


def compress_cli(args: list[str], commands: list[str], reuse: bool, out: Path) -> None:
    command = "compress " + " ".join(shlex.quote(a) for a in args)
    commands.append(command)
    if reuse and (out / "report.json" if out.suffix == "" else manifest_path(out)).exists():
        return
    print(f"$ {command}", flush=True)
    subprocess.run([sys.executable, "-m", "compress.cli", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        default=os.environ.get("COMPRESS_MNIST_DIR", "../shared/data/mnist"),
        help="directory with the MNIST IDX files (default: $COMPRESS_MNIST_DIR or ../shared/data/mnist)",
    )
    parser.add_argument("--teacher", default=str(TEACHER))
    parser.add_argument("--work", default="runs/bench/prune_mnist")
    parser.add_argument("--epochs", type=int, default=5, help="recovery epochs")
    parser.add_argument("--augment", default="shift", help="recovery augmentation (the teacher's was shift)")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--fresh", action="store_true", help="re-run the compress commands even if done")
    parser.add_argument("--results", default=str(RESULTS))
    options = parser.parse_args()
    if not Path(options.data).is_dir():
        sys.exit(f"error: MNIST directory {options.data} not found; pass --data DIR")
    if not Path(options.teacher).is_file():
        sys.exit(f"error: {options.teacher} not found; run benchmarks/distill_mnist.py first (or pass --teacher)")
    data = f"mnist:{Path(options.data).resolve()}"
    work = Path(options.work)
    work.mkdir(parents=True, exist_ok=True)
    reuse = not options.fresh
    commands: list[str] = []
    started = time.perf_counter()

    base_onnx = work / "unpruned.onnx"
    compress_cli(["export", options.teacher, "--out", str(base_onnx), "--data", data], commands, reuse, base_onnx)
    models = [base_onnx]
    quantized = work / "unpruned.int8.onnx"
    compress_cli(["quantize", str(base_onnx), "--out", str(quantized), "--data", data], commands, reuse, quantized)
    models.append(quantized)
    pruned = {}
    for amount in AMOUNTS:
        name = f"pruned{int(100 * amount)}"
        checkpoint = work / f"{name}.pt"
        compress_cli(
            [
                "prune",
                options.teacher,
                "--amount",
                str(amount),
                "--epochs",
                str(options.epochs),
                "--augment",
                options.augment,
                "--round-to",
                str(options.round_to),
                "--data",
                data,
                "--device",
                "cpu",
                "--out",
                str(checkpoint),
            ],
            commands,
            reuse,
            checkpoint,
        )
        onnx_path = work / f"{name}.onnx"
        compress_cli(["export", str(checkpoint), "--out", str(onnx_path)], commands, reuse, onnx_path)
        int8 = work / f"{name}.int8.onnx"
        compress_cli(["quantize", str(onnx_path), "--out", str(int8)], commands, reuse, int8)
        models += [onnx_path, int8]
        pruned[name] = json.loads(manifest_path(checkpoint).read_text())["pruning"]
    report_dir = work / "report"
    compress_cli(
        [
            "bench",
            *map(str, models),
            "--baseline",
            str(base_onnx),
            "--batch-sizes",
            "1,64",
            "--threads",
            "1,2",
            "--report",
            str(report_dir),
        ],
        commands,
        False,
        report_dir,
    )
    report = json.loads((report_dir / "report.json").read_text())
    elapsed = time.perf_counter() - started
    write_results(Path(options.results), report, pruned, commands, elapsed, options)


def write_results(path: Path, report: dict, pruned: dict, commands: list[str], elapsed: float, options) -> None:
    models = {m["name"]: m for m in report["models"]}
    rows = {}
    for r in report["rows"]:
        rows.setdefault(r["model"], {})[(r["batch_size"], r["threads"])] = r
    table = [
        "| model | top-1 % (Δ pts) | params | MACs | KiB | batch 1, 1 thread | batch 1, 2 threads "
        "| batch 64, 1 thread | batch 64, 2 threads |",
        "|" + " --- |" * 9,
    ]
    for name, m in models.items():
        stem = name.split(".")[0]
        prune_record = pruned.get(stem)
        macs = prune_record["after"]["macs"] if prune_record else next(iter(pruned.values()))["before"]["macs"]
        acc = m["providers"]["cpu"]
        delta = "" if m["baseline"] else f" ({acc['accuracy_delta_points']:+.2f})"
        cells = [
            name,
            f"{100 * acc['top1']:.2f}{delta}",
            f"{m['params']:,}" if m["params"] else "–",
            f"{macs:,}",
            f"{m['size_bytes'] / 1024:.0f}",
        ]
        for key in ((1, 1), (1, 2), (64, 1), (64, 2)):
            r = rows[name][key]
            if r["speedup"] is None:
                cells.append(f"{r['p50_ms']:.3f} ms")
            else:
                low, high = r["speedup_ci"]
                label = "" if r["verdict"] == "faster" else f" {r['verdict']}"
                cells.append(f"{r['p50_ms']:.3f} ms, **{r['speedup']:.2f}x** ({low:.2f}–{high:.2f}){label}")
        table.append("| " + " | ".join(cells) + " |")
    recovery = [
        f"- {name}: test accuracy {100 * p['before']['test_accuracy']:.2f}% → "
        f"{100 * p['steps'][0]['test_accuracy_pruned']:.2f}% right after pruning → "
        f"{100 * p['after']['test_accuracy']:.2f}% after {options.epochs} recovery epochs "
        f"(augment {options.augment}); widths "
        + ", ".join(
            f"{k} {p['widths_before'][k]}→{v}" for k, v in p["widths_after"].items() if v != p["widths_before"][k]
        )
        for name, p in pruned.items()
    ]
    body = [
        "## Structured pruning on MNIST (`benchmarks/prune_mnist.py`)",
        "",
        f"Command: `python benchmarks/prune_mnist.py --data ../shared/data/mnist` "
        f"({time.strftime('%Y-%m-%d')}, {elapsed / 60:.1f} min).",
        f"Machine: {machine()}.",
        "",
        "The ResNet-8 teacher pruned with `compress prune --amount A` (L2 importance, channels rounded "
        f"to multiples of {options.round_to}), recovered by distillation from itself, exported, and "
        "quantized (static int8, compress's defaults). Accuracy on the 10,000 test images through "
        "ONNX Runtime; latency from `compress bench` against the unpruned fp32 model: p50 and the "
        "speed-up with its 95% interval over 7 alternating rounds.",
        "",
        *table,
        "",
        *recovery,
        "",
        *commands_block(commands),
    ]
    write_section(path, SECTION, body)


if __name__ == "__main__":
    main()
