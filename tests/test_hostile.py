"""Hostile and broken files, unwritable outputs, signals: one line, exit 2, nothing run, nothing written.

Every case goes through the command line in-process (``compress.cli.main``) and checks the same
promise: exit status 2, one ``error:`` line on stderr and no traceback, no code named by a file ran
(a payload would create a marker file), and the folder holds what it held before.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.artifacts import manifest_path, resume_path, save_checkpoint, write_manifest
from compress.cli import main
from compress.loop import RESUME_FORMAT
from compress.stages.export import ExportConfig, export
from compress.stages.train import TrainConfig, train

UNWRITABLE = Path("/proc/compress-cannot-write-here")  # not writable even by root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small checkpoint, its ONNX export and a copy of both in a folder of their own."""
    folder = tmp_path_factory.mktemp("trained")
    checkpoint = folder / "model.pt"
    train(TrainConfig(model="mlp", model_args={"hidden": [16]}, data="digits", out=str(checkpoint), epochs=1))
    onnx = folder / "model.onnx"
    export(ExportConfig(checkpoint=str(checkpoint), out=str(onnx), parity_samples=7))
    return checkpoint, onnx


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(args: list[str], capsys, folder: Path | None = None) -> str:
    """Run ``compress ARGS``; assert exit 2 with one error line and ``folder`` unchanged; the line."""
    before = files_in(folder) if folder else None
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    if folder is not None:
        assert files_in(folder) == before
    return lines[0]


