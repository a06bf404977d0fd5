"""Adversarially robust distillation on MNIST (Goldblum et al. 2020): `compress distill --adversarial pgd`.

A ResNet-8 teacher; a small CNN student trained three ways with the same schedule and seed: alone
(`--alpha 0`: hard labels only, the teacher's term weighted 0), distilled, and distilled with the
adversarial term (PGD-3 in training). Every run is measured by `compress distill` itself
(`--eval-attack fgsm,pgd`): test accuracy clean, under FGSM and under PGD-10 (random start, step
2.5 ε / 10), untargeted, maximising the cross-entropy with the true labels, at ε = 0.1 of the pixel
range. The teacher, a PyTorch checkpoint, is attacked in each run alike; its figures are checked to
agree across the runs.
"""

from __future__ import annotations

from pathlib import Path

from common import commands_block

from . import compress

EPS_PIXELS = 0.1  # ε in pixels scaled to [0, 1]; the input space is (pixel / 255 - mean) / std
TEACHER_EPOCHS = 3
STUDENT = ["--model", "cnn", "--model-arg", "channels=8,16", "--model-arg", "hidden=32"]
STUDENT_TAG, STUDENT_LABEL = "cnn8-16-32", "CNN (8, 16 channels, 32 hidden)"
EPOCHS = 5
TRAIN_STEPS = 3  # PGD steps in adversarial training (step 2.5 ε / 3): 5 passes per batch instead of 1
ADV_WEIGHT = 1.0
EVAL_SAMPLES = 2000  # the first test images attacked: the teacher's PGD-10 on all 10,000 takes minutes per run


def run(data_dir: str, work: Path, quick: bool) -> list[str]:
    data = ["--data", f"mnist:{data_dir}", "--device", "cpu"]
    teacher_epochs, epochs, samples = (1, 1, 200) if quick else (TEACHER_EPOCHS, EPOCHS, EVAL_SAMPLES)
    teacher_out = work / f"teacher-resnet8-e{teacher_epochs}.pt"
    teacher, teacher_command = compress(
        ["train", "--model", "resnet8", "--epochs", str(teacher_epochs), *data], teacher_out
    )
    (std,) = teacher["preprocessing"]["std"]
    eps = f"{EPS_PIXELS / std:.6g}"
    evaluation = ["--eval-attack", "fgsm,pgd", "--eval-eps", eps, "--eval-steps", "10", "--eval-samples", str(samples)]
    common = ["--teacher", str(teacher_out), *STUDENT, "--epochs", str(epochs), *evaluation, *data]
    commands = [teacher_command]

    def student(name: str, *args: str) -> dict:
        manifest, command = compress(["distill", *common, *args], work / f"{STUDENT_TAG}-{name}-e{epochs}.pt")
        commands.append(command)
        return manifest

    alone = student("alone", "--alpha", "0")
    plain = student("distilled")
    adversarial = student(
        f"adversarial-pgd{TRAIN_STEPS}-w{ADV_WEIGHT:g}",
        *("--adversarial", "pgd", "--adv-eps", eps, "--adv-steps", str(TRAIN_STEPS), "--adv-weight", f"{ADV_WEIGHT:g}"),
    )
    rows = [
        (f"{STUDENT_LABEL} alone (`--alpha 0`: hard labels only)", alone),
        (f"{STUDENT_LABEL} distilled (T=4, α=0.9)", plain),
        (
            f"**{STUDENT_LABEL} adversarially distilled** (PGD-{TRAIN_STEPS} in training, weight {ADV_WEIGHT:g})",
            adversarial,
        ),
    ]

    def under_attack(manifest: dict, model: str) -> dict[str, float]:
        return {r["attack"]: r[model]["attacked_accuracy"] for r in manifest["metrics"]["robustness"]}

    teacher_records = [[r["teacher"] for r in m["metrics"]["robustness"]] for _, m in rows]
    teachers_agree = all(records == teacher_records[0] for records in teacher_records)

    def pct(value: float) -> str:
        return f"{100 * value:.2f}"

    def row(label: str, manifest: dict, attacked: dict[str, float]) -> str:
        metrics = manifest["metrics"]
        return (
            f"| {label} | {metrics['params']:,} | {pct(metrics['test_accuracy'])} | {pct(attacked['fgsm'])} "
            f"| {pct(attacked['pgd'])} | {metrics['train_time_s']:.0f} |"
        )

    table = [
        "| model | params | clean test accuracy % (10,000) | FGSM % | PGD-10 % | training s |",
        "| --- | --- | --- | --- | --- | --- |",
        row(f"ResNet-8 teacher ({teacher_epochs} epochs)", teacher, under_attack(alone, "teacher")),
        *(row(label, manifest, under_attack(manifest, "student")) for label, manifest in rows),
    ]

    drop = 100 * (plain["metrics"]["test_accuracy"] - adversarial["metrics"]["test_accuracy"])
    mine, others = under_attack(adversarial, "student"), [under_attack(m, "student") for m in (alone, plain)]
    robust = {
        name: mine[attack] > max(o[attack] for o in others) for attack, name in (("fgsm", "FGSM"), ("pgd", "PGD-10"))
    }
    verdict = [
        f"- Clean accuracy: the adversarially distilled student is {abs(drop):.2f} points "
        f"{'below' if drop >= 0 else 'above'} the plain-distilled one (target: at most 1 point below): "
        f"{'met' if drop <= 1 else 'missed'}.",
        "- Under attack, more robust than both the plain-distilled student and the student alone (target): "
        + ", ".join(f"{name} {'met' if ok else 'missed'}" for name, ok in robust.items())
        + ".",
    ]
    agreement = "identical in every run" if teachers_agree else "which differ between the runs (see their manifests)"
    return [
        "## Adversarially robust distillation on MNIST (`benchmarks/tasks/adversarial.py`)",
        "",
        f"ε = {EPS_PIXELS} of the pixel range = {eps} in the input space ((pixel / 255 − mean) / std with std "
        f"{std:.4f}: the teacher's fit preprocessing, which the students share). Clean accuracy on the whole test "
        f"split; the attacks (`compress distill --eval-attack fgsm,pgd`) on its first {samples:,} images, "
        "untargeted (maximising the cross-entropy with the true labels), inputs clamped to the pixel range; "
        f"PGD-10 starts at random and steps 2.5 ε / 10. The students train {epochs} epochs with the same schedule "
        f"and seed. The teacher's attacked figures come from the same evaluation in each student's run, "
        f"{agreement}. Training times are wall times on the 2 cores, shared with whatever ran beside.",
        "",
        *table,
        "",
        *verdict,
        "",
        f"Chosen for time, not tuned on results: the teacher's {teacher_epochs} epochs (4 took too long beside "
        "another benchmark), the student (first a CNN of 16 and 32 channels, then 8 and 16 to cut its time), the "
        f"{samples:,} attacked test images (the teacher's PGD-10 on all 10,000 took minutes in every run), PGD-"
        f"{TRAIN_STEPS} in training ({TRAIN_STEPS + 2} forward-backward passes per batch instead of 1) at the evaluation's ε, and "
        f"the adversarial term's default weight {ADV_WEIGHT:g}. This one setting was run; nothing was swept.",
        "",
        *commands_block(commands),
    ]
