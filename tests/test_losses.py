"""Distillation losses against values computed by hand (plain math, not torch)."""

import math

import pytest
import torch

from compress.distillation.losses import distillation_loss, hard_label_ce, hint_loss, logit_mse, soft_target_kl


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_soft_target_kl_matches_hand_computed_value_scaled_by_t_squared():
    teacher, student, temperature = [2.0, 0.0, -1.0], [0.5, 0.5, 0.0], 2.0
    expected = (
        kl(softmax([t / temperature for t in teacher]), softmax([s / temperature for s in student])) * temperature**2
    )
    got = soft_target_kl(torch.tensor([student]), torch.tensor([teacher]), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_soft_target_kl_is_a_batch_mean_and_zero_for_equal_logits():
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    student = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    # the second row contributes 0, so the mean is half of the first row's value
    first = kl(softmax([2.0 / 4, 0.0]), softmax([0.0, 0.0])) * 16
    assert soft_target_kl(student, teacher, 4.0).item() == pytest.approx(first / 2, rel=1e-6)
    assert soft_target_kl(teacher, teacher, 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_t_squared_keeps_soft_gradients_comparable_across_temperatures():
    # Hinton et al.: at high T the gradient of the unscaled soft loss shrinks as 1/T²;
    # scaled by T² its size stays of the same order.
    teacher = torch.tensor([[3.0, 1.0, -2.0]])
    norms = []
    for temperature in (4.0, 16.0):
        student = torch.zeros(1, 3, requires_grad=True)
        soft_target_kl(student, teacher, temperature).backward()
        norms.append(student.grad.norm().item())
    assert norms[1] / norms[0] == pytest.approx(1.0, rel=0.15)


def test_logit_mse_is_the_mean_over_all_elements():
    assert logit_mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0]])).item() == pytest.approx(4.0)


def test_hard_label_ce_and_label_smoothing():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # probabilities 1/4, 3/4
    assert hard_label_ce(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    # smoothing 0.2 over 2 classes: target (0.1, 0.9)
    expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))
    assert hard_label_ce(logits, torch.tensor([1]), 0.2).item() == pytest.approx(expected, rel=1e-6)


def test_distillation_loss_mixes_soft_and_hard_terms_by_alpha():
    student, teacher, labels = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    soft = kl(softmax([0.5, 0.0]), softmax([0.0, math.log(3.0) / 2])) * 4
    hard = -math.log(0.75)
    got = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.7)
    assert got.item() == pytest.approx(0.7 * soft + 0.3 * hard, rel=1e-6)
    assert distillation_loss(student, teacher, labels, 2.0, alpha=1.0).item() == pytest.approx(soft, rel=1e-6)
    assert distillation_loss(student, teacher, labels, 2.0, alpha=0.0).item() == pytest.approx(hard, rel=1e-6)
    mse = ((0 - 1) ** 2 + (math.log(3.0) - 0) ** 2) / 2
    got_mse = distillation_loss(student, teacher, labels, alpha=0.5, kind="mse")
    assert got_mse.item() == pytest.approx(0.5 * mse + 0.5 * hard, rel=1e-6)


def test_hint_loss_is_mse_of_features():
    student = torch.ones(2, 3, 2, 2)
    teacher = torch.zeros(2, 3, 2, 2)
    teacher[0, 0, 0, 0] = 5.0  # one element differs by 4, the rest by 1
    expected = (16 + 23 * 1) / 24
    assert hint_loss(student, teacher).item() == pytest.approx(expected)
