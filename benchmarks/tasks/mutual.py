"""Online (mutual) distillation on MNIST (deep mutual learning, Zhang et al. 2018): `compress distill --online`.

Two networks, a ResNet-8 (the teacher, written to `--teacher`) and an MLP (the student), each trained
alone with `compress train` and both trained together with `compress distill --online`, with the same
epochs, schedule, batch order and seed. The mutual run starts the student from the same weights as
the student alone (both are built first from the seed); the teacher starts from other random weights
than the teacher alone (it is built second). The temperature of the mutual term is chosen on the first
seed's validation split; several seeds show the spread.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from . import Net, compress

EPOCHS = 4
SEEDS = (0, 1, 2)
# (alpha, temperature) of the mutual runs tried on the first seed; the other seeds take the best on validation
SWEEP = ((0.5, 1.0), (0.5, 4.0))


TEACHER = Net("ResNet-8", "resnet8", ())
STUDENT = Net("MLP 128-128", "mlp", ("hidden=128,128",))
# --quick: networks small enough that an epoch of MNIST takes seconds
QUICK_TEACHER = Net("CNN 4-8 channels, 16 hidden", "cnn", ("channels=4,8", "hidden=16"))
QUICK_STUDENT = Net("MLP 32", "mlp", ("hidden=32",))


def run(data_dir: str, work: Path, quick: bool) -> list[str]:
    epochs, seeds = (1, SEEDS[:1]) if quick else (EPOCHS, SEEDS)
    teacher, student = (QUICK_TEACHER, QUICK_STUDENT) if quick else (TEACHER, STUDENT)
    commands: list[str] = []

    def common(seed: int) -> list[str]:
        return ["--data", f"mnist:{data_dir}", "--device", "cpu", "--epochs", str(epochs), "--seed", str(seed)]

    def trained_alone(net: Net, seed: int) -> dict:
        manifest, command = compress(
            ["train", "--model", net.spec, *net.model_args("--model-arg"), *common(seed)],
            work / f"{net.name()}-alone-e{epochs}-s{seed}.pt",
        )
        commands.append(command)
        return manifest

    def trained_mutually(alpha: float, temperature: float, seed: int) -> tuple[dict, dict]:
        """The student's manifest and the teacher's."""
        stem = f"mutual-a{alpha:g}-T{temperature:g}-e{epochs}-s{seed}"
        peer_out = work / f"{stem}.teacher.pt"
        manifest, command = compress(
            [
                "distill",
                "--online",
                "--teacher-model",
                teacher.spec,
                *teacher.model_args("--teacher-model-arg"),
                "--teacher",
                str(peer_out),
                "--model",
                student.spec,
                *student.model_args("--model-arg"),
                "--alpha",
                f"{alpha:g}",
                "--temperature",
                f"{temperature:g}",
                *common(seed),
            ],
            work / f"{stem}.student.pt",
        )
        commands.append(command)
        return manifest, json.loads(peer_out.with_name(peer_out.name + ".json").read_text())

    def validation(pair: tuple[dict, dict]) -> float:
        return statistics.mean(m["metrics"]["val_accuracy"] for m in pair)

    sweep = {setting: trained_mutually(*setting, seeds[0]) for setting in SWEEP}
    best = max(SWEEP, key=lambda setting: validation(sweep[setting]))
    alone: dict[Net, list[dict]] = {teacher: [], student: []}
    mutual: dict[Net, list[dict]] = {teacher: [], student: []}
    for seed in seeds:
        for net in (teacher, student):
            alone[net].append(trained_alone(net, seed))
        student_manifest, teacher_manifest = sweep[best] if seed == seeds[0] else trained_mutually(*best, seed)
        mutual[student].append(student_manifest)
        mutual[teacher].append(teacher_manifest)

    def accuracies(manifests: list[dict]) -> list[float]:
        return [100 * m["metrics"]["test_accuracy"] for m in manifests]

    def spread(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.2f}"
        return f"{statistics.mean(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    table = [
        "| network | params | trained alone: test accuracy % | trained mutually % | gain, points: mean (per seed) |",
        "| --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    gained = []
    for net, role in ((teacher, "teacher (`--teacher-model`)"), (student, "student (`--model`)")):
        solo, together = accuracies(alone[net]), accuracies(mutual[net])
        gains = [b - a for a, b in zip(solo, together)]
        gained.append(statistics.mean(gains) > 0)
        table.append(
            f"| {net.label}, {role} | {alone[net][0]['metrics']['params']:,} | {spread(solo)} | {spread(together)} "
            f"| {statistics.mean(gains):+.2f} ({', '.join(f'{g:+.2f}' for g in gains)}) |"
        )
        noise = max(solo) - min(solo)
        within = (
            f", within the {noise:.2f}-point spread of training alone over the seeds"
            if len(solo) > 1 and abs(statistics.mean(gains)) <= noise
            else ""
        )
        verdicts.append(
            f"{net.label}: {statistics.mean(gains):+.2f} points on average, higher in "
            f"{sum(g > 0 for g in gains)} of {len(gains)} seed(s){within}"
        )
    sweep_table = [
        f"| mutual setting (seed {seeds[0]}) | {teacher.label} val / test % | {student.label} val / test % |",
        "| --- | --- | --- |",
    ]
    for setting, (student_manifest, teacher_manifest) in sweep.items():
        cells = [
            f"{100 * m['metrics']['val_accuracy']:.2f} / {100 * m['metrics']['test_accuracy']:.2f}"
            for m in (teacher_manifest, student_manifest)
        ]
        mark = " (chosen)" if setting == best else ""
        sweep_table.append(f"| α = {setting[0]:g}, T = {setting[1]:g}{mark} | {cells[0]} | {cells[1]} |")
    # one thread per process beside another benchmark: two would fight over the 2 cores (the figures do not
    # depend on it beyond the order of float sums; the times would)
    threads = os.environ.get("OMP_NUM_THREADS")

    return [
        "## Online (mutual) distillation on MNIST (`benchmarks/tasks/mutual.py`)",
        "",
        f"`compress distill --online`: a {teacher.label} and an {student.label} trained together from scratch, "
        "each from the labels and from the other's soft targets (deep mutual learning, both updated at once each "
        f"step; α = {best[0]:g}, T = {best[1]:g}), against each trained alone (`compress train`): {epochs} "
        "epoch(s) each, the same schedule (AdamW 3e-3, one-cycle, batch 128), batch order and seed, "
        f"seeds {', '.join(map(str, seeds))}. Test accuracy on the 10,000 MNIST test images, each network's "
        "best epoch on the validation split (10% of the training images)."
        + (f" Every command ran with OMP_NUM_THREADS={threads} in its environment." if threads else ""),
        "",
        *table,
        "",
        "- Target: both gain (DML reports about +1–2 points on CIFAR-100) — "
        f"{'met' if all(gained) else 'missed'} on MNIST: " + "; ".join(verdicts) + ".",
        "- A mutual step runs both networks forward and backward once: the run costs what training both alone "
        "does (times are not compared here: they were taken beside another benchmark).",
        "",
        "Tuned: the temperature of the mutual term (α = 0.5, DML's equal weights, and T = 1, DML's, or 4) on seed "
        f"{seeds[0]}, chosen by the mean of both networks' validation accuracy, never on the test set; the other "
        "seeds take the choice. The networks, epochs and schedule (compress's defaults) were fixed beforehand to "
        "fit the section's time budget.",
        "",
        *sweep_table,
        "",
        *_commands_block(commands),
    ]


def _commands_block(commands: list[str]) -> list[str]:
    from common import commands_block

    return commands_block(commands)
