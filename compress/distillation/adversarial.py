"""Adversarial inputs: for robust distillation, and for measuring how robust a model is.

Adversarially robust distillation (Goldblum et al. 2020): besides matching the teacher on the
training inputs, the student learns to match it on the same inputs perturbed, within an L∞ ball of
radius ε, so as to make it disagree with the teacher the most. The perturbation is found by

* FGSM (Goodfellow et al. 2015): one step of ε along the sign of the gradient of the loss;
* PGD (Madry et al. 2018): a random start in the ball, then ``steps`` steps of ``step_size`` along
  the sign of the gradient, projected back onto the ball after each.

Everything happens in the model's input space, after preprocessing, and ε is measured there.
Perturbed inputs are also kept within the values real inputs can take (``input_bounds``).

The same attacks, maximising the cross-entropy with the true labels, measure a model's robustness
(``robustness``): its accuracy on test inputs, clean and attacked.

The attacks take any ``forward`` (inputs -> logits) and any ``objective`` (logits -> the scalar to
maximise); they differentiate with respect to the inputs alone (``torch.autograd.grad``), so no
parameter's gradient is touched. Putting a model in eval mode first is the caller's business
(``evaluating``): an attack should neither update batch-norm statistics nor draw dropout masks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..data import Dataset, Preprocessing
from ..distributed import World
from ..stages.distill import pgd_step_size
from .teachers import Teacher

if TYPE_CHECKING:
    from ..stages.distill import DistillConfig

Forward = Callable[[torch.Tensor], torch.Tensor]  # inputs -> logits
Objective = Callable[[torch.Tensor], torch.Tensor]  # logits -> the scalar an attack maximises
Bounds = tuple[torch.Tensor, torch.Tensor]  # (low, high), broadcast against a batch of inputs

EVAL_BATCH = 500  # test samples attacked at once


def input_bounds(preprocessing: Preprocessing, device: torch.device | str = "cpu") -> Bounds | None:
    """The values a real input can take, per channel (or feature), in the model's input space.

    Preprocessing maps ``raw * scale`` to the input space; every data source that declares a scale
    other than 1 (uint8 pixels / 255, the digits' 0..16 / 16) declares by it that ``raw * scale``
    lies in [0, 1], whose image is ``[-mean / std, (1 - mean) / std]``. A scale of 1 (``raw``
    preprocessing, float arrays) says nothing of the range: None, and attacked inputs are left
    unclamped.
    """
    if preprocessing.scale == 1.0:
        return None
    shape = (1, -1, 1, 1) if preprocessing.layout == "NCHW" else (1, -1)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=device).view(shape)
    std = torch.tensor(preprocessing.std, dtype=torch.float32, device=device).view(shape)
    return (0 - mean) / std, (1 - mean) / std


def _gradient(forward: Forward, x: torch.Tensor, objective: Objective) -> torch.Tensor:
    """d objective(forward(x)) / dx, and nothing else differentiated."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(objective(forward(x)), x)
    return grad


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, bounds: Bounds | None) -> torch.Tensor:
    """``x_adv`` brought back into the ε ball around ``x``, then into ``bounds``."""
    x_adv = x_adv.clamp(x - eps, x + eps)
    if bounds is not None:
        x_adv = x_adv.clamp(*bounds)
    return x_adv.detach()


def fgsm(forward: Forward, x: torch.Tensor, objective: Objective, eps: float, bounds: Bounds | None = None):
    """One step of ``eps`` along the sign of the gradient of ``objective`` (Goodfellow et al. 2015)."""
    x = x.detach()
    return _project(x + eps * _gradient(forward, x, objective).sign(), x, eps, bounds)


