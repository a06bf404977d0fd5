"""Distillation on real MNIST: the shape of Hinton et al. 2015's table, and what the teacher cache buys.

    python benchmarks/distill_mnist.py --data ../shared/data/mnist

Every run is a `compress` command (printed, and recorded in the results); finished runs are
reused, so an interrupted benchmark continues where it stopped. Writes a section of
benchmarks/RESULTS.md with the machine, the versions, the table and the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO, commands_block, machine, write_section

from compress.artifacts import manifest_path
from compress.loop import resume_path

SECTION = "distill_mnist"


@dataclass
class Run:
    """One `compress` command and the checkpoint it writes."""

    name: str
    args: list[str]
    out: Path
    manifest: dict = field(default_factory=dict)

    def command(self) -> str:
        return "compress " + " ".join(shlex.quote(a) for a in self.args + ["--out", str(self.out)])

    def execute(self, reuse: bool = True) -> dict:
        manifest_file = manifest_path(self.out)
        if not (reuse and manifest_file.exists()):
            print(f"$ {self.command()}", flush=True)
            # an interrupted run of this benchmark continues mid-way
            resume = ["--resume"] if reuse and resume_path(self.out).exists() else []
            subprocess.run(
                [sys.executable, "-m", "compress.cli", *self.args, "--out", str(self.out), *resume], check=True
            )
        self.manifest = json.loads(manifest_file.read_text())
        return self.manifest

    @property
    def errors(self) -> int:
        return self.manifest["metrics"]["test_errors"]


def spread(values: list[int]) -> str:
    if len(values) == 1:
        return str(values[0])
    return f"{statistics.mean(values):.0f} ({min(values)}–{max(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        default=os.environ.get("COMPRESS_MNIST_DIR", "../shared/data/mnist"),
        help="directory with the MNIST IDX files (default: $COMPRESS_MNIST_DIR or ../shared/data/mnist)",
    )
    parser.add_argument("--work", default="runs/bench/distill_mnist", help="where the checkpoints go")
    parser.add_argument("--seeds", default="0,1,2", help="student seeds for the headline rows")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    options = parser.parse_args()
    if not Path(options.data).is_dir():
        sys.exit(f"error: MNIST directory {options.data} not found; pass --data DIR")
    data = f"mnist:{Path(options.data).resolve()}"
    work = Path(options.work)
    seeds = [int(s) for s in options.seeds.split(",")]

    def run(name: str, *args: str) -> Run:
        return Run(name, [*args, "--data", data, "--device", "cpu"], work / f"{name}.pt")

    # Teachers: Hinton's 1200-1200 MLP (dropout, jittered inputs) and a ResNet-style CNN.
    # (Hinton's 0.2 input dropout on top of the shifts left it underfitting after 20 epochs.)
    mlp_teacher = run(
        "teacher-mlp1200-d0.5",
        "train",
        "--model",
        "mlp-1200",
        "--model-arg",
        "input_dropout=0",
        "--augment",
        "shift",
        "--epochs",
        "20",
    )
    cnn_teacher = run("teacher-resnet8", "train", "--model", "resnet8", "--augment", "shift", "--epochs", "6")
    for teacher in (mlp_teacher, cnn_teacher):
        teacher.execute()

    def scratch(hidden: str, seed: int, epochs: int = 10, augment: str = "none") -> Run:
        tag = "" if augment == "none" else f"-{augment}"
        return run(
            f"mlp{hidden.replace(',', '-')}-scratch-e{epochs}{tag}-s{seed}",
            "train",
            "--model",
            "mlp",
            "--model-arg",
            f"hidden={hidden}",
            "--epochs",
            str(epochs),
            "--augment",
            augment,
            "--seed",
            str(seed),
        )

    def kd(hidden: str, teacher: Run, setting: Setting, seed: int) -> Run:
        return run(
            f"mlp{hidden.replace(',', '-')}-kd-{teacher.name}-{setting.tag}-s{seed}",
            "distill",
            "--teacher",
            str(teacher.out),
            "--student",
            "mlp",
            "--model-arg",
            f"hidden={hidden}",
            *setting.args(),
            "--seed",
            str(seed),
        )

    rows: list[tuple[str, list[Run]]] = [
        ("1200-1200 MLP teacher (dropout 0.5, ±2 px shifts, 20 epochs)", [mlp_teacher]),
        ("ResNet-8 teacher (±2 px shifts, 6 epochs)", [cnn_teacher]),
        ("800-800 MLP from scratch (10 epochs)", [scratch("800,800", s) for s in seeds]),
    ]
    # The sweep: chosen on validation accuracy (never on the test set), then re-run with every seed.
    sweep = [Setting(t, 0.9, 10) for t in (2, 4, 8)] + [
        Setting(8, 0.5, 10),
        Setting(8, 0.9, 10, hint="flatten:fc2"),
        Setting(8, 0.9, 30),
        Setting(8, 0.9, 15, "shift"),
        Setting(8, 0.9, 30, "shift"),
    ]
    sweep_runs = [kd("800,800", cnn_teacher, setting, seeds[0]) for setting in sweep]
    for setting, r in zip(sweep, sweep_runs):
        rows.append((f"800-800 distilled from ResNet-8, {setting.label} (sweep, seed {seeds[0]})", [r]))
    best = max(zip(sweep, sweep_runs), key=lambda pair: pair[1].execute()["metrics"]["val_accuracy"])[0]
    rows.append(
        (
            f"**800-800 distilled from ResNet-8, {best.label}** (best on validation)",
            [kd("800,800", cnn_teacher, best, s) for s in seeds],
        )
    )
    # The control: does the best setting win by distillation, or by its epochs and shifts alone?
    rows.append(
        (
            f"800-800 MLP from scratch, {best.epochs} epochs, augment {best.augment} (control)",
            [scratch("800,800", s, best.epochs, best.augment) for s in seeds],
        )
    )
    rows.append(
        (f"800-800 distilled from the 1200-1200 MLP, {best.label}", [kd("800,800", mlp_teacher, best, seeds[0])])
    )
    rows.append(("30-30 MLP from scratch (10 epochs)", [scratch("30,30", s) for s in seeds]))
    for temperature in (1, 2, 4, 8):
        setting = Setting(temperature, 0.9, 10)
        rows.append(
            (f"30-30 distilled from ResNet-8, {setting.label}", [kd("30,30", cnn_teacher, setting, s) for s in seeds])
        )

    table = [
        "| model | test errors of 10,000: mean (min–max over seeds) | val accuracy | params |",
        "| --- | --- | --- | --- |",
    ]
    commands = []
    for label, runs in rows:
        for r in runs:
            r.execute()
            commands.append(r.command())
        val = statistics.mean(r.manifest["metrics"]["val_accuracy"] for r in runs)
        table.append(
            f"| {label} | {spread([r.errors for r in runs])} | {100 * val:.2f}% "
            f"| {runs[0].manifest['metrics']['params']:,} |"
        )

    # The speed-up grows with what one teacher forward costs against one student step, so it is
    # measured with the ResNet-8 above and with one twice as wide, trained one epoch only: throughput
    # does not depend on how well a teacher is trained.
    wide_teacher = run(
        "teacher-resnet8w32-e1", "train", "--model", "resnet8", "--model-arg", "width=32", "--epochs", "1"
    )
    wide_teacher.execute()
    throughput = []
    for teacher in (cnn_teacher, wide_teacher):
        params = teacher.manifest["metrics"]["params"]
        throughput += [
            f"#### {teacher.name} ({params:,} params)",
            "",
            *measure_cache_speedup(run, teacher, ["--model-arg", "hidden=800,800"]),
            "",
        ]
    write_results(Path(options.results), machine(), table, throughput, commands)


@dataclass(frozen=True)
class Setting:
    """Distillation settings of one sweep point."""

    temperature: float
    alpha: float
    epochs: int
    augment: str = "none"
    hint: str = ""  # one FitNets hint TEACHER_LAYER:STUDENT_LAYER, weight 1

    def args(self) -> list[str]:
        hint = ["--hint", self.hint] if self.hint else []
        return [
            "--temperature",
            f"{self.temperature:g}",
            "--alpha",
            f"{self.alpha:g}",
            "--epochs",
            str(self.epochs),
            "--augment",
            self.augment,
            *hint,
        ]

    @property
    def tag(self) -> str:
        hint = f"-hint-{self.hint.replace(':', '-')}" if self.hint else ""
        return f"T{self.temperature:g}-a{self.alpha:g}-e{self.epochs}-{self.augment}{hint}"

    @property
    def label(self) -> str:
        shifts = ", ±2 px shifts (teacher run every step)" if self.augment == "shift" else ""
        hint = f", hint {self.hint}" if self.hint else ""
        return f"T={self.temperature:g}, α={self.alpha:g}, {self.epochs} epochs{shifts}{hint}"


def measure_cache_speedup(run, teacher: Run, student: list[str], repeats: int = 3, epochs: int = 2) -> list[str]:
    """Distillation throughput with the cached teacher against a teacher forward every step.

    Alternates the two so both see the same machine load; never reused from an earlier run.
    """
    samples_per_s: dict[str, list[float]] = {"memory": [], "off": []}
    cache_build: list[float] = []
    commands = []
    for repeat in range(repeats):
        for mode in ("memory", "off"):
            r = run(
                f"throughput-{teacher.name}-{mode}-{repeat}",
                "distill",
                "--teacher",
                str(teacher.out),
                "--student",
                "mlp",
                *student,
                "--epochs",
                str(epochs),
                "--teacher-cache",
                mode,
            )
            r.execute(reuse=False)
            samples_per_s[mode].append(r.manifest["metrics"]["train_samples_per_s"])
            if mode == "memory":
                cache_build.append(r.manifest["metrics"]["teacher_cache_s"])
            commands.append(r.command())
    ratios = [c / o for c, o in zip(samples_per_s["memory"], samples_per_s["off"])]
    fmt = lambda xs: f"{statistics.median(xs):,.0f} ({min(xs):,.0f}–{max(xs):,.0f})"  # noqa: E731
    return [
        "| teacher outputs | distillation samples/s per epoch: median (min–max) of "
        f"{repeats} alternating {epochs}-epoch runs |",
        "| --- | --- |",
        f"| cached in memory | {fmt(samples_per_s['memory'])} |",
        f"| teacher forward every step | {fmt(samples_per_s['off'])} |",
        f"| **speed-up** | **{statistics.median(ratios):.2f}x** ({min(ratios):.2f}–{max(ratios):.2f}x) |",
        "",
        f"Building the cache (one teacher pass over the 54,000 training images) took "
        f"{statistics.median(cache_build):.1f}s, paid once per run. Commands: "
        + "; ".join(f"`{c}`" for c in commands[:2])
        + ".",
    ]


def write_results(path: Path, machine_line: str, table: list[str], throughput: list[str], commands: list[str]) -> None:
    body = [
        "## Distillation on MNIST (`benchmarks/distill_mnist.py`)",
        "",
        f"Command: `python benchmarks/distill_mnist.py --data ../shared/data/mnist` ({time.strftime('%Y-%m-%d')}).",
        f"Machine: {machine_line}.",
        "",
        *table,
        "",
        "### Teacher-output cache",
        "",
        *throughput,
        "",
        *commands_block(commands),
    ]
    write_section(path, SECTION, body)


if __name__ == "__main__":
    main()
