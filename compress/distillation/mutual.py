"""Online (mutual) distillation: a teacher and a student trained together from scratch, each learning
from the labels and from the other's soft targets (deep mutual learning, Zhang et al. 2018), for
users who have no trained teacher: ``compress distill --online --teacher-model SPEC`` writes both.

The student is the model ``Fit`` trains; the teacher, its *peer*, is held by ``MutualObjective``,
whose ``parameters()`` put it in the same optimiser (and have its gradients averaged across
processes by Fit, like any parameters an objective trains beside the model). Each step minimises
the sum of both networks' losses on the same batch:

    student: (1 - alpha) CE(s, y) + alpha T² KL(softmax(p / T) || softmax(s / T)),  p detached
    peer:    (1 - alpha) CE(p, y) + alpha T² KL(softmax(s / T) || softmax(p / T)),  s detached

so both are updated at once, from each other's predictions before the step. The paper updates
them in turn (the second network learns from the first's already updated predictions), which
costs a second forward pass of the first network per step. With the online defaults (alpha 0.5,
T 1) each network's loss is half the paper's CE + KL.

The peer keeps its own best-on-validation weights, checked after every epoch, and is written
with a manifest of its own (stage ``distill``) to ``--teacher`` when training ends, so it can be
exported, benchmarked or used as the teacher of a later ``compress distill``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import Dataset, load_dataset
from ..distributed import World, broadcast_buffers
from ..errors import CompressError
from ..loop import Fit, accuracy, place, save_trained, training_metrics
from ..modelspec import build_model
from .losses import distillation_loss

if TYPE_CHECKING:
    from ..stages.distill import DistillConfig

log = logging.getLogger(__name__).info


def mutual_loss(
    student_logits: torch.Tensor,
    peer_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 0.5,
    kind: str = "kl",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the student's loss, the peer's loss): each its distillation loss towards the other's detached logits."""
    student = distillation_loss(student_logits, peer_logits.detach(), labels, temperature, alpha, kind, label_smoothing)
    peer = distillation_loss(peer_logits, student_logits.detach(), labels, temperature, alpha, kind, label_smoothing)
    return student, peer


class MutualObjective:
    """The student learns from the labels and the peer, the peer from the labels and the student."""

    def __init__(self, config: DistillConfig, peer: torch.nn.Module, dataset: Dataset, world: World):
        self.config, self.dataset, self.world = config, dataset, world
        self.peer = peer.to(world.device).train()  # not in DistributedDataParallel: Fit averages its gradients
        self.best_val = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self.test_accuracy: float | None = None

    def prepare(self, x_train: torch.Tensor) -> None:
        pass

    def loss(self, model, x, y, indices, augmented):
        logits = model(x)  # through the DistributedDataParallel wrapper, if any: it syncs the student's gradients
        config = self.config
        student, peer = mutual_loss(
            logits, self.peer(x), y, config.temperature, config.alpha, config.loss, config.label_smoothing
        )
        return student + peer, logits

    def parameters(self):
        return list(self.peer.parameters())

    def state_dict(self):
        return {
            "peer": self.peer.state_dict(),
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "history": self.history,
        }

    def load_state_dict(self, state):
        self.peer.load_state_dict(state["peer"])
        self.best_val, self.best_epoch, self.history = state["best_val"], state["best_epoch"], state["history"]
        best = state["best_state"]
        self.best_state = None if best is None else {k: v.to(self.world.device) for k, v in best.items()}

    def end_epoch(self, record, x_val, y_val) -> None:
        """The peer on the validation split: its figure goes in the epoch's record, its best weights are kept."""
        broadcast_buffers(self.peer, self.world)  # every rank evaluates (and rank 0 keeps) the same network
        val = accuracy(self.peer, x_val, y_val, world=self.world, device=self.world.device)
        shown = None if math.isnan(val) else val
        record["teacher_val_accuracy"] = shown
        self.history.append(
            {"epoch": record["epoch"], "val_accuracy": shown, "lr": record["lr"], "seconds": record["seconds"]}
        )
        # as Fit does for the student: without a validation split the last epoch counts as the best
        if math.isnan(val) or val > self.best_val:
            self.best_val, self.best_epoch = val, record["epoch"]
            self.best_state = {k: v.detach().clone() for k, v in self.peer.state_dict().items()}
        val_text = "n/a" if shown is None else f"{100 * val:.2f}%"
        log(f"epoch {record['epoch']}/{self.config.epochs}  teacher (online) val {val_text}")

    def inputs(self) -> list[tuple[str, Path]]:
        return []  # the teacher is an output

    def metrics(self) -> dict[str, Any]:
        """The peer's best weights, measured on the test split (every rank its share)."""
        self.peer.load_state_dict(self.best_state)
        x_test, y_test = torch.from_numpy(self.dataset.x_test), torch.from_numpy(self.dataset.y_test)
        self.test_accuracy = accuracy(self.peer, x_test, y_test, world=self.world, device=self.world.device)
        return {
            "teacher_kind": "online",
            "teacher_test_accuracy": self.test_accuracy,
            "teacher_val_accuracy": None if math.isnan(self.best_val) else self.best_val,
            "online": {"role": "student", "peer": str(Path(self.config.teacher).resolve())},
        }

    def finish(self) -> None:
        """Rank 0 writes the peer's checkpoint and manifest at ``--teacher``."""
        config = self.config
        train_time = sum(record["seconds"] for record in self.history)
        best_val = None if math.isnan(self.best_val) else self.best_val
        metrics = training_metrics(
            self.peer,
            self.dataset,
            {"accuracy": self.test_accuracy},
            {"accuracy": best_val},
            self.best_epoch,
            self.history,
            train_time,
        )
        metrics["online"] = {"role": "teacher", "peer": str(Path(config.out).resolve())}
        self.world.main_does(
            lambda: save_trained(
                config,
                "distill",
                self.peer,
                config.teacher,
                config.teacher_model,
                config.teacher_model_args,
                self.dataset,
                self.world,
                [],
                metrics,
            )
        )


def distill_online(config: DistillConfig) -> dict[str, Any]:
    """Train the student ``config.model`` and the teacher ``config.teacher_model`` together from scratch;
    write the student at ``config.out`` and the teacher at ``config.teacher``. Returns the student's manifest."""
    world = place(config.device)
    dataset = load_dataset(config.data, config.val_fraction, config.split_seed, task=config.task)
    if dataset.task.name != "classification":
        raise CompressError(
            f"online (mutual) distillation is for classifiers; {config.data} is {dataset.task.name}: train a teacher "
            "with compress train, then distil from it"
        )
    torch.manual_seed(config.seed)
    student = build_model(config.model, dataset.in_shape, dataset.num_classes, config.model_args)
    peer = build_model(config.teacher_model, dataset.in_shape, dataset.num_classes, config.teacher_model_args)
    log(
        f"online distillation: {config.teacher_model} learns beside the student from scratch "
        f"(alpha {config.alpha:g}, T {config.temperature:g}) and goes to {config.teacher}"
    )
    objective = MutualObjective(config, peer, dataset, world)
    return Fit(config, "distill", dataset, student, objective, world).run()
