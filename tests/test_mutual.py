"""Online (mutual) distillation: ``compress distill --online`` trains the teacher beside the student."""

import json
import math

import numpy as np
import pytest
import torch
from test_cli import run_cli
from test_train_distill import assert_same_weights, interrupt_after, weights

import compress
from compress.artifacts import load_checkpoint, resume_path
from compress.data import load_dataset
from compress.distillation.mutual import MutualObjective, mutual_loss
from compress.distributed import SINGLE
from compress.errors import CompressError
from compress.modelspec import build_model
from compress.stages.distill import DistillConfig

SMALL = dict(
    online=True,
    teacher_model="mlp",
    teacher_model_args={"hidden": [32]},
    model="mlp",
    model_args={"hidden": [16]},
    data="digits",
    epochs=2,
    device="cpu",
)
STUDENT = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=np.float32)
PEER = np.array([[0.5, 1.5, -0.5], [1.0, 0.0, 2.0]], dtype=np.float32)
LABELS = [1, 2]


def by_hand(own: np.ndarray, other: np.ndarray, temperature: float, alpha: float) -> float:
    """(1 - alpha) CE(own, y) + alpha T² KL(softmax(other / T) || softmax(own / T)), batch means, in plain math."""

    def softmax(row, t):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    ce = sum(-math.log(softmax(row, 1.0)[label]) for row, label in zip(own, LABELS)) / len(LABELS)
    kl = 0.0
    for mine, theirs in zip(own, other):
        q, p = softmax(mine, temperature), softmax(theirs, temperature)
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    return (1 - alpha) * ce + alpha * temperature**2 * kl / len(LABELS)


@pytest.mark.parametrize(
    "temperature, alpha, student, peer", [(2.0, 0.3, 0.26034401, 0.35448961), (1.0, 0.5, 0.21744906, 0.26069312)]
)
def test_mutual_loss_is_each_networks_distillation_loss_towards_the_other(temperature, alpha, student, peer):
    s, p, y = torch.tensor(STUDENT), torch.tensor(PEER), torch.tensor(LABELS)
    student_loss, peer_loss = mutual_loss(s, p, y, temperature, alpha)
    assert student_loss.item() == pytest.approx(by_hand(STUDENT, PEER, temperature, alpha), rel=1e-6)
    assert peer_loss.item() == pytest.approx(by_hand(PEER, STUDENT, temperature, alpha), rel=1e-6)
    assert (student_loss.item(), peer_loss.item()) == pytest.approx((student, peer), rel=1e-6)


def test_each_loss_reaches_only_its_own_network_and_the_targets_get_no_gradient():
    s = torch.tensor(STUDENT, requires_grad=True)
    p = torch.tensor(PEER, requires_grad=True)
    student_loss, peer_loss = mutual_loss(s, p, torch.tensor(LABELS))
    grad_s, grad_p = torch.autograd.grad(student_loss, [s, p], retain_graph=True, allow_unused=True)
    assert grad_s.abs().sum() > 0 and grad_p is None  # the peer's logits are the student's target, detached
    grad_s, grad_p = torch.autograd.grad(peer_loss, [s, p], allow_unused=True)
    assert grad_p.abs().sum() > 0 and grad_s is None


def test_one_optimiser_step_trains_both_networks_each_from_its_own_term(tmp_path):
    dataset = load_dataset("digits")
    config = DistillConfig(**SMALL, teacher=str(tmp_path / "t.pt"), out=str(tmp_path / "s.pt"))
    torch.manual_seed(0)
    student = build_model("mlp", dataset.in_shape, dataset.num_classes, config.model_args)
    peer = build_model("mlp", dataset.in_shape, dataset.num_classes, config.teacher_model_args)
    objective = MutualObjective(config, peer, dataset, SINGLE)
    assert {id(q) for q in objective.parameters()} == {id(q) for q in peer.parameters()}
    x, y = torch.from_numpy(dataset.x_train[:32]), torch.from_numpy(dataset.y_train[:32])

    # each network's gradient comes from its own loss alone: the other's logits are a fixed target
    student_loss, peer_loss = mutual_loss(student(x), peer(x), y, config.temperature, config.alpha)
    own = torch.autograd.grad(student_loss, list(student.parameters()), retain_graph=True)
    theirs = torch.autograd.grad(peer_loss, list(peer.parameters()))
    assert torch.autograd.grad(student_loss, list(peer.parameters()), allow_unused=True) == (None,) * len(theirs)

    before = [q.detach().clone() for q in [*student.parameters(), *peer.parameters()]]
    optimizer = torch.optim.SGD([*student.parameters(), *objective.parameters()], lr=0.1)
    loss, logits = objective.loss(student, x, y, torch.arange(32), False)
    assert loss.item() == pytest.approx((student_loss + peer_loss).item()) and torch.equal(logits, student(x))
    loss.backward()
    for parameter, grad in zip([*student.parameters(), *peer.parameters()], [*own, *theirs]):
        torch.testing.assert_close(parameter.grad, grad)
    optimizer.step()
    for old, new in zip(before, [*student.parameters(), *peer.parameters()]):
        assert not torch.equal(old, new)


