"""Adversarially robust distillation (``--adversarial``) and robustness measured under attack (``--eval-attack``)."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import compress
from compress.artifacts import load_checkpoint, manifest_path, resume_path
from compress.data import Dataset, Preprocessing
from compress.distillation.adversarial import evaluating, fgsm, input_bounds, pgd
from compress.distillation.losses import soft_loss
from compress.distillation.objective import DistillObjective
from compress.distillation.teachers import Teacher
from compress.distributed import SINGLE
from compress.errors import CompressError
from compress.loop import Fit
from compress.modelspec import model_from_checkpoint
from compress.stages.distill import DistillConfig


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def linear(weight):
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


def tiny_dataset(preprocessing):
    x, y = np.zeros((4, 2), dtype=np.float32), np.zeros(4, dtype=np.int64)
    return Dataset("npz:tiny", "tiny", ["0", "1"], (2,), preprocessing, x, y, x, y, x, y, "0" * 64, [], 0.0, 0)


def tiny_loss(**settings):
    """The distillation objective's loss at x = (0.5, 0.5), label 1, with FGSM of ε 0.25 and weight 2: student
    logits = x, teacher logits = (2 x1 + 2 x2, 0) = (2, 0). Returns (loss, clean logits, the student's modes at
    each forward, the student)."""
    student, teacher = linear([[1.0, 0.0], [0.0, 1.0]]), linear([[2.0, 2.0], [0.0, 0.0]])
    config = DistillConfig(
        teacher="t.pt", out="s.pt", alpha=0.5, adversarial="fgsm", adv_eps=0.25, adv_weight=2.0, **settings
    )
    preprocessing = Preprocessing("NF", 1 / 255, [0.0, 0.0], [1.0, 1.0])  # inputs in [0, 1]
    objective = DistillObjective(
        config, Teacher(Path("t.pt"), "checkpoint", module=teacher.eval()), student, tiny_dataset(preprocessing), SINGLE
    )
    modes = []
    student.register_forward_pre_hook(lambda module, _: modes.append(module.training))
    x, y = torch.tensor([[0.5, 0.5]]), torch.tensor([1])
    loss, logits = objective.loss(student, x, y, torch.tensor([0]), augmented=False)
    return loss, logits, modes, student


def test_the_adversarial_term_matches_a_hand_computed_value():
    loss, logits, modes, student = tiny_loss(temperature=2.0)

    p_teacher = softmax([2 / 2, 0.0])
    clean = 0.5 * 4 * kl(p_teacher, softmax([0.25, 0.25])) + 0.5 * math.log(2)
    # d KL / d x = (softmax(x / T) - p_teacher) / T has the signs (-, +): FGSM moves x to (0.25, 0.75)
    adversarial = 4 * kl(p_teacher, softmax([0.25 / 2, 0.75 / 2]))
    assert loss.item() == pytest.approx(clean + 2.0 * adversarial, rel=1e-6)
    assert logits.tolist() == [[0.5, 0.5]]  # the clean logits, for the training accuracy
    assert modes == [True, False, True]  # the attack ran in eval mode, the adversarial term in training mode
    assert all(p.grad is None for p in student.parameters())  # the attack differentiated the inputs alone


def test_with_loss_mse_the_adversarial_term_is_the_logit_mse():
    loss, _, _, _ = tiny_loss(loss="mse")
    clean = 0.5 * ((0.5 - 2) ** 2 + 0.5**2) / 2 + 0.5 * math.log(2)
    # d MSE / d x = (x - (2, 0)) has the signs (-, +): FGSM moves x to (0.25, 0.75)
    adversarial = ((0.25 - 2) ** 2 + 0.75**2) / 2
    assert loss.item() == pytest.approx(clean + 2.0 * adversarial, rel=1e-6)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))


@pytest.fixture
def images():
    """Normalised 8x8 images whose raw pixels are half 0 (the lower bound) and half mid-grey."""
    preprocessing = Preprocessing("NCHW", 1 / 255, [0.2], [0.3])
    rng = np.random.default_rng(0)
    raw = np.where(rng.random((16, 1, 8, 8)) < 0.5, 0, 128).astype(np.uint8)
    return torch.from_numpy(preprocessing.apply(raw)), preprocessing


def cross_entropy(labels):
    return lambda logits: nn.functional.cross_entropy(logits, labels, reduction="sum")


def test_input_bounds_are_the_image_of_the_pixel_range_and_unknown_at_scale_1(images):
    _, preprocessing = images
    low, high = input_bounds(preprocessing)
    assert low.shape == (1, 1, 1, 1)
    assert low.item() == pytest.approx(-0.2 / 0.3) and high.item() == pytest.approx(0.8 / 0.3)
    features = input_bounds(Preprocessing("NF", 1 / 16, [0.5, 0.25], [0.5, 0.25]))
    assert features[0].tolist() == [[-1.0, -1.0]] and features[1].tolist() == [[1.0, 3.0]]
    assert input_bounds(Preprocessing("NF", 1.0, [0.0], [1.0])) is None  # raw values: range unknown


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_attacks_stay_within_eps_and_the_valid_range(images, attack):
    x, preprocessing = images
    model, labels, eps = small_cnn().eval(), torch.arange(16) % 10, 0.5
    bounds = input_bounds(preprocessing)

    def run(bounds):
        if attack == "fgsm":
            return fgsm(model, x, cross_entropy(labels), eps, bounds)
        return pgd(model, x, cross_entropy(labels), eps, steps=5, step_size=0.2, bounds=bounds)

    x_adv = run(bounds)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert (x_adv >= bounds[0] - 1e-6).all() and (x_adv <= bounds[1] + 1e-6).all()
    assert (x_adv - x).abs().max() > eps / 2  # it moved
    # without the bounds the attack pushes black pixels below black: the clamp above did something
    assert (run(None) < bounds[0] - 1e-3).any()
    assert all(p.grad is None for p in model.parameters())


def test_fgsm_moves_each_input_by_eps_along_the_sign_of_the_gradient(images):
    x, _ = images
    model, labels = small_cnn().eval(), torch.arange(16) % 10
    probe = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(cross_entropy(labels)(model(probe)), probe)
    x_adv = fgsm(model, x, cross_entropy(labels), 0.1)
    assert (grad != 0).float().mean() > 0.5
    torch.testing.assert_close(x_adv - x, 0.1 * grad.sign(), atol=1e-6, rtol=0)


def test_pgd_increases_the_student_teacher_divergence_beyond_fgsm_and_the_clean_input(images):
    x, preprocessing = images
    student = small_cnn().eval()
    torch.manual_seed(1)
    teacher_logits = torch.randn(16, 10)

    def divergence(logits):
        return soft_loss(logits, teacher_logits, temperature=4.0)

    bounds = input_bounds(preprocessing)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        clean = divergence(student(x)).item()
        one_step = divergence(student(fgsm(student, x, divergence, 0.3, bounds))).item()
        many_steps = divergence(student(pgd(student, x, divergence, 0.3, 10, 0.075, bounds, generator))).item()
    assert clean < one_step < many_steps


def test_evaluating_restores_the_mode_and_attacks_leave_batch_norm_statistics_alone(images):
    x, _ = images
    model = small_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with evaluating(model):
        pgd(model, x, cross_entropy(torch.arange(16) % 10), 0.3, 3, 0.25)
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# -- end to end on the digits ---------------------------------------------------------------------------------

STUDENT = ["--model", "cnn", "--model-arg", "channels=4,8", "--model-arg", "hidden=16"]


@pytest.fixture(scope="module")
def teacher_pt(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    compress.train(model="resnet8", model_args={"width": 4}, data="digits", out=str(out), epochs=2, device="cpu")
    return out


def cli(capsys, *args):
    from test_cli import run_cli

    return run_cli(capsys, "distill", "--data", "digits", "--device", "cpu", *args)


@pytest.mark.slow
def test_adversarial_distillation_writes_the_robustness_record_and_says_it(tmp_path, teacher_pt, capsys):
    out = tmp_path / "student.pt"
    status, stdout, err = cli(
        capsys,
        "--teacher",
        str(teacher_pt),
        *STUDENT,
        "--epochs",
        "2",
        "--adversarial",
        "pgd",
        "--adv-eps",
        "0.5",
        "--adv-steps",
        "2",
        "--eval-attack",
        "fgsm,pgd",
        "--eval-samples",
        "120",
        "--out",
        str(out),
    )
    assert status == 0, err
    manifest = json.loads(manifest_path(out).read_text())
    config, records = manifest["config"], manifest["metrics"]["robustness"]
    # defaults filled in and recorded: Madry's step 2.5 ε / steps; evaluation at the training ε and steps
    assert (config["adv_step_size"], config["adv_weight"]) == (pytest.approx(0.625), 1.0)
    assert (config["eval_eps"], config["eval_steps"]) == (0.5, 2)
    assert [r["attack"] for r in records] == ["fgsm", "pgd"]
    std = manifest["preprocessing"]["std"][0]
    for record in records:
        assert record["samples"] == 120 and record["split"] == "test" and record["clamped_to_input_range"]
        assert record["eps_before_normalisation"] == [pytest.approx(0.5 * std)]
        for model in ("student", "teacher"):
            clean, attacked = record[model]["clean_accuracy"], record[model]["attacked_accuracy"]
            assert 0 <= attacked < clean <= 1
            assert (clean * 120).is_integer() and (attacked * 120).is_integer()
    assert records[1]["steps"] == 2 and records[1]["step_size"] == pytest.approx(0.625)
    assert "robustness under FGSM, ε 0.5" in stdout and "robustness under PGD-2, ε 0.5" in stdout
    assert "; teacher " in stdout


@pytest.mark.slow
def test_the_student_alone_is_measured_alike_and_a_torchscript_teacher_is_attacked(tmp_path, teacher_pt, capsys):
    model = model_from_checkpoint(load_checkpoint(teacher_pt), teacher_pt).eval()
    scripted = tmp_path / "teacher.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, torch.zeros(2, 1, 8, 8)), str(scripted))
    common = ["--epochs", "1", "--alpha", "0", "--eval-attack", "fgsm", "--eval-eps", "0.4", *STUDENT]
    records = []
    for teacher, name in ((teacher_pt, "alone.pt"), (scripted, "alone_ts.pt")):
        status, _, err = cli(
            capsys, "--teacher", str(teacher), "--preprocessing", "fit", *common, "--out", str(tmp_path / name)
        )
        assert status == 0, err
        manifest = json.loads(manifest_path(tmp_path / name).read_text())
        assert manifest["config"]["adversarial"] == "none" and manifest["config"]["eval_steps"] is None
        (record,) = manifest["metrics"]["robustness"]
        assert record["samples"] == manifest["data"]["sizes"]["test"]  # all of them by default
        assert record["student"]["clean_accuracy"] == manifest["metrics"]["test_accuracy"]
        records.append(record)
    # FGSM is deterministic: the traced teacher is the checkpoint's network, attacked alike
    assert records[1]["teacher"] == records[0]["teacher"]
    assert records[0]["teacher"]["attacked_accuracy"] < records[0]["teacher"]["clean_accuracy"]


@pytest.mark.slow
def test_an_onnx_teacher_is_not_attacked_and_the_record_says_why(tmp_path, teacher_pt, capsys):
    model = model_from_checkpoint(load_checkpoint(teacher_pt), teacher_pt).eval()
    onnx_teacher = tmp_path / "teacher.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(onnx_teacher),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}},
            dynamo=False,
        )
    out = tmp_path / "student.pt"
    status, stdout, err = cli(
        capsys,
        "--teacher",
        str(onnx_teacher),
        "--preprocessing",
        "fit",
        *STUDENT,
        "--epochs",
        "1",
        "--adversarial",
        "fgsm",
        "--adv-eps",
        "0.3",
        "--eval-attack",
        "pgd",
        "--eval-samples",
        "50",
        "--out",
        str(out),
    )
    assert status == 0, err
    (record,) = json.loads(manifest_path(out).read_text())["metrics"]["robustness"]
    assert record["attack"] == "pgd" and record["steps"] == 10  # FGSM training: PGD's default steps
    assert record["teacher"] is None
    assert "ONNX Runtime" in record["teacher_not_attacked"] and "gradients" in record["teacher_not_attacked"]
    assert record["student"]["clean_accuracy"] > 0
    assert "teacher not attacked (ONNX Runtime gives no input gradients)" in stdout


@pytest.mark.slow
def test_an_interrupted_adversarial_run_resumes_to_the_same_student(tmp_path, teacher_pt, monkeypatch):
    settings = dict(
        teacher=str(teacher_pt),
        data="digits",
        model="cnn",
        model_args={"channels": [4, 8], "hidden": 16},
        epochs=2,
        device="cpu",
        adversarial="pgd",
        adv_eps=0.3,
        adv_steps=2,
    )
    compress.distill(out=str(tmp_path / "straight.pt"), **settings)
    with monkeypatch.context() as patch:
        original = Fit._train_one_epoch

        def train_or_interrupt(self):
            if self.epoch == 1:
                raise KeyboardInterrupt
            original(self)

        patch.setattr(Fit, "_train_one_epoch", train_or_interrupt)
        with pytest.raises(KeyboardInterrupt):
            compress.distill(out=str(tmp_path / "resumed.pt"), **settings)
    assert resume_path(tmp_path / "resumed.pt").exists()
    compress.distill(out=str(tmp_path / "resumed.pt"), resume=True, **settings)
    straight, resumed = (load_checkpoint(tmp_path / n)["state_dict"] for n in ("straight.pt", "resumed.pt"))
    for key in straight:  # PGD's random starts come from the random state the resume state restores
        assert torch.equal(straight[key], resumed[key]), key


@pytest.mark.slow
def test_adversarial_distillation_on_two_processes_steps_as_one(tmp_path):
    from sklearn.datasets import load_digits
    from test_distributed import assert_close_weights, run_distributed

    # a training split the global batch divides (no sampler padding, equal slices), as test_distributed's
    x, y = load_digits(return_X_y=True)
    x = (x.reshape(-1, 1, 8, 8) * 16).clip(0, 255).astype(np.uint8)
    np.savez(tmp_path / "digits.npz", x_train=x[:1024], y_train=y[:1024], x_test=x[1024:1536], y_test=y[1024:1536])
    data, teacher = f"npz:{tmp_path / 'digits.npz'}", tmp_path / "teacher.pt"
    common = dict(data=data, batch_size=64, val_fraction=0.25, device="cpu")
    compress.train(out=str(teacher), model="mlp", model_args={"hidden": [64]}, epochs=1, **common)
    # FGSM has no random start: each sample's perturbation depends on that sample alone, whichever rank has it
    settings = dict(
        teacher=str(teacher),
        model="mlp",
        model_args={"hidden": [16]},
        epochs=2,
        adversarial="fgsm",
        adv_eps=0.3,
        **common,
    )
    one = compress.distill(out=str(tmp_path / "one.pt"), **settings)
    run_distributed("distill", out=str(tmp_path / "two.pt"), **settings)
    assert_close_weights(tmp_path / "one.pt", tmp_path / "two.pt", atol=1e-5)
    two = json.loads(manifest_path(tmp_path / "two.pt").read_text())
    # each process attacked its block of the test split, the counts summed: every sample counted once
    assert two["metrics"]["robustness"] == one["metrics"]["robustness"]
    assert one["metrics"]["robustness"][0]["samples"] == 512


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--adversarial", "pgd", "--adv-eps", "0"], "--adv-eps must be greater than 0, got 0.0"),
        (["--adversarial", "pgd", "--adv-eps", "-0.1"], "--adv-eps must be greater than 0, got -0.1"),
        (["--adversarial", "pgd"], "--adversarial pgd needs --adv-eps, the size of the perturbations"),
        (["--adv-steps", "5"], "--adv-steps is a setting of --adversarial training: add --adversarial pgd or fgsm"),
        (["--adv-eps", "0.3"], "--adv-eps is a setting of --adversarial training"),
        (
            ["--adversarial", "fgsm", "--adv-eps", "0.3", "--adv-steps", "3"],
            "--adv-steps is a setting of --adversarial pgd; FGSM takes one step of --adv-eps",
        ),
        (["--adversarial", "pgd", "--adv-eps", "0.3", "--adv-steps", "0"], "--adv-steps must be at least 1, got 0"),
        (["--eval-attack", "pgd"], "--eval-attack needs --eval-eps"),
        (["--eval-eps", "0.3"], "--eval-eps is a setting of --eval-attack: add --eval-attack pgd or fgsm"),
        (
            ["--eval-attack", "fgsm", "--eval-eps", "0.3", "--eval-steps", "3"],
            "--eval-steps is a setting of the pgd attack: add pgd to --eval-attack",
        ),
        (["--eval-attack", "cw", "--eval-eps", "0.3"], "--eval-attack[0] must be 'fgsm' or 'pgd', got 'cw'"),
        (["--adversarial", "pgd", "--adv-eps", "nan"], "--adv-eps must be a finite number, got nan"),
    ],
)
def test_bad_attack_settings_are_one_line_naming_the_flag_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "s.pt"
    status, _, err = cli(capsys, "--teacher", str(tmp_path / "missing.pt"), "--out", str(out), *flags)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert not out.exists()


def test_the_python_api_names_the_keyword():
    with pytest.raises(CompressError, match="adv_steps= is a setting of adversarial= training"):
        compress.distill(teacher="t.pt", out="s.pt", adv_steps=3)
