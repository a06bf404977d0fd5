"""The command line: results printed, user errors as one line with exit status 2."""

import re
import subprocess
import sys

import pytest

from compress.cli import main


def run_cli(capsys, *args):
    """Run ``compress ARGS`` in-process; returns (exit status, stdout, stderr)."""
    try:
        main(list(args))
        status = 0
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_train_then_distill_print_accuracy_size_and_paths(tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    status, out, _ = run_cli(
        capsys,
        "train",
        "--model",
        "cnn",
        "--model-arg",
        "channels=8,16",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--out",
        str(teacher),
    )
    assert status == 0
    assert "test accuracy" in out and "params" in out and "KiB" in out
    assert f"wrote {teacher}" in out and f"wrote {tmp_path / 'teacher.pt.json'}" in out
    student = tmp_path / "student.pt"
    status, out, _ = run_cli(
        capsys,
        "distill",
        "--teacher",
        str(teacher),
        "--student",
        "mlp",
        "--model-arg",
        "hidden=[32]",
        "-T",
        "2",
        "--alpha",
        "0.5",
        "--epochs",
        "1",
        "--hint",
        "head.relu:fc1",
        "--out",
        str(student),
    )
    assert status == 0, out
    assert "student: test accuracy" in out and "teacher: test accuracy" in out
    assert student.exists() and (tmp_path / "student.pt.json").exists()


def test_list_layers_prints_names_and_shapes(capsys):
    status, out, _ = run_cli(capsys, "distill", "--list-layers", "resnet8")
    assert status == 0
    assert "layer2" in out and "32x4x4" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "imagenet", "--out", "x.pt"], "unknown data source"),
        (["train", "--data", "mnist:/no/such/dir", "--out", "x.pt"], "/no/such/dir"),
        (["train", "--model", "nosuchnet", "--out", "x.pt"], "nosuchnet"),
        (["train", "--model-arg", "hidden", "--out", "x.pt"], "KEY=VALUE|key=value"),
        (["train", "--model", "mlp", "--model-arg", "colour=red", "--out", "x.pt"], "colour"),
        (["train", "--epochs", "0", "--out", "x.pt"], "--epochs"),
        (["train"], "--out"),
        (["train", "--optimizer", "lion", "--out", "x.pt"], "lion"),
        (["train", "--no-such-flag"], "no-such-flag"),
        (["distill", "--teacher", "missing.pt", "--out", "s.pt"], "missing.pt"),
        (["distill", "--out", "s.pt"], "--teacher"),
        (["distill", "--list-layers", "teacher.onnx"], "ONNX"),
    ],
)
def test_user_errors_are_one_line_with_exit_status_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli(capsys, *args)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_corrupt_teacher_is_an_error_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"this is not a checkpoint")
    status, _, err = run_cli(capsys, "distill", "--teacher", str(bad), "--out", str(tmp_path / "s.pt"))
    assert status == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.pt").exists()


def test_help_shows_an_example(capsys):
    for command in ("train", "distill"):
        status, out, _ = run_cli(capsys, command, "--help")
        assert status == 0 and "Example" in out and f"compress {command}" in out


def test_console_script_runs_as_a_separate_process():
    result = subprocess.run(
        [sys.executable, "-m", "compress.cli", "train", "--data", "nosuch"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and "Traceback" not in result.stderr
