"""Distillation losses as pure tensor functions (no state, no modules)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) between temperature-softened distributions, scaled by T².

    Hinton et al. 2015: the gradients of the soft term scale as 1/T², so multiplying by T²
    keeps its weight against the hard-label term roughly unchanged when T is changed.
    Averaged over the batch.
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def soft_sigmoid_bce(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Multi-label soft targets: binary cross-entropy between the student's and the teacher's per-label
    sigmoid probabilities at ``temperature``, scaled by T² (as ``soft_target_kl``), averaged over all labels
    of all samples."""
    targets = torch.sigmoid(teacher_logits.float() / temperature)
    bce = F.binary_cross_entropy_with_logits(student_logits.float() / temperature, targets)
    return bce * temperature**2


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between raw logits (Ba & Caruana 2014), averaged over all elements."""
    return F.mse_loss(student_logits.float(), teacher_logits.float())


def hard_label_ce(student_logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with the true labels, averaged over the batch."""
    return F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)


def soft_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0, kind: str = "kl"
) -> torch.Tensor:
    """The teacher term alone: ``kind`` "kl" (``soft_target_kl`` at ``temperature``) or "mse" (``logit_mse``)."""
    if kind == "kl":
        return soft_target_kl(student_logits, teacher_logits, temperature)
    if kind == "mse":
        return logit_mse(student_logits, teacher_logits)
    raise ValueError(f"unknown distillation loss {kind!r}")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
    kind: str = "kl",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``alpha * soft + (1 - alpha) * hard``: the soft term is ``kind`` ("kl" or "mse")."""
    soft = soft_loss(student_logits, teacher_logits, temperature, kind)
    if alpha == 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * hard_label_ce(student_logits, labels, label_smoothing)


def hint_loss(projected_student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss: MSE between the projected student feature and the teacher's."""
    return F.mse_loss(projected_student_feature.float(), teacher_feature.float())
