"""``compress train`` and ``compress distill`` end to end on the built-in digits data."""

import json
import warnings

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from compress.artifacts import load_checkpoint, manifest_path, resume_path
from compress.distillation import teachers
from compress.errors import CompressError
from compress.loop import Fit
from compress.modelspec import model_from_checkpoint
from compress.stages.distill import DistillConfig, distill
from compress.stages.train import TrainConfig, train

pytestmark = pytest.mark.slow  # trains, exports, quantizes or times real models

SMALL_MLP = {"hidden": [64]}


def distill_config(tmp_path, teacher_path, name="student.pt", **overrides):
    settings = dict(
        teacher=str(teacher_path),
        model="mlp",
        model_args=SMALL_MLP,
        data="digits",
        out=str(tmp_path / name),
        epochs=2,
        device="cpu",
    )
    settings.update(overrides)
    return DistillConfig(**settings)


def weights(path):
    return load_checkpoint(path)["state_dict"]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0)


@pytest.fixture(scope="module")
def teacher_pt(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    train(TrainConfig(model="resnet8", model_args={"width": 8}, data="digits", out=str(out), epochs=3, device="cpu"))
    return out


@pytest.fixture(scope="module")
def teacher_onnx(teacher_pt):
    """The teacher exported to ONNX without a manifest: a black box that gives logits only."""
    model = model_from_checkpoint(load_checkpoint(teacher_pt), teacher_pt)
    path = teacher_pt.with_name("teacher_export.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}},
            dynamo=False,
        )
    return path


def test_train_writes_checkpoint_and_manifest(teacher_pt):
    manifest = json.loads(manifest_path(teacher_pt).read_text())
    metrics = manifest["metrics"]
    assert manifest["stage"] == "train"
    assert metrics["test_accuracy"] > 0.85
    assert metrics["params"] == sum(
        v.numel() for k, v in weights(teacher_pt).items() if "running" not in k and "num_batches" not in k
    )
    assert metrics["train_time_s"] > 0 and len(metrics["history"]) == 3
    assert manifest["config"]["model"] == "resnet8" and manifest["config"]["epochs"] == 3
    assert manifest["input_spec"]["shape"] == [None, 1, 8, 8]
    assert manifest["labels"] == [str(i) for i in range(10)]
    assert manifest["preprocessing"]["layout"] == "NCHW"
    assert manifest["sha256"] and manifest["size_bytes"] == teacher_pt.stat().st_size
    assert not resume_path(teacher_pt).exists()


def test_training_is_deterministic_on_cpu(tmp_path):
    runs = []
    for name in ("a.pt", "b.pt"):
        train(
            TrainConfig(
                model="mlp",
                model_args={"hidden": [32], "dropout": 0.2},
                out=str(tmp_path / name),
                epochs=2,
                augment="shift",
                device="cpu",
            )
        )
        runs.append(weights(tmp_path / name))
    assert_same_weights(*runs)


def test_distill_from_checkpoint_teacher(tmp_path, teacher_pt):
    manifest = distill(distill_config(tmp_path, teacher_pt, epochs=5, lr=1e-2))
    metrics = manifest["metrics"]
    assert manifest["stage"] == "distill"
    assert metrics["test_accuracy"] > 0.85
    assert metrics["teacher_test_accuracy"] > 0.85
    assert metrics["teacher_cache"] == "memory"
    assert manifest["inputs"][0]["role"] == "teacher"
    assert manifest["config"]["temperature"] == 4.0 and manifest["config"]["alpha"] == 0.9
    teacher_manifest = json.loads(manifest_path(teacher_pt).read_text())
    assert manifest["preprocessing"] == teacher_manifest["preprocessing"]


def test_distill_from_onnx_teacher_with_student_from_file(tmp_path, teacher_onnx):
    models_file = tmp_path / "my_models.py"
    models_file.write_text(
        "import torch.nn as nn\n"
        "def tiny_cnn(in_shape, num_classes, width=8):\n"
        "    return nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, num_classes))\n"
    )
    manifest = distill(
        distill_config(
            tmp_path,
            teacher_onnx,
            model=f"{models_file}:tiny_cnn",
            model_args={"width": 16},
            epochs=3,
            lr=1e-2,
            preprocessing="fit",
        )
    )
    assert manifest["metrics"]["teacher_kind"] == "onnx"
    assert manifest["metrics"]["teacher_test_accuracy"] > 0.85
    assert manifest["metrics"]["test_accuracy"] > 0.5
    assert manifest["model"]["spec"] == f"{models_file.resolve()}:tiny_cnn"


def test_distill_from_torchscript_teacher(tmp_path, teacher_pt):
    model = model_from_checkpoint(load_checkpoint(teacher_pt), teacher_pt)
    path = tmp_path / "teacher.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model.eval(), torch.zeros(2, 1, 8, 8)), str(path))
    manifest = distill(distill_config(tmp_path, path, epochs=1, preprocessing="fit"))
    assert manifest["metrics"]["teacher_kind"] == "torchscript"
    assert manifest["metrics"]["teacher_test_accuracy"] > 0.85


def test_hint_distillation_trains_a_projection_and_changes_the_student(tmp_path, teacher_pt):
    student = dict(model="cnn", model_args={"channels": [8, 16], "hidden": 32}, epochs=4, lr=1e-2)
    plain = distill(distill_config(tmp_path, teacher_pt, "plain.pt", **student))
    hinted = distill(
        distill_config(tmp_path, teacher_pt, "hinted.pt", hints=["layer2:block2", "fc:head"], beta=0.5, **student)
    )
    assert hinted["config"]["hints"] == ["layer2:block2", "fc:head"]
    assert hinted["metrics"]["test_accuracy"] > 0.5
    assert plain["metrics"]["history"][0]["loss"] != hinted["metrics"]["history"][0]["loss"]
    # the projections are training aids: the student's checkpoint holds the student alone
    assert weights(tmp_path / "plain.pt").keys() == weights(tmp_path / "hinted.pt").keys()


def test_hints_need_a_teacher_with_reachable_layers(tmp_path, teacher_onnx):
    with pytest.raises(CompressError, match="logits only"):
        distill(distill_config(tmp_path, teacher_onnx, hints=["layer2:fc1"], preprocessing="fit"))


def test_unknown_hint_layer_is_named(tmp_path, teacher_pt):
    with pytest.raises(CompressError, match="'nope' not found.*--list-layers"):
        distill(distill_config(tmp_path, teacher_pt, hints=["nope:fc1"]))


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_teacher_cache_gives_the_same_student_as_running_the_teacher(tmp_path, teacher_pt, mode):
    distill(distill_config(tmp_path, teacher_pt, "live.pt", teacher_cache="off", hints=["flatten:fc1"]))
    cached = distill(distill_config(tmp_path, teacher_pt, "cached.pt", teacher_cache=mode, hints=["flatten:fc1"]))
    assert cached["metrics"]["teacher_cache"] == mode
    # batched teacher runs may round differently in the last bits; nothing more
    assert_same_weights(weights(tmp_path / "live.pt"), weights(tmp_path / "cached.pt"), atol=1e-4)
    assert not list(tmp_path.glob(".cached.teacher-cache*"))  # a finished run leaves no cache behind


def test_augmentation_turns_the_cache_off(tmp_path, teacher_pt):
    manifest = distill(distill_config(tmp_path, teacher_pt, epochs=1, augment="shift"))
    assert manifest["metrics"]["teacher_cache"] == "off"
    with pytest.raises(ValidationError, match="augment"):
        distill_config(tmp_path, teacher_pt, "x.pt", augment="shift", teacher_cache="memory")


def interrupt_after(monkeypatch, epochs_done):
    """Make the next run stop as Ctrl-C would, once ``epochs_done`` epochs have been saved."""
    original = Fit._train_one_epoch

    def train_or_interrupt(self):
        if self.epoch == epochs_done:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(Fit, "_train_one_epoch", train_or_interrupt)


def test_resume_gives_the_same_student_as_an_uninterrupted_run(tmp_path, teacher_pt, monkeypatch):
    settings = dict(epochs=3, model_args={"hidden": [64], "dropout": 0.3})
    distill(distill_config(tmp_path, teacher_pt, "straight.pt", **settings))
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            distill(distill_config(tmp_path, teacher_pt, "resumed.pt", **settings))
    assert resume_path(tmp_path / "resumed.pt").exists()
    assert not (tmp_path / "resumed.pt").exists()  # nothing half-done under the final name
    with pytest.raises(CompressError, match="--resume"):
        distill(distill_config(tmp_path, teacher_pt, "resumed.pt", **settings))
    with pytest.raises(CompressError, match="settings differ.*temperature"):
        distill(distill_config(tmp_path, teacher_pt, "resumed.pt", resume=True, temperature=2.0, **settings))
    manifest = distill(distill_config(tmp_path, teacher_pt, "resumed.pt", resume=True, **settings))
    assert len(manifest["metrics"]["history"]) == 3
    assert_same_weights(weights(tmp_path / "straight.pt"), weights(tmp_path / "resumed.pt"))
    assert not resume_path(tmp_path / "resumed.pt").exists()


def test_resume_without_an_interrupted_run_is_an_error(tmp_path, teacher_pt):
    with pytest.raises(CompressError, match="nothing to resume"):
        distill(distill_config(tmp_path, teacher_pt, resume=True))


def test_non_finite_loss_names_the_step_and_the_learning_rate(tmp_path):
    with pytest.raises(CompressError, match=r"epoch 1, step \d+ .*learning rate"):
        train(
            TrainConfig(
                model="mlp",
                out=str(tmp_path / "m.pt"),
                optimizer="sgd",
                lr=10,  # the highest --lr takes; with this momentum and small batches the weights blow up
                momentum=0.999,
                batch_size=8,
                schedule="constant",
                epochs=1,
                device="cpu",
            )
        )
    assert not (tmp_path / "m.pt").exists()


def test_teacher_that_does_not_fit_the_data_is_refused(tmp_path, teacher_pt):
    rng = np.random.default_rng(0)
    npz = tmp_path / "other.npz"
    np.savez(
        npz,
        x_train=rng.random((40, 12, 12), dtype=np.float32),
        y_train=np.arange(40) % 10,
        x_test=rng.random((20, 12, 12), dtype=np.float32),
        y_test=np.arange(20) % 10,
    )
    with pytest.raises(CompressError, match=r"shape \[1, 8, 8\]"):
        distill(distill_config(tmp_path, teacher_pt, data=f"npz:{npz}"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--temperature", "0"], "--temperature must be greater than 0, got 0.0"),
        (["--alpha", "1.5"], "--alpha must be at most 1, got 1.5"),
        (["--hint", "layer2"], "--hint 'layer2' must look like TEACHER_LAYER:STUDENT_LAYER"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (
            ["--augment", "shift", "--teacher-cache", "memory"],
            "--teacher-cache memory needs the same inputs every epoch, but --augment changes them",
        ),
    ],
)
def test_bad_settings_are_one_line_naming_the_flag_before_any_work(tmp_path, teacher_pt, capsys, flags, message):
    from test_cli import run_cli

    status, _, err = run_cli(capsys, "distill", "--teacher", str(teacher_pt), "--out", str(tmp_path / "s.pt"), *flags)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert message in err, err
    assert not (tmp_path / "s.pt").exists()


def test_a_missing_teacher_is_named(tmp_path, capsys):
    from test_cli import run_cli

    status, _, err = run_cli(capsys, "distill", "--out", str(tmp_path / "s.pt"))
    assert status == 2 and err.startswith("error: --teacher is required (Teacher: a compress checkpoint")


def test_auto_cache_goes_to_disk_when_large_and_survives_an_interruption(tmp_path, teacher_pt, monkeypatch):
    monkeypatch.setattr(teachers, "MEMORY_CACHE_LIMIT_BYTES", 0)
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            distill(distill_config(tmp_path, teacher_pt))
    cache_dirs = list(tmp_path.glob(".student.teacher-cache/*"))
    assert len(cache_dirs) == 1 and (cache_dirs[0] / "complete").exists()
    manifest = distill(distill_config(tmp_path, teacher_pt, resume=True))
    assert manifest["metrics"]["teacher_cache"] == "disk"
    assert not (tmp_path / ".student.teacher-cache").exists()
