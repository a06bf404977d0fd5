"""MNIST mosaics: the data of the multi-label and regression sections, made from the MNIST IDX files, and
the runs both sections share (teacher, student alone, distilled student; export, quantize, bench).

A mosaic is a 56x56 image (1 channel) of four MNIST digits in a 2x2 grid, drawn at random (with
replacement) from one split: training mosaics from the training digits, test mosaics from the test
digits, so no test digit is ever seen in training. The same mosaics serve both tasks:

* multilabel: ``y`` (N, 10) uint8, 1 where the digit appears in the mosaic (``labels`` the digit names);
* regression: ``y`` float32 (N,), the sum of the four digits (0..36).

The files are written once (to a temporary name, then renamed), seeded, into the section's work folder
under ``runs/`` (never committed); a file already there is reused. Not a section itself: it defines no
``run``, so ``tasks_mnist.py`` refuses to run it.

:func:`section` runs one task's comparison: a teacher trained with `compress train`, the student trained
alone with `compress train` and distilled from the teacher with `compress distill` (the same epochs, seed,
batch and schedule), the distillation's α and T chosen on the first seed's validation split; then the
first seed's distilled student and the teacher are exported, the student quantized and all three benched.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import Net, compress, run_command

TRAIN, TEST = 30_000, 5_000  # mosaics per split
QUICK_TRAIN, QUICK_TEST = 2_000, 500
SEED = 0
SIDE = 2  # digits per row and per column
KINDS = ("multilabel", "regression")


def mosaics(digits: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator) -> tuple:
    """``count`` mosaics (count, 1, 56, 56) uint8 and the digits each holds (count, 4), row by row."""
    n, _, h, w = digits.shape
    picks = rng.integers(0, n, size=(count, SIDE * SIDE))
    tiles = digits[picks.reshape(-1), 0].reshape(count, SIDE, SIDE, h, w)
    images = tiles.transpose(0, 1, 3, 2, 4).reshape(count, 1, SIDE * h, SIDE * w)
    return np.ascontiguousarray(images), labels[picks].astype(np.int64)


def targets(kind: str, digits: np.ndarray) -> np.ndarray:
    """The targets of mosaics holding ``digits`` (N, 4): label sets or sums."""
    if kind == "multilabel":
        y = np.zeros((len(digits), 10), dtype=np.uint8)
        np.put_along_axis(y, digits, 1, axis=1)
        return y
    if kind == "regression":
        return digits.sum(axis=1).astype(np.float32)
    raise ValueError(f"unknown mosaic task {kind!r}; use one of {', '.join(KINDS)}")


def build(data_dir: str, work: Path, kind: str, quick: bool) -> tuple[Path, str]:
    """The npz of ``kind`` mosaics in ``work`` (made now unless there) and a line describing it."""
    train, test = (QUICK_TRAIN, QUICK_TEST) if quick else (TRAIN, TEST)
    path = work / f"mosaics-{kind}-{train}-{test}-s{SEED}.npz"
    description = (
        f"{train:,} training and {test:,} test mosaics of 56x56 pixels, each four MNIST digits in a 2x2 grid drawn "
        f"at random (seed {SEED}, with replacement) from the same split: training mosaics from the 60,000 training "
        "digits, test mosaics from the 10,000 test digits (made by `benchmarks/tasks/mosaics.py`, never committed)"
    )
    if path.exists():
        return path, description
    from compress.data.sources import read_source

    raw = read_source(f"mnist:{data_dir}")
    arrays: dict[str, np.ndarray] = {}
    # one generator per split, so the test mosaics do not depend on how many training ones there are
    for split, x, labels, count, seed in (
        ("train", raw.x_train, raw.y_train, train, SEED),
        ("test", raw.x_test, raw.y_test, test, SEED + 1),
    ):
        images, digits = mosaics(np.asarray(x), np.asarray(labels), count, np.random.default_rng(seed))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, targets(kind, digits)
    if kind == "multilabel":
        arrays["labels"] = np.array([str(d) for d in range(10)])
    work.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, path)
    print(f"wrote {path}", flush=True)
    return path, description


@dataclass(frozen=True)
class Setup:
    """One section's comparison; the ``quick_`` fields replace the others with ``--quick``."""

    kind: str  # multilabel | regression
    teacher: Net
    teacher_epochs: int
    teacher_augment: str  # --augment of the teacher alone: the students train without
    student: Net
    epochs: int
    seeds: tuple[int, ...]
    sweep: tuple[tuple[float, float | None], ...]  # (alpha, temperature) tried on the first seed; None: no T
    extra: tuple[str, ...] = ()  # further arguments of every train and distill (e.g. --task regression)
    quantize: tuple[str, ...] = ()  # further arguments of `compress quantize`
    quick_teacher: Net | None = None
    quick_student: Net | None = None


