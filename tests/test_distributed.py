"""Data-parallel training across processes (gloo on CPU), checked the way PyTorch's own DDP tests
check it: the model stepped on each rank's slice of the global batch must end where the same model
stepped on the whole batch ends."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

import compress
from compress.artifacts import load_checkpoint, resume_path
from compress.cli import main
from compress.distributed import World
from compress.loop import Fit

WORLD = 2
DEADLINE_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_rank(rank: int, port: int, stage: str, settings: dict, stop_after_epoch: int | None) -> None:
    """One process of a distributed run, as torchrun would start it."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    if stop_after_epoch is not None:  # the run is killed once that epoch's resume state is written
        save = Fit.save_resume_state

        def save_then_stop(fit):
            save(fit)
            if fit.epoch == stop_after_epoch:
                raise KeyboardInterrupt

        Fit.save_resume_state = save_then_stop
    try:
        getattr(compress, stage)(**settings)
    except KeyboardInterrupt:
        pass


def run_distributed(stage: str, stop_after_epoch: int | None = None, **settings) -> None:
    context = mp.start_processes(
        _as_rank, args=(_free_port(), stage, settings, stop_after_epoch), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the distributed {stage} run did not finish in {DEADLINE_S}s")


def weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def assert_close_weights(a, b, atol: float) -> None:
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=f"{name} differs")


TRAIN = dict(model="mlp", model_args={"hidden": [32]}, epochs=2, batch_size=64, val_fraction=0.25, seed=3)


def test_two_processes_step_as_one_on_the_global_batch(tmp_path, digits_npz):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    single = compress.train(out=str(one), data=digits_npz, **TRAIN)
    run_distributed("train", out=str(two), data=digits_npz, **TRAIN)
    assert_close_weights(one, two, atol=1e-5)

    distributed = json.loads((tmp_path / "two.pt.json").read_text())
    assert distributed["training"] == {
        "device": "cpu",
        "world_size": 2,
        "backend": "gloo",
        "global_batch": 64,
        "batch_per_process": 32,
        "autocast": None,
    }
    assert single["training"]["world_size"] == 1 and single["training"]["backend"] is None
    # metrics summed over the ranks count every sample once: the same figures as one process
    for mine, theirs in zip(single["metrics"]["history"], distributed["metrics"]["history"]):
        assert theirs["val_accuracy"] == mine["val_accuracy"]
        assert theirs["train_accuracy"] == pytest.approx(mine["train_accuracy"], abs=2 / 768)
        assert theirs["loss"] == pytest.approx(mine["loss"], rel=1e-4)
    assert distributed["metrics"]["test_accuracy"] == single["metrics"]["test_accuracy"]


def test_distillation_with_hints_and_a_sharded_teacher_cache_matches_one_process(tmp_path, digits_npz):
    teacher = tmp_path / "teacher.pt"
    compress.train(out=str(teacher), data=digits_npz, **{**TRAIN, "model_args": {"hidden": [64, 64]}, "epochs": 1})
    settings = dict(
        teacher=str(teacher),
        data=digits_npz,
        model="mlp",
        model_args={"hidden": [16]},
        hints=["fc2:fc1"],  # a learned projection beside the student: its gradients are averaged too
        teacher_cache="memory",
        epochs=2,
        batch_size=64,
        val_fraction=0.25,
    )
    one = compress.distill(out=str(tmp_path / "one.pt"), **settings)
    run_distributed("distill", out=str(tmp_path / "two.pt"), **settings)
    assert_close_weights(tmp_path / "one.pt", tmp_path / "two.pt", atol=1e-5)
    two = json.loads((tmp_path / "two.pt.json").read_text())
    assert two["metrics"]["teacher_cache"] == "memory"
    assert two["metrics"]["teacher_test_accuracy"] == one["metrics"]["teacher_test_accuracy"]


