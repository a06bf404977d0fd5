"""The whole chain on real MNIST: `compress run recipes/mnist.toml`, timed, and its final table.

    python benchmarks/pipeline_mnist.py --data ../shared/data/mnist

Runs the recipe from scratch (`--force all`) in runs/bench/pipeline_mnist/, timing the whole
command, then re-runs its bench stage (`--force bench`) to show the run-to-run spread of the
speed-ups. Writes a section of benchmarks/RESULTS.md: teacher vs student vs student int8 (and
the pruned student when the recipe prunes) with accuracy, params, MACs, size, p50 at batch 1 and
64 and the speed-ups against the teacher, each stage's time, and the targets: a student with at
least 10x fewer MACs than the teacher, at most 0.5 points less accurate, at least 10x faster at
batch 1 on the CPU execution provider after int8, the whole recipe in under 15 minutes.
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

from common import REPO, RESULTS, machine, write_section

SECTION = "pipeline_mnist"
RECIPE = REPO / "recipes" / "mnist.toml"
TARGETS = {"macs_ratio": 10.0, "accuracy_drop_points": 0.5, "speedup_b1": 10.0, "minutes": 15.0}


def compress_run(args: list[str]) -> tuple[str, float]:
    command = "compress run " + " ".join(shlex.quote(a) for a in args)
    print(f"$ {command}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "compress.cli", "run", *args], check=True)
    return command, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        default=os.environ.get("MNIST_DIR", "../shared/data/mnist"),
        help="directory with the MNIST IDX files (default: $MNIST_DIR or ../shared/data/mnist)",
    )
    parser.add_argument("--work", default="runs/bench/pipeline_mnist", help="the run folder")
    parser.add_argument(
        "--bench-repeats", type=int, default=3, help="bench runs in all (the first is the recipe's own)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="keep what is up to date instead of running every stage again"
    )
    parser.add_argument("--results", default=str(RESULTS))
    options = parser.parse_args()
    if not Path(options.data).is_dir():
        sys.exit(f"error: MNIST directory {options.data} not found; pass --data DIR")
    args = [str(RECIPE.relative_to(REPO)), "--data", f"mnist:{Path(options.data).resolve()}", "--out", options.work]
    command, seconds = compress_run(args + ([] if options.reuse else ["--force", "all"]))
    run_log = json.loads((Path(options.work) / "run.json").read_text())
    runs = [run_log["variants"]]
    for _ in range(options.bench_repeats - 1):
        compress_run(args + ["--force", "bench"])
        runs.append(json.loads((Path(options.work) / "run.json").read_text())["variants"])
    write_results(Path(options.results), command, seconds, run_log, runs)


def write_results(path: Path, command: str, seconds: float, run_log: dict, runs: list[list[dict]]) -> None:
    first = runs[0]
    table = [
        "| variant | top-1 % (Δ pts) | params | MACs | KiB | p50 batch 1 | speed-up batch 1 "
        "| p50 batch 64 | speed-up batch 64 |",
        "|" + " --- |" * 9,
    ]
    for index, row in enumerate(first):
        delta = "" if index == 0 else f" ({row['accuracy_delta_points']:+.2f})"
        cells = [
            row["variant"],
            f"{100 * row['top1']:.2f}{delta}",
            f"{row['params']:,}",
            f"{row['macs']:,}" if row["macs"] else "–",
            f"{row['size_bytes'] / 1024:.0f}",
        ]
        for batch in ("1", "64"):
            cells.append(f"{row['latency'][batch]['p50_ms']:.3f} ms")
            if index == 0:
                cells.append("baseline")
                continue
            speedups = [run[index]["latency"][batch]["speedup"] for run in runs]
            low, high = row["latency"][batch]["speedup_ci"]
            again = ", ".join(f"{s:.2f}x" for s in speedups[1:])
            cells.append(f"**{speedups[0]:.2f}x** ({low:.2f}–{high:.2f})" + (f"; again: {again}" if again else ""))
        table.append("| " + " | ".join(cells) + " |")

    teacher, int8 = first[0], first[-1]
    macs_ratio = teacher["macs"] / int8["macs"]
    drop = -int8["accuracy_delta_points"]
    speedups_b1 = [run[-1]["latency"]["1"]["speedup"] for run in runs]
    minutes = seconds / 60
    targets = [
        (
            "MACs: teacher / student",
            f"{macs_ratio:.1f}x",
            f"≥ {TARGETS['macs_ratio']:.0f}x",
            macs_ratio >= TARGETS["macs_ratio"],
        ),
        (
            "accuracy: student int8 below the teacher",
            f"{drop:.2f} points",
            f"≤ {TARGETS['accuracy_drop_points']}",
            drop <= TARGETS["accuracy_drop_points"],
        ),
        (
            "batch 1, 1 thread: student int8 against the teacher (each bench run)",
            ", ".join(f"{s:.2f}x" for s in speedups_b1),
            f"≥ {TARGETS['speedup_b1']:.0f}x",
            min(speedups_b1) >= TARGETS["speedup_b1"],
        ),
        (
            "the whole recipe, every stage run",
            f"{minutes:.1f} min",
            f"< {TARGETS['minutes']:.0f} min",
            minutes < TARGETS["minutes"],
        ),
    ]
    stages = [f"{name} {record['seconds']:.0f} s" for name, record in run_log["stages"].items()]
    body = [
        "## The whole recipe on MNIST (`benchmarks/pipeline_mnist.py`)",
        "",
        f"Command: `python benchmarks/pipeline_mnist.py --data ../shared/data/mnist` ({time.strftime('%Y-%m-%d')}), "
        f"which runs `{command}` and then its bench stage {len(runs) - 1} more time(s) (`--force bench`).",
        f"Machine: {machine()}.",
        "",
        "The final table of `compress run`: accuracy on the 10,000 test images through ONNX Runtime (CPU EP), "
        "latency from the recipe's `compress bench` (1 thread; p50, and the speed-up against the teacher as "
        'the median of 7 rounds alternating with it, with its 95% interval; "again": the same from the '
        "later bench runs).",
        "",
        *table,
        "",
        "| target | measured | wanted | met |",
        "| --- | --- | --- | --- |",
        *[
            f"| {what} | {measured} | {wanted} | {'yes' if met else '**no**'} |"
            for what, measured, wanted, met in targets
        ],
        "",
        f"Stage times: {', '.join(stages)} (whole command {seconds:.0f} s).",
    ]
    write_section(path, SECTION, body)


if __name__ == "__main__":
    main()