def section(setup: Setup, data_dir: str, work: Path, quick: bool) -> dict:
    """Every run of ``setup``; returns what the section's markdown is made of (see the keys below)."""
    from compress.tasks import get_task

    task = get_task(setup.kind)
    npz, described = build(data_dir, work, setup.kind, quick)
    teacher_net = (setup.quick_teacher or setup.teacher) if quick else setup.teacher
    student_net = (setup.quick_student or setup.student) if quick else setup.student
    teacher_epochs, epochs = (1, 1) if quick else (setup.teacher_epochs, setup.epochs)
    seeds = setup.seeds[:1] if quick else setup.seeds
    sweep = setup.sweep[:2] if quick else setup.sweep
    data = ["--data", f"npz:{npz}", "--device", "cpu", *setup.extra]
    commands: list[str] = []

    def run(args: list[str], out: Path) -> dict:
        manifest, command = compress(args, out)
        commands.append(command)
        return manifest

    augment = [] if setup.teacher_augment == "none" else ["--augment", setup.teacher_augment]
    teacher_out = (
        work / f"teacher-{teacher_net.name()}-e{teacher_epochs}{'-' + setup.teacher_augment if augment else ''}.pt"
    )
    teacher = run(["train", *teacher_net.flags(), "--epochs", str(teacher_epochs), *augment, *data], teacher_out)

    def common(seed: int) -> list[str]:
        return [*student_net.flags(), "--epochs", str(epochs), "--seed", str(seed), *data]

    def alone(seed: int) -> dict:
        return run(["train", *common(seed)], work / f"{student_net.name()}-alone-e{epochs}-s{seed}.pt")

    def distilled_out(alpha: float, temperature: float | None, seed: int) -> Path:
        return work / f"{student_net.name()}-distilled-{tag(alpha, temperature)}-e{epochs}-s{seed}.pt"

    def distilled(alpha: float, temperature: float | None, seed: int) -> dict:
        setting = ["--alpha", f"{alpha:g}"]
        if temperature is not None:
            setting += ["--temperature", f"{temperature:g}"]
        out = distilled_out(alpha, temperature, seed)
        return run(["distill", "--teacher", str(teacher_out), *setting, *common(seed)], out)

    tried = {setting: distilled(*setting, seeds[0]) for setting in sweep}
    best = max(sweep, key=lambda setting: task.score(tried[setting]["metrics"]["val_metrics"]))
    alone_runs, distilled_runs = [], []
    for seed in seeds:
        alone_runs.append(alone(seed))
        distilled_runs.append(tried[best] if seed == seeds[0] else distilled(*best, seed))

    # the first seed's distilled student and the teacher through ONNX: export, quantize, bench; in a folder named
    # after the student, so that another choice of the sweep never reuses what was made for an earlier one
    student_out = distilled_out(*best, seeds[0])
    onnx = work / f"onnx-{student_out.stem}"
    teacher_onnx, student_onnx, student_int8 = onnx / "teacher.onnx", onnx / "student.onnx", onnx / "student.int8.onnx"
    errors: list[tuple[str, str]] = []
    for checkpoint, path in ((teacher_out, teacher_onnx), (student_out, student_onnx)):
        _, command, error = attempt(["export", str(checkpoint)], path)
        commands.append(command)
        if error:
            errors.append((command, error))
    quantized, command, error = attempt(["quantize", str(student_onnx), *setup.quantize], student_int8)
    commands.append(command)
    if error:
        errors.append((command, error))
    models = [path for path in (teacher_onnx, student_onnx, student_int8) if path.exists()]
    report_dir = onnx / "report"
    bench_args = ["bench", *map(str, models), "--baseline", str(teacher_onnx), "--batch-sizes", "1,64"]
    bench_args += ["--threads", "1"]
    report, command, error = attempt(bench_args, report_dir, report=True)
    commands.append(command)
    if error:
        errors.append((command, error))
    return {
        "task": task,
        "described": described,
        "teacher_net": teacher_net,
        "student_net": student_net,
        "teacher_epochs": teacher_epochs,
        "epochs": epochs,
        "seeds": seeds,
        "teacher": teacher,
        "alone": alone_runs,
        "distilled": distilled_runs,
        "tried": tried,
        "best": best,
        "quantized": quantized,
        "report": report,
        "report_dir": report_dir,
        "errors": errors,
        "commands": commands,
    }