def test_pruning_recovers_on_two_processes_as_on_one(tmp_path, digits_npz):
    model = tmp_path / "model.pt"
    compress.train(out=str(model), data=digits_npz, **TRAIN)
    settings = dict(data=digits_npz, target_macs=0.6, epochs=1, batch_size=64, val_fraction=0.25)
    compress.prune(str(model), out=str(tmp_path / "one.pt"), **settings)
    run_distributed("prune", checkpoint=str(model), out=str(tmp_path / "two.pt"), **settings)
    assert_close_weights(tmp_path / "one.pt", tmp_path / "two.pt", atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left behind


def test_a_stopped_distributed_run_resumes_to_the_same_weights(tmp_path, digits_npz):
    settings = {**TRAIN, "epochs": 3, "model_args": {"hidden": [32], "dropout": 0.2}, "data": digits_npz}
    run_distributed("train", out=str(tmp_path / "whole.pt"), **settings)
    stopped = tmp_path / "stopped.pt"
    run_distributed("train", stop_after_epoch=1, out=str(stopped), **settings)
    assert resume_path(stopped).exists() and not stopped.exists()
    run_distributed("train", out=str(stopped), resume=True, **settings)
    assert not resume_path(stopped).exists()
    assert_close_weights(tmp_path / "whole.pt", stopped, atol=0)


def test_torchrun_starts_distillation_from_the_command_line(tmp_path, digits_npz):
    teacher = tmp_path / "teacher.pt"
    compress.train(out=str(teacher), data=digits_npz, **TRAIN)
    student = tmp_path / "student.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}"]
    command += ["-m", "compress", "distill", "--teacher", str(teacher), "--data", digits_npz, "--model", "mlp"]
    command += ["--model-arg", "hidden=16", "--epochs", "1", "--batch-size", "32", "--out", str(student)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(f"wrote {student}\n") == 1  # the first process speaks for both
    manifest = json.loads((tmp_path / "student.pt.json").read_text())
    assert manifest["training"]["world_size"] == 2 and manifest["training"]["global_batch"] == 32


def test_python_dash_m_compress_is_the_command_line():
    done = subprocess.run([sys.executable, "-m", "compress", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "distill" in done.stdout


@pytest.mark.parametrize("command", [["export", "x.pt", "--out", "x.onnx"], ["bench", "x.onnx"]])
def test_stages_that_do_not_train_refuse_several_processes(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as stopped:
        main(command)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "runs in one process, but torchrun started 2" in err


def test_a_global_batch_that_does_not_divide_among_processes_is_refused(tmp_path, digits_npz):
    world = World(size=3, rank=0, backend="gloo")  # checked before any process group is needed
    with pytest.raises(compress.CompressError, match="--batch-size 64 .* multiple of 3"):
        from compress.data import load_dataset
        from compress.loop import LabelObjective
        from compress.modelspec import build_model
        from compress.stages.train import TrainConfig

        dataset = load_dataset(digits_npz, 0.25, 0)
        model = build_model("mlp", dataset.in_shape, dataset.num_classes, {"hidden": [8]})
        config = TrainConfig(out=str(tmp_path / "m.pt"), batch_size=64)
        Fit(config, "train", dataset, model, LabelObjective(0.0, dataset.task), world)


def test_a_broken_launch_environment_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--model", "mlp", "--epochs", "1", "--out", "m.pt"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torchrun" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_the_gpu_uses_bf16_autocast_and_keeps_the_teacher_cache_there(tmp_path, digits_npz):
    teacher = tmp_path / "teacher.pt"
    compress.train(out=str(teacher), data=digits_npz, device="cuda", **TRAIN)
    manifest = compress.distill(
        teacher=str(teacher), data=digits_npz, device="cuda", model="mlp", epochs=1, out=str(tmp_path / "s.pt")
    )
    assert manifest["training"]["device"] == "cuda" and manifest["training"]["autocast"] == "bfloat16"
    assert manifest["metrics"]["teacher_cache"] == "memory"
    assert manifest["metrics"]["test_accuracy"] > 0.5
