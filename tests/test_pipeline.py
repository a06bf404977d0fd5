"""`compress run RECIPE.toml`: a tiny recipe end to end, skipping, resuming, invalid recipes."""

import json
import textwrap

import pytest
import torch
from test_cli import run_cli

from compress.loop import Fit

pytestmark = pytest.mark.slow  # trains, exports, quantizes or times real models

TINY = """\
name = "tiny"
data = "digits"

[teacher]
model = "mlp"
model_args = { hidden = [32] }
epochs = 2
device = "cpu"

[student]
model = "mlp"
model_args = { hidden = [16] }
temperature = 2.0
epochs = 3
device = "cpu"

[export]

[quantize]
calibration_samples = 64

[bench]
batch_sizes = [1]
warmup = 1
min_runs = 7
min_time = 0.02
memory = false
"""


def write_recipe(folder, text=TINY, name="recipe.toml"):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def run_log(folder):
    return json.loads((folder / "run.json").read_text())


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_tiny_recipe_runs_every_stage_and_ends_with_the_summary(in_tmp, capsys):
    recipe = write_recipe(in_tmp)
    status, out, err = run_cli(capsys, "run", str(recipe))
    assert status == 0, err
    run = in_tmp / "runs" / "tiny"
    for name in ("teacher.pt", "student.pt", "teacher.onnx", "student.onnx", "student.int8.onnx"):
        assert (run / name).is_file() and (run / (name + ".json")).is_file(), name
    report = json.loads((run / "report" / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["teacher.onnx", "student.onnx", "student.int8.onnx"]
    assert report["baseline"] == "teacher.onnx"
    log = run_log(run)
    assert list(log["stages"]) == ["train", "distill", "export-teacher", "export-student", "quantize", "bench"]
    assert all(s["status"] == "done" and s["seconds"] > 0 for s in log["stages"].values())
    assert [v["variant"] for v in log["variants"]] == ["teacher", "student", "student int8"]
    # the summary: each variant with accuracy, MACs and speed-up against the teacher, and the report
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["variant", "top-1", "%"]
    student_line = next(line for line in lines if line.startswith("student int8"))
    # its speed-up, with the teacher's p50 in the rounds it was timed against
    paired = log["variants"][2]["latency"]["1"]["baseline_p50_ms"]
    assert student_line.rstrip().endswith(f"x ({paired:.3f})")
    assert "report: runs/tiny/report/report.html" in out
    assert log["variants"][1]["macs"] < log["variants"][0]["macs"]


def test_a_second_run_skips_what_is_up_to_date_and_reruns_what_changed(in_tmp, capsys):
    recipe = write_recipe(in_tmp)
    assert run_cli(capsys, "run", str(recipe))[0] == 0
    run = in_tmp / "runs" / "tiny"
    stamps = {p.name: p.stat().st_mtime_ns for p in run.glob("*.onnx")}

    status, out, err = run_cli(capsys, "run", str(recipe))
    assert status == 0
    assert err.count("skipped, up to date") == 6
    assert {p.name: p.stat().st_mtime_ns for p in run.glob("*.onnx")} == stamps
    assert "student int8" in out  # the summary again, from the report on disk

    # a quantize setting changed: quantize and bench run again, nothing upstream
    recipe.write_text(TINY.replace("calibration_samples = 64", "calibration_samples = 32"))
    status, out, err = run_cli(capsys, "run", "--dry-run", str(recipe))
    assert status == 0
    assert "quantize        runs: settings changed: calibration_samples" in out
    assert "bench           runs: student.int8.onnx is made first" in out
    assert out.count("skipped: up to date") == 4
    status, _, err = run_cli(capsys, "run", str(recipe))
    assert status == 0
    assert "[5/6] quantize: runs (settings changed: calibration_samples)" in err
    assert "[2/6] distill: skipped, up to date" in err
    assert run_log(run)["stages"]["quantize"]["settings"]["calibration_samples"] == 32

    # an output changed by hand is made again; --force runs a stage that is up to date
    (run / "student.onnx").write_bytes(b"not onnx")
    status, _, err = run_cli(capsys, "run", str(recipe), "--force", "train")
    assert status == 0, err
    assert "[1/6] train: runs (forced (--force))" in err
    assert "[4/6] export-student: runs (output student.onnx is changed since it was written)" in err
    # training is deterministic on CPU: the forced teacher has the same bytes, distillation is skipped
    assert "[2/6] distill: skipped, up to date" in err


def test_an_interrupted_distillation_resumes_and_ends_as_an_uninterrupted_run(in_tmp, capsys, monkeypatch):
    recipe = write_recipe(in_tmp)
    original = Fit._train_one_epoch

    def interrupted_after_one_epoch(self):
        if self.stage == "distill" and self.epoch == 1:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(Fit, "_train_one_epoch", interrupted_after_one_epoch)
    status, _, err = run_cli(capsys, "run", str(recipe))
    assert status == 130
    assert "interrupted" in err and "run the same command again" in err
    run = in_tmp / "runs" / "tiny"
    assert run_log(run)["stages"]["distill"]["status"] == "interrupted"
    assert (run / "student.resume.pt").is_file() and not (run / "student.pt").exists()
    assert not list(run.glob(".*.tmp"))

    monkeypatch.setattr(Fit, "_train_one_epoch", original)
    status, out, err = run_cli(capsys, "run", str(recipe))
    assert status == 0, err
    assert "[1/6] train: skipped, up to date" in err
    assert "distill: runs (interrupted last time; resumes from its last finished epoch)" in err
    assert "resuming" in err and "after epoch 1/3" in err
    assert not (run / "student.resume.pt").exists()

    status, _, err = run_cli(capsys, "run", str(recipe), "--out", "runs/uninterrupted")
    assert status == 0, err
    resumed = torch.load(run / "student.pt", weights_only=True)["state_dict"]
    uninterrupted = torch.load(in_tmp / "runs" / "uninterrupted" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_a_given_teacher_and_a_prune_table_add_the_pruned_variants(in_tmp, capsys):
    assert run_cli(capsys, "run", str(write_recipe(in_tmp)))[0] == 0
    teacher = in_tmp / "runs" / "tiny" / "teacher.pt"
    recipe = write_recipe(
        in_tmp,
        f"""\
        name = "pruned"
        [teacher]
        path = "{teacher}"
        [student]
        model = "mlp"
        model_args = {{ hidden = [32] }}
        epochs = 1
        device = "cpu"
        [prune]
        amount = 0.5
        epochs = 1
        device = "cpu"
        [quantize]
        calibration_samples = 32
        [bench]
        batch_sizes = [4]
        min_runs = 7
        min_time = 0.02
        memory = false
        """,
        name="pruned.toml",
    )
    status, out, err = run_cli(capsys, "run", str(recipe))
    assert status == 0, err
    log = run_log(in_tmp / "runs" / "pruned")
    assert list(log["stages"]) == [
        "distill",
        "export-teacher",
        "export-student",
        "prune",
        "export-pruned",
        "quantize",
        "bench",
    ]
    assert [v["variant"] for v in log["variants"]] == ["teacher", "student", "student pruned", "student pruned int8"]
    student, pruned = log["variants"][1], log["variants"][2]
    assert pruned["params"] < student["params"]
    assert (in_tmp / "runs" / "pruned" / "student.pruned.int8.onnx").is_file()


@pytest.mark.parametrize(
    "recipe, message",
    [
        ('name = "x"\ncolour = "red"\n', r"recipe.toml, line 2: unknown key 'colour'"),
        (
            "[student]\nepochs = 3\ntemprature = 4.0\n",
            r"line 3: unknown key 'temprature' in \[student\]; valid keys: .*temperature",
        ),
        ('[student]\nepochs = "three"\n', r"line 2: \[student\] epochs must be a whole number, got a string 'three'"),
        (
            '[bench]\nbatch_sizes = [1, "64"]\n',
            r"line 2: \[bench\] batch_sizes\[1\] must be a whole number, got a string '64'",
        ),
        ("[quantize]\nper_channel = 1\n", r"line 2: \[quantize\] per_channel must be true or false"),
        ('[teacher]\npath = "missing.pt"\n', r"line 2: teacher missing.pt does not exist"),
        ('[teacher]\npath = "t.pt"\nepochs = 3\n', r"line 3: \[teacher\] takes either path = FILE"),
        (
            '[teacher]\npath = "recipe.toml"\n',
            r"line 2: teacher recipe.toml must be a compress checkpoint \(.pt\) or an ONNX",
        ),
        ('[student]\nout = "s.pt"\n', r"line 2: \[student\] out is set by the pipeline"),
        ('data = "mnist:/no/such/dir"\n', r"line 1: data 'mnist:/no/such/dir': /no/such/dir does not exist"),
        ('data = "mnist:${NO_SUCH_VARIABLE_SET}"\n', r"line 1: data uses \$\{NO_SUCH_VARIABLE_SET\}, which is not set"),
        ("student = 3\n", r"line 1: student must be a table"),
        ("[student\nepochs = 3\n", r"not valid TOML: .*line 1"),
        ('name = "../elsewhere"\n', r"name '../elsewhere' must be a plain folder name"),
        ("[bench]\nmin_seconds = 1.0\n", r"line 2: unknown key 'min_seconds' in \[bench\]; valid keys: .*min_time"),
        ("[student]\nepochs = 0\n", r"line 2: \[student\] epochs must be at least 1, got 0"),
        (
            "[prune]\nepochs = 1\namount = 0.5\ntarget_macs = 0.3\n",
            r"line 3: \[prune\] give exactly one of amount, target_macs, target_params",
        ),
        ('[student]\naugment = "shift"\nteacher_cache = "memory"\n', r"line 3: \[student\] teacher_cache memory needs"),
        ("[bench]\nconfidence = 1.5\n", r"line 2: \[bench\] confidence must be less than 1"),
        (
            "[prune]\namount = 1.5\n",
            r"line 2: \[prune\] amount must be less than 1, got 1.5 \(fraction of each prunable layer's channels to remove",
        ),
    ],
)
def test_an_invalid_recipe_is_one_line_naming_the_key_and_its_line_before_anything_runs(
    in_tmp, capsys, recipe, message
):
    import re

    path = write_recipe(in_tmp, recipe)
    status, out, err = run_cli(capsys, "run", str(path))
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: recipe"), err
    assert re.search(message, err), err
    assert not (in_tmp / "runs").exists()


def test_force_names_a_stage_of_the_recipe(in_tmp, capsys):
    status, _, err = run_cli(capsys, "run", str(write_recipe(in_tmp)), "--force", "prune")
    assert status == 2
    assert "--force prune: this recipe has no such stage; its stages are train, distill" in err
    assert not (in_tmp / "runs").exists()


def test_missing_recipe(in_tmp, capsys):
    status, _, err = run_cli(capsys, "run", "nope.toml")
    assert status == 2 and "recipe nope.toml does not exist" in err


def test_a_teacher_checkpoint_without_a_manifest_is_refused_before_anything_runs(in_tmp, capsys):
    (in_tmp / "scripted.pt").write_bytes(b"a TorchScript file, say")
    status, _, err = run_cli(capsys, "run", str(write_recipe(in_tmp, '[teacher]\npath = "scripted.pt"\n')))
    assert status == 2
    assert "line 2: teacher scripted.pt has no manifest" in err and "give path = TEACHER.onnx" in err


def test_one_run_at_a_time_per_folder_and_a_killed_runs_lock_is_let_go(in_tmp, capsys):
    import subprocess
    import sys

    run = in_tmp / "runs" / "tiny"
    run.mkdir(parents=True)
    holder = subprocess.Popen(  # another run holds the folder's lock
        [
            sys.executable,
            "-c",
            "import sys, time, filelock; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(600)",
            str(run / "run.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        status, _, err = run_cli(capsys, "run", str(write_recipe(in_tmp)))
        assert status == 2
        assert "another compress run is using runs/tiny" in err
        assert not (run / "run.json").exists()
    finally:
        holder.kill()  # killed: the operating system lets go of its lock
        holder.wait()
    status, _, err = run_cli(capsys, "run", str(write_recipe(in_tmp)))
    assert status == 0, err


def test_the_plan_of_a_new_folder_names_each_file_made_first_once(in_tmp, capsys):
    status, out, err = run_cli(capsys, "run", "--dry-run", str(write_recipe(in_tmp)))
    assert status == 0, err
    assert "bench           runs: teacher.onnx, student.onnx, student.int8.onnx are made first" in out
    assert not (in_tmp / "runs").exists()
