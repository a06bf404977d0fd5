"""Supervised training: a teacher from scratch, for users who do not have one yet."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import load_dataset
from .distill.losses import hard_label_ce
from .loop import Fit, check_config, resolve_device
from .modelspec import build_model


@dataclass
class TrainConfig:
    """Settings of a training run; ``compress distill`` extends them."""

    model: str = "resnet8"
    model_args: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    out: str = "runs/teacher.pt"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9  # sgd only
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # onecycle | cosine | constant (per step)
    label_smoothing: float = 0.0
    augment: str = "none"  # none | shift (random ±2 px shifts on 28x28 images)
    val_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    resume: bool = False


class LabelObjective:
    """Cross-entropy with the true labels (optionally smoothed)."""

    def __init__(self, label_smoothing: float):
        self.label_smoothing = label_smoothing

    def prepare(self, x_train: torch.Tensor) -> None:
        pass

    def loss(self, model, x, y, indices, augmented):
        logits = model(x)
        return hard_label_ce(logits, y, self.label_smoothing), logits

    def parameters(self):
        return []

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def inputs(self) -> list[tuple[str, Path]]:
        return []

    def metrics(self) -> dict[str, Any]:
        return {}

    def finish(self) -> None:
        pass


def train(config: TrainConfig) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data``; write the best-on-validation checkpoint and manifest.

    Returns the manifest (also written beside the checkpoint).
    """
    check_config(config)
    device = resolve_device(config.device)
    dataset = load_dataset(config.data, config.val_fraction, config.split_seed)
    torch.manual_seed(config.seed)
    model = build_model(config.model, dataset.in_shape, dataset.num_classes, config.model_args)
    return Fit(config, "train", dataset, model, LabelObjective(config.label_smoothing), device).run()