@pytest.mark.slow
def test_online_distillation_writes_both_and_the_teacher_serves_as_any_teacher(tmp_path, capsys):
    student, teacher = tmp_path / "student.pt", tmp_path / "teacher.pt"
    # a resnet teacher: its batch-norm statistics are kept and written with its best weights
    status, out, err = run_cli(
        capsys,
        "distill",
        "--online",
        "--teacher-model",
        "resnet8",
        "--teacher-model-arg",
        "width=8",
        "--teacher",
        str(teacher),
        "--model",
        "mlp",
        "--model-arg",
        "hidden=32",
        "--epochs",
        "3",
        "--device",
        "cpu",
        "--out",
        str(student),
    )
    assert status == 0, err
    assert "teacher (trained beside the student): test accuracy" in out
    for path in (student, teacher):
        assert f"wrote {path}\n" in out and f"wrote {path}.json\n" in out
    mine, peer = (json.loads(path.with_name(path.name + ".json").read_text()) for path in (student, teacher))
    assert peer["stage"] == "distill" and peer["model"]["spec"] == "resnet8" and peer["model"]["args"] == {"width": 8}
    assert load_checkpoint(teacher)["model_spec"] == "resnet8"
    assert peer["inputs"] == [] and mine["inputs"] == []  # nothing was read: the teacher is an output
    assert peer["preprocessing"] == mine["preprocessing"]
    history = [epoch["val_accuracy"] for epoch in peer["metrics"]["history"]]
    assert len(history) == 3 and peer["metrics"]["best_epoch"] == 1 + history.index(max(history))
    assert [epoch["teacher_val_accuracy"] for epoch in mine["metrics"]["history"]] == history
    assert mine["config"]["online"] and (mine["config"]["alpha"], mine["config"]["temperature"]) == (0.5, 1.0)
    assert mine["metrics"]["teacher_kind"] == "online"
    assert mine["metrics"]["teacher_test_accuracy"] == peer["metrics"]["test_accuracy"] > 0.5
    assert mine["metrics"]["online"] == {"role": "student", "peer": str(teacher)}
    assert peer["metrics"]["online"] == {"role": "teacher", "peer": str(student)}

    # the teacher is a checkpoint like any other: a normal distillation measures it as recorded, export takes it
    again = compress.distill(
        teacher=str(teacher), out=str(tmp_path / "again.pt"), model_args={"hidden": [16]}, epochs=1, device="cpu"
    )
    assert again["inputs"][0]["role"] == "teacher" and again["metrics"]["teacher_kind"] == "checkpoint"
    assert again["metrics"]["teacher_test_accuracy"] == peer["metrics"]["test_accuracy"]
    exported = compress.export(str(teacher), out=str(tmp_path / "teacher.onnx"))
    assert exported["parity"]["top1_agreement"] == 1.0