def attempt(args: list[str], out: Path, report: bool = False) -> tuple[dict | None, str, str | None]:
    """``compress ARGS --out OUT`` (``--report OUT`` for bench) like :func:`compress`, but a failure is
    returned, not raised: (the manifest or report, or None; the command; the error's last line, or None).

    For the steps that follow training (export, quantize, bench): a section still writes its figures when
    one of them fails, and says why."""
    from compress.artifacts import manifest_path

    done = out / "report.json" if report else manifest_path(out)
    command = ["compress", *args, "--report" if report else "--out", str(out)]
    if not done.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        result = run_command(command, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(result.stderr)
        if result.returncode != 0:
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            return None, shlex.join(command), lines[-1] if lines else f"exit status {result.returncode}"
    return json.loads(done.read_text()), shlex.join(command), None


def tag(alpha: float, temperature: float | None) -> str:
    return f"a{alpha:g}" + ("" if temperature is None else f"-T{temperature:g}")


# --- markdown ------------------------------------------------------------------------------------------


def setting_label(alpha: float, temperature: float | None) -> str:
    return f"α = {alpha:g}" + ("" if temperature is None else f", T = {temperature:g}")


def spread(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def figure(task, name: str, value: float) -> float:
    """A metric as the tables show it: fractions in percent."""
    return 100 * value if name in task.percent else value


def digits_of(task, name: str) -> int:
    return 2 if name in task.percent else 3


def gap_closed(task, teacher: float, alone: float, distilled: float) -> float:
    """(distilled − alone) / (teacher − alone) on the primary metric (lower-is-better alike: both differences
    change sign together)."""
    return (distilled - alone) / (teacher - alone) if teacher != alone else float("nan")


def results_table(runs: dict, shown: tuple[str, ...]) -> list[str]:
    """Teacher / student alone / distilled: ``shown`` test metrics, the primary's validation figure, params."""
    task = runs["task"]
    primary = task.metric
    seeds = runs["seeds"]

    def title(name: str) -> str:
        return f"test {task.metric_title(name)}" + (" %" if name in task.percent else "")

    header = ["model", "params", *(title(n) for n in shown), title(primary).replace("test", "val"), "training s"]

    def cells(manifests: list[dict]) -> list[str]:
        metrics = [m["metrics"] for m in manifests]
        found = [spread([figure(task, n, m["test_metrics"][n]) for m in metrics], digits_of(task, n)) for n in shown]
        val = spread([figure(task, primary, m["val_metrics"][primary]) for m in metrics], digits_of(task, primary))
        seconds = spread([m["train_time_s"] for m in metrics], 0)
        return [f"{metrics[0]['params']:,}", *found, val, seconds]

    teacher, student = runs["teacher_net"], runs["student_net"]
    on = f"seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    rows = [
        (f"{teacher.label} teacher ({runs['teacher_epochs']} epochs, seed 0)", [runs["teacher"]]),
        (f"{student.label} alone (`compress train`, {on})", runs["alone"]),
        (f"**{student.label} distilled** ({setting_label(*runs['best'])}, {on})", runs["distilled"]),
    ]
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join([label, *cells(manifests)]) + " |" for label, manifests in rows),
    ]


