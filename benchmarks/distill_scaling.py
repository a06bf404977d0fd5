"""Distillation throughput on one process and on several (torchrun, gloo on CPU or nccl on CUDA).

    python benchmarks/distill_scaling.py --data ../shared/data/mnist [--nproc 2] [--rounds 3] [--device cpu]

A ResNet-8 teacher is trained once; then the same distillation (a small cnn student, one epoch,
global batch 256) runs with one process (`python -m compress distill`) and with `--nproc`
processes (`torchrun --standalone --nproc-per-node N -m compress distill`), in alternating rounds
so that both see the machine in the same state. Two teacher settings: run every step
(`--teacher-cache off`, as with augmentation) and cached once, in blocks across the processes
(`--teacher-cache memory`). Throughput is the manifest's `train_samples_per_s` (the epoch's
samples over its time, all processes together); the wall time includes starting the processes
and the one-time work (data, teacher cache). Writes a section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, commands_block, machine, write_section

SECTION = "distill_scaling"
GLOBAL_BATCH = 256
STUDENT = ["--model", "cnn", "--model-arg", "channels=16,32", "--model-arg", "hidden=32"]  # 4x fewer MACs


def run(command: list[str], env: dict[str, str]) -> float:
    print("$ " + shlex.join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the MNIST folder (see ../shared/data/README)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the distributed runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--work", default=None, help="folder for the checkpoints (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="distill-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    data = f"mnist:{args.data}"
    compress = [sys.executable, "-m", "compress"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]

    teacher = work / "teacher.pt"
    teacher_command = [*compress, "train", "--model", "resnet8", "--data", data, "--epochs", "1"]
    teacher_command += ["--device", args.device, "--out", str(teacher)]
    if not teacher.exists():
        run(teacher_command, env)

    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    commands = [shlex.join(teacher_command)]
    for round_ in range(args.rounds):
        for cache in ("off", "memory"):
            for nproc in (1, args.nproc):
                out = work / f"student-{cache}-{nproc}-{round_}.pt"
                for stale in (out, out.with_name(out.name + ".json")):
                    stale.unlink(missing_ok=True)
                launcher = compress if nproc == 1 else [*torchrun, "-m", "compress"]
                command = [*launcher, "distill", "--teacher", str(teacher), "--data", data, *STUDENT]
                command += ["--epochs", "1", "--batch-size", str(GLOBAL_BATCH), "--teacher-cache", cache]
                command += ["--device", args.device, "--out", str(out)]
                wall = run(command, env)
                manifest = json.loads(out.with_name(out.name + ".json").read_text())
                assert manifest["training"]["world_size"] == nproc
                results.setdefault((cache, nproc), []).append((manifest["metrics"]["train_samples_per_s"], wall))
                if round_ == 0:
                    commands.append(shlex.join(command))

    def median_range(values: list[float], digits: int = 0) -> str:
        return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"

    rows = [
        "| teacher | processes | samples/s, median (min–max) | wall time s, median (min–max) | "
        "samples/s against 1 process, per round |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cache in ("off", "memory"):
        single = [speed for speed, _ in results[(cache, 1)]]
        for nproc in (1, args.nproc):
            speeds = [speed for speed, _ in results[(cache, nproc)]]
            walls = [wall for _, wall in results[(cache, nproc)]]
            ratios = ", ".join(f"{s / one:.2f}x" for s, one in zip(speeds, single))
            teacher_text = "every step" if cache == "off" else "cached (blocks gathered)"
            rows.append(
                f"| {teacher_text} | {nproc} | {median_range(speeds)} | {median_range(walls, 1)} | "
                f"{ratios if nproc > 1 else '1x'} |"
            )
    verdicts = []
    for cache in ("off", "memory"):
        ratio = statistics.median(s for s, _ in results[(cache, args.nproc)]) / statistics.median(
            s for s, _ in results[(cache, 1)]
        )
        verdicts.append(f"{ratio:.2f}x with the teacher {'run every step' if cache == 'off' else 'cached'}")
    threads = os.environ.get("OMP_NUM_THREADS")
    body = [
        f"## Distillation on several processes (`benchmarks/{Path(__file__).name}`)",
        "",
        f"Command: `python benchmarks/{Path(__file__).name} --data {args.data} --nproc {args.nproc} "
        f"--rounds {args.rounds} --device {args.device}` ({time.strftime('%Y-%m-%d')}).",
        f"Machine: {machine()}.",
        "",
        f"ResNet-8 teacher (1 epoch on MNIST), cnn student ({shlex.join(STUDENT[2:])}), one epoch of MNIST's 54,000 training samples "
        f"at a global batch of {GLOBAL_BATCH}, on {args.device}; {args.rounds} rounds alternating 1 and "
        f"{args.nproc} processes. torchrun gives each process "
        f"{'OMP_NUM_THREADS=' + threads if threads else 'one thread (its OMP_NUM_THREADS=1 default)'}; "
        "the single process uses PyTorch's default threads.",
        "",
        *rows,
        "",
        f"Target: {args.nproc} processes at least 0.8x of one (medians): " + "; ".join(verdicts) + ".",
        "",
        *commands_block(commands),
    ]
    write_section(REPO / "benchmarks" / "RESULTS.md", SECTION, body)


if __name__ == "__main__":
    main()