@pytest.mark.slow
def test_an_interrupted_online_run_resumes_to_the_same_weights_for_both(tmp_path, monkeypatch):
    settings = {
        **SMALL,
        "epochs": 3,
        "model_args": {"hidden": [16], "dropout": 0.3},  # random draws in both networks: resumed with the run
        "teacher_model_args": {"hidden": [32], "dropout": 0.3},
    }
    (tmp_path / "straight").mkdir()
    (tmp_path / "resumed").mkdir()

    def run(folder, **extra):
        folder = tmp_path / folder
        return compress.distill(out=str(folder / "s.pt"), teacher=str(folder / "t.pt"), **settings, **extra)

    run("straight")
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            run("resumed")
    assert resume_path(tmp_path / "resumed" / "s.pt").exists()
    assert not (tmp_path / "resumed" / "s.pt").exists() and not (tmp_path / "resumed" / "t.pt").exists()
    with pytest.raises(CompressError, match="settings differ.*teacher_model_args"):
        compress.distill(
            out=str(tmp_path / "resumed" / "s.pt"),
            teacher=str(tmp_path / "resumed" / "t.pt"),
            resume=True,
            **{**settings, "teacher_model_args": {"hidden": [48], "dropout": 0.3}},
        )
    manifest = run("resumed", resume=True)
    for name in ("s.pt", "t.pt"):
        assert_same_weights(weights(tmp_path / "straight" / name), weights(tmp_path / "resumed" / name))
    assert len(manifest["metrics"]["history"]) == 3
    peer = json.loads((tmp_path / "resumed" / "t.pt.json").read_text())
    straight = json.loads((tmp_path / "straight" / "t.pt.json").read_text())
    assert [e["val_accuracy"] for e in peer["metrics"]["history"]] == [
        e["val_accuracy"] for e in straight["metrics"]["history"]
    ]
    assert not resume_path(tmp_path / "resumed" / "s.pt").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--teacher-model-arg", "width=8"], "--teacher-model-arg are for the teacher that --online trains"),
        (
            ["--online"],
            "--online trains the teacher beside the student from scratch: name its network with --teacher-model",
        ),
        (
            ["--online", "--teacher-model", "mlp", "--teacher", "t.onnx"],
            "--teacher is the checkpoint the teacher is written to and must end in .pt",
        ),
        (
            ["--online", "--teacher-model", "mlp", "--teacher-outputs", "probs"],
            "--teacher-outputs is for distilling from a trained teacher",
        ),
        (
            ["--online", "--teacher-model", "mlp", "--preprocessing", "fit"],
            "--preprocessing is for distilling from a trained teacher",
        ),
        (
            ["--online", "--teacher-model", "mlp", "--hint", "fc1:fc1"],
            "--hint is for distilling from a trained teacher",
        ),
        (["--online", "--teacher-model", "mlp", "--teacher-cache", "disk"], "--teacher-cache is for distilling"),
        (["--online", "--teacher-model", "mlp", "--trust-model-code"], "--trust-model-code is for distilling"),
        (
            ["--online", "--teacher-model", "mlp", "--eval-attack", "fgsm", "--eval-eps", "0.1"],
            "--eval-attack is not available with --online",
        ),
        (
            ["--online", "--teacher-model", "mlp", "--alpha", "1"],
            "--alpha 1 with --online leaves both networks without the labels",
        ),
        (
            ["--online", "--teacher-model", "mlp", "--teacher", "OUT"],
            "is also --out; give each output a file of its own",
        ),
        (["--online", "--teacher-model", "mlp", "--teacher", "FOLDER"], "a folder is in the way"),
    ],
)
def test_bad_online_settings_are_one_line_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "s.pt"
    (tmp_path / "folder.pt").mkdir()
    named = {"OUT": str(out), "FOLDER": str(tmp_path / "folder.pt"), "t.onnx": str(tmp_path / "t.onnx")}
    flags = [named.get(flag, flag) for flag in flags]
    if "--teacher" not in flags:
        flags += ["--teacher", str(tmp_path / "t.pt")]
    status, _, err = run_cli(capsys, "distill", "--data", "digits", "--out", str(out), *flags)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.pt"]


def test_a_recipe_refuses_online_in_its_student_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.toml").write_text("[student]\nonline = true\nteacher_model_args = { width = 8 }\n")
    status, _, err = run_cli(capsys, "run", "recipe.toml")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "line 2: [student] online is for compress distill --online, which trains its own teacher" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_processes_train_both_networks_as_one_process_does(tmp_path, digits_npz):
    from test_distributed import assert_close_weights, run_distributed

    settings = {**SMALL, "data": digits_npz, "batch_size": 64, "val_fraction": 0.25}
    one = compress.distill(out=str(tmp_path / "one.pt"), teacher=str(tmp_path / "one_t.pt"), **settings)
    run_distributed("distill", out=str(tmp_path / "two.pt"), teacher=str(tmp_path / "two_t.pt"), **settings)
    # the teacher's gradients are averaged over the processes like the student's (DistributedDataParallel)
    assert_close_weights(tmp_path / "one.pt", tmp_path / "two.pt", atol=1e-5)
    assert_close_weights(tmp_path / "one_t.pt", tmp_path / "two_t.pt", atol=1e-5)
    two = json.loads((tmp_path / "two.pt.json").read_text())
    assert two["training"]["world_size"] == 2
    assert two["metrics"]["teacher_test_accuracy"] == one["metrics"]["teacher_test_accuracy"]


@pytest.mark.slow
def test_a_batch_norm_teacher_on_two_processes_is_measured_as_it_is_written(tmp_path, digits_npz):
    from test_distributed import run_distributed

    settings = {**SMALL, "teacher_model": "resnet8", "teacher_model_args": {"width": 4}, "data": digits_npz}
    settings.update(batch_size=64, val_fraction=0.25)
    teacher = tmp_path / "t.pt"
    run_distributed("distill", out=str(tmp_path / "s.pt"), teacher=str(teacher), **settings)
    recorded = json.loads((tmp_path / "t.pt.json").read_text())["metrics"]["test_accuracy"]
    # each process gathers its own batch-norm statistics: rank 0's, which it writes, are the ones every rank
    # evaluates, so the accuracy recorded is the written network's
    again = compress.distill(
        teacher=str(teacher), data=digits_npz, out=str(tmp_path / "again.pt"), epochs=1, device="cpu"
    )
    assert again["metrics"]["teacher_test_accuracy"] == recorded