def gap_lines(runs: dict) -> tuple[list[str], bool]:
    """The gap closed per seed and on the means, and whether the target (at least half) is met on the means."""
    task = runs["task"]
    primary = task.metric
    title = task.metric_title(primary)
    teacher = runs["teacher"]["metrics"]["test_metrics"][primary]
    alone = [m["metrics"]["test_metrics"][primary] for m in runs["alone"]]
    distilled = [m["metrics"]["test_metrics"][primary] for m in runs["distilled"]]
    per_seed = [gap_closed(task, teacher, a, d) for a, d in zip(alone, distilled)]
    mean = gap_closed(task, teacher, statistics.mean(alone), statistics.mean(distilled))
    # a gap only when the teacher is the better one: else the ratio's sign means nothing
    ahead = task.score({primary: teacher}) > task.score({primary: statistics.mean(alone)})
    met = ahead and mean >= 0.5
    d = digits_of(task, primary)
    unit = " points" if primary in task.percent else ""
    lines = [
        f"- Gap closed on test {title}, (distilled − alone) / (teacher − alone): **{mean:.2f}** on the means over "
        f"the seeds ({figure(task, primary, statistics.mean(distilled) - statistics.mean(alone)):+.{d}f}{unit} of "
        f"the {figure(task, primary, teacher - statistics.mean(alone)):+.{d}f}{unit} between the student alone and "
        f"the teacher); per seed "
        + ", ".join(f"{s}: {g:.2f}" for s, g in zip(runs["seeds"], per_seed))
        + f". Target: at least half — **{'met' if met else 'missed'}**"
        + ("" if ahead else " (the teacher is no better than the student alone: there is no gap to close)")
        + ".",
    ]
    return lines, met