def pgd(
    forward: Forward,
    x: torch.Tensor,
    objective: Objective,
    eps: float,
    steps: int,
    step_size: float,
    bounds: Bounds | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on ``objective`` in the L∞ ball of ``eps`` around ``x``, from a uniformly
    random start in the ball (Madry et al. 2018). ``generator`` (a CPU one) draws the start; without
    it, the default generator of ``x``'s device does."""
    x = x.detach()
    if generator is None:
        noise = torch.rand_like(x)
    else:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    x_adv = _project(x + eps * (2 * noise - 1), x, eps, bounds)
    for _ in range(steps):
        x_adv = _project(x_adv + step_size * _gradient(forward, x_adv, objective).sign(), x, eps, bounds)
    return x_adv


@dataclass(frozen=True)
class Attack:
    """An attack and its settings: FGSM, or PGD with ``steps`` steps of ``step_size``."""

    kind: str  # "fgsm" | "pgd"
    eps: float
    steps: int = 1
    step_size: float | None = None

    def __call__(
        self,
        forward: Forward,
        x: torch.Tensor,
        objective: Objective,
        bounds: Bounds | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if self.kind == "fgsm":
            return fgsm(forward, x, objective, self.eps, bounds)
        return pgd(forward, x, objective, self.eps, self.steps, self.step_size, bounds, generator)

    def describe(self) -> dict[str, Any]:
        pgd_only = {"steps": self.steps, "step_size": self.step_size, "random_start": True}
        return {"attack": self.kind, "eps": self.eps, **(pgd_only if self.kind == "pgd" else {})}


def training_attack(config: DistillConfig) -> Attack | None:
    """The attack of ``--adversarial``, or None."""
    if config.adversarial == "none":
        return None
    if config.adversarial == "fgsm":
        return Attack("fgsm", config.adv_eps)
    return Attack("pgd", config.adv_eps, config.adv_steps, config.adv_step_size)


def evaluation_attacks(config: DistillConfig) -> list[Attack]:
    """The attacks of ``--eval-attack`` (the training attack by default), at ``--eval-eps``/``--eval-steps``."""
    return [
        Attack("fgsm", config.eval_eps)
        if kind == "fgsm"
        else Attack("pgd", config.eval_eps, config.eval_steps, pgd_step_size(config.eval_eps, config.eval_steps))
        for kind in config.eval_attack
    ]


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode (batch norm on its running statistics, no dropout), its mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def teacher_forward(teacher: Teacher) -> tuple[Forward | None, str | None]:
    """A differentiable forward of the teacher (its logits, as distillation sees them), or None and why not."""
    if teacher.module is None:
        return None, (
            "an ONNX teacher runs in ONNX Runtime, which gives no gradients with respect to its inputs: it cannot "
            "be attacked; distil from its PyTorch checkpoint to measure it"
        )
    module = teacher.module

    def forward(x: torch.Tensor) -> torch.Tensor:
        # probabilities become log-probabilities, as for distillation (teacher.outputs == "probs")
        return teacher.as_logits(module(x.to(teacher.device)).float().to(x.device))

    return forward, None


def attacked_accuracy(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack,
    bounds: Bounds | None,
    world: World,
    seed: int,
    batch_size: int = EVAL_BATCH,
) -> tuple[float, float]:
    """Accuracy (fractions) of ``forward`` on ``x``, clean and under ``attack`` maximising the cross-entropy
    with the true labels ``y``. Each process attacks its block of the samples and the counts are summed,
    so every sample counts once; PGD's random starts are drawn from ``seed`` and the process's rank."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + world.rank)
    block = world.block(len(x))
    clean = attacked = 0
    for start in range(block.start, block.stop, batch_size):
        end = min(start + batch_size, block.stop)
        xb, yb = x[start:end].to(world.device), y[start:end].to(world.device)

        def cross_entropy(logits: torch.Tensor, yb: torch.Tensor = yb) -> torch.Tensor:
            return F.cross_entropy(logits.float(), yb, reduction="sum")

        x_adv = attack(forward, xb, cross_entropy, bounds, generator)
        with torch.no_grad():
            clean += int((forward(xb).argmax(1) == yb).sum())
            attacked += int((forward(x_adv).argmax(1) == yb).sum())
    clean, attacked = world.sum([clean, attacked])
    return clean / len(x), attacked / len(x)


def robustness(
    config: DistillConfig, student: torch.nn.Module, teacher: Teacher, dataset: Dataset, world: World
) -> list[dict[str, Any]]:
    """One record per evaluation attack: the student's and the teacher's test accuracy, clean and attacked,
    on the first ``config.eval_samples`` test samples (all of them by default)."""
    total = len(dataset.y_test)
    samples = min(total, config.eval_samples or total)
    x = torch.from_numpy(dataset.x_test[:samples])
    y = torch.from_numpy(dataset.y_test[:samples])
    bounds = input_bounds(dataset.preprocessing, world.device)
    forward_teacher, why_not = teacher_forward(teacher)
    records = []
    for attack in evaluation_attacks(config):

        def measured(forward: Forward, attack: Attack = attack) -> dict[str, float]:
            clean, attacked = attacked_accuracy(forward, x, y, attack, bounds, world, config.seed)
            return {"clean_accuracy": clean, "attacked_accuracy": attacked}

        with evaluating(student):
            student_record = measured(student)
        teacher_record = None if forward_teacher is None else measured(forward_teacher)
        records.append(
            {
                **attack.describe(),
                # ε in units of raw * scale (pixels in [0, 1] for image data), per channel or feature
                "eps_before_normalisation": [attack.eps * s for s in dataset.preprocessing.std],
                "maximises": "cross-entropy with the true labels",
                "clamped_to_input_range": bounds is not None,
                "split": "test",
                "samples": samples,
                "student": student_record,
                "teacher": teacher_record,
                **({"teacher_not_attacked": why_not} if teacher_record is None else {}),
            }
        )
    return records


def robustness_lines(records: list[dict[str, Any]]) -> list[str]:
    """What the distill summary says of each robustness record."""
    lines = []
    for record in records:
        label = "FGSM" if record["attack"] == "fgsm" else f"PGD-{record['steps']}"
        eps = ", ".join(f"{e:.3g}" for e in record["eps_before_normalisation"])
        student = record["student"]
        line = (
            f"robustness under {label}, ε {record['eps']:.4g} ({eps} before normalisation), "
            f"{record['samples']:,} test samples: student {100 * student['clean_accuracy']:.2f}% clean, "
            f"{100 * student['attacked_accuracy']:.2f}% attacked"
        )
        teacher = record["teacher"]
        if teacher is None:
            line += "; teacher not attacked (ONNX Runtime gives no input gradients)"
        else:
            line += (
                f"; teacher {100 * teacher['clean_accuracy']:.2f}% clean, "
                f"{100 * teacher['attacked_accuracy']:.2f}% attacked"
            )
        lines.append(line)
    return lines