def copy_artifact(source: Path, folder: Path, name: str | None = None) -> Path:
    """``source`` and its manifest copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or source.name)
    target.write_bytes(source.read_bytes())
    if manifest_path(source).exists():
        manifest_path(target).write_text(manifest_path(source).read_text())
    return target


# -- code named by a file never runs unless the user names it -------------------------------------


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """Model code that leaves a marker when imported: as a file and as a module on the path."""
    marker = tmp_path / "payload-ran"
    code = f"open({str(marker)!r}, 'w').close()\n\ndef factory(in_shape, num_classes, **args):\n    raise RuntimeError('the payload factory')\n"
    (tmp_path / "evil_models.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker, [f"{tmp_path / 'evil_models.py'}:factory", "evil_models:factory", "subprocess:run", "os:system"]


def hostile_checkpoint(trained, folder: Path, spec: str) -> Path:
    """The trained checkpoint, with its model spec replaced (manifest and hashes consistent)."""
    checkpoint = torch.load(trained[0], weights_only=True)
    checkpoint.pop("format")
    checkpoint["model_spec"] = spec
    manifest = json.loads(manifest_path(trained[0]).read_text())
    manifest["model"]["spec"] = spec
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "hostile.pt", checkpoint, manifest)
    return folder / "hostile.pt"


@pytest.mark.parametrize("command", ["export", "prune", "distill-teacher", "list-layers", "recipe"])
def test_code_named_by_a_checkpoint_does_not_run(trained, payload, tmp_path, capsys, command):
    marker, specs = payload
    for number, spec in enumerate(specs):
        work = tmp_path / f"case{number}"
        checkpoint = hostile_checkpoint(trained, work, spec)
        args = {
            "export": ["export", checkpoint, "--out", work / "x.onnx"],
            "prune": ["prune", checkpoint, "--out", work / "p.pt", "--amount", "0.5"],
            "distill-teacher": ["distill", "--teacher", checkpoint, "--out", work / "s.pt", "--epochs", "1"],
            "list-layers": ["distill", "--list-layers", checkpoint],
            "recipe": ["run", recipe(work, f'[teacher]\npath = "{checkpoint}"\n')],
        }[command]
        line = refused(args, capsys, work)
        assert "not a zoo model" in line and "trust" in line
        assert not marker.exists()


def recipe(folder: Path, text: str) -> Path:
    path = folder / "r.toml"
    path.write_text(f'out = "{folder / "run"}"\n{text}')
    return path


def test_naming_the_model_code_lets_it_run(trained, payload, tmp_path, capsys):
    marker, specs = payload
    checkpoint = hostile_checkpoint(trained, tmp_path / "named", specs[1])
    line = refused(["export", checkpoint, "--out", tmp_path / "x.onnx", "--model", specs[1]], capsys)
    assert marker.exists()  # named by the user: imported (and the factory then fails, as written)
    assert "the payload factory" in line


def test_a_torch_export_program_is_not_unpickled_unless_trusted(trained, tmp_path, capsys):
    marker = tmp_path / "pt2-payload-ran"
    program = torch.export.export(torch.nn.Linear(64, 10), (torch.zeros(1, 64),))
    pt2 = tmp_path / "teacher.pt2"
    torch.export.save(program, str(pt2))

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with zipfile.ZipFile(pt2) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    inputs = next(name for name in members if "sample_inputs" in name)
    buffer = __import__("io").BytesIO()
    torch.save(Payload(), buffer)
    members[inputs] = buffer.getvalue()
    with zipfile.ZipFile(pt2, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    line = refused(["distill", "--teacher", pt2, "--data", "digits", "--out", tmp_path / "s.pt"], capsys, tmp_path)
    assert "--trust-model-code" in line and not marker.exists()


def test_pickled_objects_are_refused_without_advice_to_unpickle_them(trained, tmp_path, capsys):
    marker = tmp_path / "pickle-payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "compress-checkpoint/1", "state_dict": Payload()}, evil)
    npz = tmp_path / "evil.npz"
    np.savez(npz, x_train=np.array([Payload()], dtype=object), y_train=np.zeros(1))
    for args in (
        ["export", evil, "--out", tmp_path / "x.onnx"],
        ["distill", "--teacher", evil, "--out", tmp_path / "s.pt"],
        ["train", "--data", f"npz:{npz}", "--out", tmp_path / "t.pt"],
    ):
        line = refused(args, capsys, tmp_path)
        assert "weights_only" not in line and "allow_pickle" not in line and not marker.exists()


# -- outputs that cannot be written are known before any work ---------------------------------------


def output_cases(trained, work: Path) -> dict[str, list]:
    """Each command with its output set to OUT (replaced per case)."""
    checkpoint = copy_artifact(trained[0], work / "in")
    onnx = copy_artifact(trained[1], work / "in")
    return {
        "train": ["train", "--epochs", "1", "--out", "OUT.pt"],
        "distill": ["distill", "--teacher", checkpoint, "--epochs", "1", "--out", "OUT.pt"],
        "prune": ["prune", checkpoint, "--amount", "0.5", "--epochs", "1", "--out", "OUT.pt"],
        "export": ["export", checkpoint, "--out", "OUT.onnx"],
        "quantize": ["quantize", onnx, "--mode", "dynamic", "--out", "OUT.onnx"],
        "bench": ["bench", onnx, "--min-time", "0.01", "--report", "OUT"],
    }


def with_out(args: list, out: str) -> list:
    return [str(a).replace("OUT", out) for a in args]


@pytest.mark.parametrize("command", ["train", "distill", "prune", "export", "quantize", "bench"])
@pytest.mark.parametrize("where", ["unwritable", "under_a_file", "occupied_by_a_folder", "manifest_is_a_folder"])
def test_an_output_that_cannot_be_written_fails_before_any_work(trained, tmp_path, capsys, command, where):
    args = output_cases(trained, tmp_path)[command]
    if where == "unwritable":
        out = str(UNWRITABLE / "x")
    elif where == "under_a_file":
        (tmp_path / "a_file").write_text("not a folder")
        out = str(tmp_path / "a_file" / "x")
    else:
        out = str(tmp_path / "x")
        suffix = "" if command == "bench" else (".pt" if command in ("train", "distill", "prune") else ".onnx")
        if command == "bench":
            target = tmp_path / "x" / "report.json" if where == "manifest_is_a_folder" else None
            if target is None:
                (tmp_path / "x").write_text("a file where the report folder goes")
        else:
            target = Path(out + suffix + (".json" if where == "manifest_is_a_folder" else ""))
        if target is not None:
            target.mkdir(parents=True)
    started = time.perf_counter()
    refused(with_out(args, out), capsys, tmp_path)
    assert time.perf_counter() - started < 20  # refused up front, not after training or timing
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_an_output_never_replaces_an_input(trained, tmp_path, capsys):
    checkpoint = copy_artifact(trained[0], tmp_path)
    onnx = copy_artifact(trained[1], tmp_path)
    for args in (
        ["prune", checkpoint, "--amount", "0.5", "--out", checkpoint],
        ["distill", "--teacher", checkpoint, "--out", checkpoint],
        ["quantize", onnx, "--out", onnx],
    ):
        line = refused(args, capsys, tmp_path)
        assert "is the" in line or "must differ" in line or "same" in line


def test_a_run_folder_whose_run_log_is_a_folder_is_refused(tmp_path, capsys):
    (tmp_path / "run" / "run.json").mkdir(parents=True)
    line = refused(["run", recipe(tmp_path, "")], capsys)
    assert "run.json" in line


def test_a_recipe_with_an_empty_out_does_not_run_in_the_current_folder(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text('out = ""\n')
    assert "out is empty" in refused(["run", path, "--dry-run"], capsys, tmp_path)


def test_a_secret_in_an_environment_variable_is_not_repeated_in_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DATA_TOKEN", "s3cr3t-t0ken")
    path = tmp_path / "r.toml"
    path.write_text('data = "npz:/data/${DATA_TOKEN}/x.npz"\n')
    line = refused(["run", path, "--dry-run"], capsys, tmp_path)
    assert "s3cr3t" not in line and "${DATA_TOKEN}" in line


# -- damaged, stale and hostile files: one line naming the file and the field --------------------------


def manifest_cases(text: str) -> dict[str, str]:
    good = json.loads(text)
    return {
        "not_json": "{not json",
        "a_list": "[1, 2]",
        "nan": re.sub(r'"size_bytes": \d+', '"size_bytes": NaN', text),
        "missing_key": json.dumps({k: v for k, v in good.items() if k != "stage"}),
        "wrong_type": json.dumps({**good, "input_spec": {**good["input_spec"], "shape": "big"}}),
        "newer_format": json.dumps({**good, "format": "compress-manifest/99"}),
        "unknown_stage": json.dumps({**good, "stage": "rm -rf"}),
        "other_artifact": json.dumps({**good, "sha256": "0" * 64}),  # a torn pair
    }


@pytest.mark.parametrize("kind", list(manifest_cases('{"input_spec": {}}')))  # the case names
def test_a_damaged_manifest_is_one_line_naming_it(trained, tmp_path, capsys, kind):
    onnx = copy_artifact(trained[1], tmp_path / "in")
    checkpoint = copy_artifact(trained[0], tmp_path / "in")
    for artifact, args in (
        (onnx, ["quantize", onnx, "--mode", "dynamic", "--out", tmp_path / "q.onnx"]),
        (onnx, ["bench", onnx, "--report", tmp_path / "report"]),
        (checkpoint, ["export", checkpoint, "--out", tmp_path / "x.onnx"]),
        (checkpoint, ["distill", "--teacher", checkpoint, "--out", tmp_path / "s.pt"]),
    ):
        original = manifest_path(artifact).read_text()
        manifest_path(artifact).write_text(manifest_cases(original)[kind])
        line = refused(args, capsys, tmp_path)
        assert manifest_path(artifact).name in line or artifact.name in line
        manifest_path(artifact).write_text(original)


def checkpoint_cases(trained) -> dict[str, dict]:
    good = torch.load(trained[0], weights_only=True)
    state = good["state_dict"]
    wrong = {k: (torch.zeros(3) if i == 0 else v) for i, (k, v) in enumerate(state.items())}
    return {
        "missing_key": {k: v for k, v in good.items() if k != "num_classes"},
        "in_shape_text": {**good, "in_shape": "1,8,8"},
        "huge_in_shape": {**good, "in_shape": [1, 100000, 100000]},
        "negative_classes": {**good, "num_classes": -3},
        "state_not_tensors": {**good, "state_dict": {"fc.weight": [1, 2, 3]}},
        "weights_of_another_model": {**good, "state_dict": {"other.weight": torch.zeros(2)}},
        "weights_of_other_shapes": {**good, "state_dict": wrong},
        "huge_model_args": {**good, "model_args": {"hidden": [10**9, 10**9]}},
        "not_a_dict": [1, 2, 3],
    }


CHECKPOINT_CASES = [
    "missing_key",
    "in_shape_text",
    "huge_in_shape",
    "negative_classes",
    "state_not_tensors",
    "weights_of_another_model",
    "weights_of_other_shapes",
    "huge_model_args",
    "not_a_dict",
]


@pytest.mark.parametrize("name", CHECKPOINT_CASES)
def test_a_damaged_checkpoint_is_one_line_naming_it(trained, tmp_path, capsys, name):
    content = checkpoint_cases(trained)[name]
    checkpoint = tmp_path / f"{name}.pt"
    torch.save(content, checkpoint)  # no manifest: the checkpoint alone is read
    for args in (
        ["export", checkpoint, "--out", tmp_path / "x.onnx", "--data", "digits"],
        ["distill", "--teacher", checkpoint, "--out", tmp_path / "s.pt", "--epochs", "1"],
        ["prune", checkpoint, "--amount", "0.5", "--out", tmp_path / "p.pt", "--data", "digits"],
    ):
        line = refused(args, capsys, tmp_path)
        assert checkpoint.name in line or "model 'mlp' with" in line, (name, line)


def test_a_model_file_edited_after_training_is_one_line(tmp_path, capsys):
    code = tmp_path / "my_model.py"
    code.write_text(
        "from torch import nn\n\ndef net(in_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    checkpoint = tmp_path / "m.pt"
    train(TrainConfig(model=f"{code}:net", data="digits", out=str(checkpoint), epochs=1))
    code.write_text(
        "from torch import nn\n\ndef net(in_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))\n"
    )
    line = refused(["export", checkpoint, "--model", f"{code}:net", "--out", tmp_path / "m.onnx"], capsys, tmp_path)
    assert "do not fit" in line and "restore the code" in line


@pytest.mark.parametrize(
    "damage",
    [
        lambda state: state.pop("optimizer"),
        lambda state: state.update(epoch="three"),
        lambda state: state.update(model={"nonsense": torch.zeros(1)}),
        lambda state: state.update(config=[1, 2]),
    ],
)
def test_a_damaged_resume_state_is_one_line(tmp_path, capsys, damage):
    out = tmp_path / "t.pt"
    args = ["train", "--model", "mlp", "--model-arg", "hidden=16", "--epochs", "2", "--out", out]
    main([str(a) for a in args])
    capsys.readouterr()
    state = {  # a resume state as an interrupted run leaves it (see Fit.save_resume_state), then damaged
        "format": RESUME_FORMAT,
        "config": json.loads(manifest_path(out).read_text())["config"],
        "epoch": 1,
        "model": torch.load(out, weights_only=True)["state_dict"],
        "optimizer": {},
        "schedule": {},
        "objective": {},
        "best_val": 0.5,
        "best_epoch": 1,
        "best_state": {},
        "history": [],
        "torch_rng": torch.get_rng_state(),
    }
    damage(state)
    torch.save(state, resume_path(out))
    line = refused([*args, "--resume"], capsys, tmp_path)
    assert resume_path(out).name in line or "resume" in line


@pytest.mark.parametrize(
    "text",
    [
        '{"format": "compress-run/1", "stages": []}',
        '{"format": "compress-run/1", "stages": {"train": {"status": 7}}}',
        '{"format": "compress-run/1", "stages": {"train": {"status": "done", "inputs": {"data": 5}}}}',
        '{"format": "compress-run/1"}',
        "[]",
        "{",
    ],
)
def test_a_damaged_run_log_is_one_line(tmp_path, capsys, text):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(text)
    line = refused(["run", recipe(tmp_path, ""), "--dry-run"], capsys, tmp_path)
    assert "run.json" in line


@pytest.mark.parametrize(
    "report",
    [{"format": "compress-bench-report/1"}, {"format": "compress-bench-report/1", "rows": "x"}, [], "text"],
)
def test_a_damaged_report_to_compare_is_one_line(trained, tmp_path, capsys, report):
    (tmp_path / "old.json").write_text(json.dumps(report))
    line = refused(["bench", "--compare", tmp_path / "old.json", tmp_path / "old.json"], capsys)
    assert "old.json" in line


def test_manifests_are_strict_json(trained, tmp_path):
    artifact = copy_artifact(trained[1], tmp_path)
    manifest = json.loads(manifest_path(artifact).read_text())
    manifest["metrics"] = {"accuracy": float("nan")}
    with pytest.raises(RuntimeError, match="bug in compress"):
        write_manifest(artifact, manifest)


# -- signals: SIGTERM stops like Ctrl-C, SIGKILL leaves nothing a rerun trips over -------------------


def start(args: list, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "compress.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "the command did not get there in time"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_mid_training_leaves_a_run_that_resumes(tmp_path, sig):
    out = tmp_path / "t.pt"
    args = ["train", "--model", "mlp", "--epochs", "30", "--out", out]
    process = start(args, tmp_path)
    wait_for(lambda: resume_path(out).exists())  # an epoch has finished
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert process.returncode == 130 and err.strip().splitlines()[-1].startswith("interrupted:")
        assert "Traceback" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] or sig == signal.SIGKILL
    rerun = start([*args, "--epochs", "30", "--resume"], tmp_path)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert out.exists() and manifest_path(out).exists() and not resume_path(out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_work_left_by_a_killed_command_is_removed_by_the_next(trained, tmp_path):
    checkpoint = copy_artifact(trained[0], tmp_path)
    out = tmp_path / "x.onnx"
    process = start(["export", checkpoint, "--out", out], tmp_path)
    wait_for(lambda: any(p.name.endswith(".tmp") for p in tmp_path.iterdir()))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    rerun = start(["export", checkpoint, "--out", out], tmp_path)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_work_in_progress_of_a_living_process_is_kept(tmp_path):
    from compress.artifacts import remove_stale_work, staging_dir

    final = tmp_path / "x.onnx"
    with staging_dir(final) as staging:
        remove_stale_work(final)
        assert staging.is_dir()
    stale = tmp_path / ".x.onnx.abc.tmp"
    stale.mkdir()
    remove_stale_work(final)
    assert not stale.exists()


def test_a_run_lock_left_by_a_process_with_this_id_does_not_block(tmp_path, monkeypatch):
    """In a container compress is often PID 1: the lock is the operating system's, not a process id."""
    from compress import pipeline
    from compress.recipe import load_recipe

    plan = pipeline.build_plan(load_recipe(recipe(tmp_path, "")))
    plan.recipe.out.mkdir(parents=True)
    (plan.recipe.out / "run.lock").write_text(f"{os.getpid()}\n1\n")
    ran = []
    monkeypatch.setattr(pipeline, "_run_steps", lambda plan, force: ran.append(plan) or {})
    pipeline.run(plan)
    assert ran