def sweep_table(runs: dict) -> list[str]:
    task = runs["task"]
    names = task.metrics
    seed = runs["seeds"][0]
    pct = " %" if task.metric in task.percent else ""
    header = [f"distillation (seed {seed})"] + [f"val {task.metric_title(n)}{pct}" for n in names]
    header += [f"test {task.metric_title(task.metric)}{pct}"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    alone = runs["alone"][0]["metrics"]
    lines.append(
        "| alone (`compress train`) | "
        + " | ".join(f"{figure(task, n, alone['val_metrics'][n]):.{digits_of(task, n)}f}" for n in names)
        + f" | {figure(task, task.metric, alone['test_metrics'][task.metric]):.{digits_of(task, task.metric)}f} |"
    )
    for setting, manifest in runs["tried"].items():
        metrics = manifest["metrics"]
        mark = " (chosen)" if setting == runs["best"] else ""
        lines.append(
            f"| {setting_label(*setting)}{mark} | "
            + " | ".join(f"{figure(task, n, metrics['val_metrics'][n]):.{digits_of(task, n)}f}" for n in names)
            + f" | {figure(task, task.metric, metrics['test_metrics'][task.metric]):.{digits_of(task, task.metric)}f} |"
        )
    return lines


def onnx_lines(runs: dict) -> list[str]:
    """The quantize fidelity line and the bench report's table (or the errors that stopped them)."""
    task = runs["task"]
    lines: list[str] = []
    quantized = runs["quantized"]
    if quantized:
        q = quantized["metrics"]
        fidelity = q.get("fidelity") or {}
        settings = quantized.get("quantization") or {}
        first = (
            f"- `compress quantize` ({settings.get('mode')}, {settings.get('format')}, activations "
            f"{settings.get('activation_type')}, weights {settings.get('weight_type')}, "
            f"{settings.get('calibration')} calibration), on the "
            f"{fidelity.get('samples', '?'):,} {q.get('accuracy_split', 'val')} samples"
        )
        if q.get("float_metrics") and q.get("task_metrics"):
            first += (
                f": fp32 {task.describe(q['float_metrics'])} → int8 {task.describe(q['task_metrics'])} "
                f"({q['metric_drop']:.2f} {q['metric_drop_unit']}, budget {fidelity.get('budget_points', '?')})"
            )
        lines.append(first + ".")
        kept = fidelity.get("decisions_changed")
        parts = []
        if kept is not None:
            parts.append(f"label decisions kept {100 * (1 - kept):.2f}%")
        for key, label in (("cosine", "cosine"), ("relative_l2", "relative L2"), ("max_abs_diff", "max abs diff")):
            if fidelity.get(key) is not None:
                parts.append(f"{label} {fidelity[key]:.4f}")
        if parts:
            lines.append("- Fidelity of int8 to fp32 (the same samples): " + ", ".join(parts) + ".")
        size = q.get("float_size_bytes"), q.get("size_bytes")
        if all(size):
            lines.append(f"- Size: {size[0] / 1024:.0f} KiB → {size[1] / 1024:.0f} KiB.")
    report_md = runs["report_dir"] / "report.md"
    if runs["report"] and report_md.exists():
        table = [line for line in report_md.read_text().splitlines() if line.startswith("|")]
        lines += [
            "",
            "`compress bench` (ONNX Runtime, CPU provider, 1 thread; speed-ups against the teacher; timings taken "
            "beside other work on the 2 cores, so noisy):",
            "",
            *table,
        ]
    for command, error in runs["errors"]:
        lines += ["", f"- **Failed**: `{command}`: `{error}`"]
    return lines


def markdown(
    runs: dict, heading: str, intro: str, shown: tuple[str, ...], tuned: str, explored: list[str]
) -> list[str]:
    """A section: heading, what was run, the table, the verdict, what was tuned (``tuned``, then this run's
    sweep, then ``explored``: the runs that chose the setting), the ONNX checks and every command."""
    from common import commands_block

    verdict, _ = gap_lines(runs)
    threads = os.environ.get("OMP_NUM_THREADS")
    seeds = runs["seeds"]
    return [
        heading,
        "",
        intro + f" Data: {runs['described']}; 10% of the training mosaics are held out for validation (`--val-fraction "
        f"0.1`), the test figures are on all {runs['teacher']['data']['sizes']['test']:,} test mosaics. The students "
        f"train {runs['epochs']} epochs with the same schedule (AdamW 3e-3, one-cycle, batch 128), batch order and "
        f"seed ({'seeds ' + ', '.join(map(str, seeds)) + ': mean, and range in brackets' if len(seeds) > 1 else f'seed {seeds[0]}'}), keeping their best epoch on validation. Training times are wall times on the 2 cores, "
        "shared with whatever ran beside."
        + (f" Every command ran with OMP_NUM_THREADS={threads} in its environment." if threads else ""),
        "",
        *results_table(runs, shown),
        "",
        *verdict,
        "",
        tuned,
        "",
        *sweep_table(runs),
        "",
        *explored,
        "",
        f"ONNX: the seed-{seeds[0]} distilled student and the teacher exported (`compress export`), the student "
        "quantized to int8 (`compress quantize`, its defaults) and all three benched (`compress bench`).",
        "",
        *onnx_lines(runs),
        "",
        *commands_block(runs["commands"]),
    ]


def exploration_table(task, rows: tuple[tuple[str, float, float, str, float], ...]) -> list[str]:
    """Runs made while choosing a section's setting (seed 0, validation figures): (student and epochs, the
    teacher's, alone, the best distilled setting, its figure), with the gap each closed on validation."""
    title = task.metric_title(task.metric) + (" %" if task.metric in task.percent else "")
    lines = [
        f"| student, epochs (seed 0) | teacher val {title} | alone | distilled: best setting (others tried) | best "
        "| gap closed (val) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    d = digits_of(task, task.metric)
    for label, teacher, alone, setting, distilled in rows:
        closed = (distilled - alone) / (teacher - alone)
        lines.append(f"| {label} | {teacher:.{d}f} | {alone:.{d}f} | {setting} | {distilled:.{d}f} | {closed:.2f} |")
    return lines
