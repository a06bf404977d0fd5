"""Teachers compress did not make: probabilities instead of logits, inputs normalised in a way
only the user knows, and students that end up larger than their teacher."""

import json
import logging
import re
import warnings

import pytest
import torch
from test_cli import run_cli

from compress.artifacts import load_checkpoint, manifest_path
from compress.distillation.teachers import Teacher, looks_like_probabilities
from compress.modelspec import model_from_checkpoint
from compress.pipeline import build_plan
from compress.recipe import load_recipe
from compress.stages.distill import DistillConfig, distill
from compress.stages.prune import PruneConfig, prune
from compress.stages.train import TrainConfig, train

TEACHER_ARGS = {"hidden": [64]}
STUDENT_ARGS = {"hidden": [32]}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """One trained teacher on digits, as a compress checkpoint and as files without a manifest:
    ONNX and TorchScript, with and without a softmax head."""
    folder = tmp_path_factory.mktemp("teachers")
    checkpoint = folder / "teacher.pt"
    train(
        TrainConfig(
            model="mlp", model_args=TEACHER_ARGS, data="digits", out=str(checkpoint), epochs=4, lr=1e-2, device="cpu"
        )
    )
    model = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint).eval()
    softmax = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    example = torch.zeros(2, 1, 8, 8)
    found = {"checkpoint": checkpoint}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, module in (("plain", model), ("softmax", softmax)):
            found[f"{name}.onnx"] = folder / f"{name}.onnx"
            torch.onnx.export(
                module,
                (example,),
                str(found[f"{name}.onnx"]),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}},
                dynamo=False,
            )
            found[f"{name}.ts"] = folder / f"{name}.ts"
            torch.jit.save(torch.jit.trace(module, example), str(found[f"{name}.ts"]))
    return found


@pytest.fixture(autouse=True)
def cwd(tmp_path, monkeypatch):
    """Every test runs in an empty working directory, which it must leave empty."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    yield folder
    assert not list(folder.iterdir())


def student(tmp_path, teacher, name="student.pt", **settings):
    settings = {"model": "mlp", "model_args": STUDENT_ARGS, "epochs": 2, "lr": 1e-2, "device": "cpu", **settings}
    return distill(DistillConfig(teacher=str(teacher), data="digits", out=str(tmp_path / name), **settings))


def weights(path):
    return load_checkpoint(path)["state_dict"]


def one_line_refusal(capsys, *args):
    status, out, err = run_cli(capsys, *args)
    assert status == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err


# -- teachers that output probabilities ----------------------------------------------------------


def test_probabilities_are_told_apart_from_logits():
    logits = torch.randn(64, 10) * 3
    probs = logits.softmax(dim=1)
    assert looks_like_probabilities(probs)
    assert not looks_like_probabilities(logits)
    assert not looks_like_probabilities(logits.relu())  # non-negative, but rows do not sum to 1
    assert not looks_like_probabilities(probs * 1.01)
    assert looks_like_probabilities(probs + 1e-5)  # within the tolerance
    assert not looks_like_probabilities(torch.tensor([[1.2, -0.2, 0.0]]))  # sums to 1, one is negative


def test_probabilities_become_logits_that_give_them_back(teachers):
    logits = torch.randn(8, 10) * 5
    teacher = Teacher(teachers["softmax.onnx"], "onnx", outputs="probs")
    converted = teacher.as_logits(logits.softmax(dim=1))
    torch.testing.assert_close(converted.softmax(dim=1), logits.softmax(dim=1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(converted.mean(dim=1), torch.zeros(8), atol=1e-5, rtol=0)
    # a softmax that underflowed to 0 gives a finite logit
    assert torch.isfinite(teacher.as_logits(torch.tensor([[1.0, 0.0]]))).all()


@pytest.mark.parametrize("kind", ["onnx", "ts"])
def test_a_softmax_teacher_is_detected_and_distilled_from_its_log(tmp_path, teachers, kind, caplog):
    with caplog.at_level(logging.INFO, logger="compress"):
        manifest = student(tmp_path, teachers[f"softmax.{kind}"], preprocessing="fit")
    assert manifest["config"]["teacher_outputs"] == "auto" and manifest["config"]["temperature"] == 4.0
    assert manifest["metrics"]["teacher_outputs"] == "probs"
    assert manifest["metrics"]["test_accuracy"] > 0.7  # chance is 0.1
    assert "outputs probabilities" in caplog.text and "distilling from their log" in caplog.text


def test_a_softmax_head_changes_nothing_the_student_learns(tmp_path, teachers):
    from_logits = student(tmp_path, teachers["plain.onnx"], "logits.pt", preprocessing="fit")
    from_probs = student(tmp_path, teachers["softmax.onnx"], "probs.pt", preprocessing="fit")
    assert from_logits["metrics"]["teacher_outputs"] == "logits"
    assert from_probs["metrics"]["test_accuracy"] == from_logits["metrics"]["test_accuracy"]
    for key, value in weights(tmp_path / "logits.pt").items():
        torch.testing.assert_close(weights(tmp_path / "probs.pt")[key], value, atol=1e-4, rtol=0)


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_probabilities_are_converted_in_the_cache_as_when_the_teacher_runs_live(tmp_path, teachers, cache):
    live = student(tmp_path, teachers["softmax.onnx"], "live.pt", preprocessing="fit", teacher_cache="off", epochs=1)
    cached = student(
        tmp_path, teachers["softmax.onnx"], "cached.pt", preprocessing="fit", teacher_cache=cache, epochs=1
    )
    assert live["metrics"]["teacher_outputs"] == cached["metrics"]["teacher_outputs"] == "probs"
    assert cached["metrics"]["teacher_cache"] == cache
    for key, value in weights(tmp_path / "live.pt").items():
        torch.testing.assert_close(weights(tmp_path / "cached.pt")[key], value, atol=1e-4, rtol=0)
    assert not list(tmp_path.glob(".cached.teacher-cache*"))


def test_logits_for_a_softmax_teacher_are_taken_as_asked_with_a_warning(tmp_path, teachers, caplog):
    teacher, settings = teachers["softmax.onnx"], {"preprocessing": "fit", "alpha": 1.0}
    detected = student(tmp_path, teacher, "auto.pt", **settings)
    with caplog.at_level(logging.WARNING, logger="compress"):
        forced = student(tmp_path, teacher, "logits.pt", teacher_outputs="logits", **settings)
    assert forced["metrics"]["teacher_outputs"] == "logits"
    warned = [
        r for r in caplog.records if r.levelno == logging.WARNING and "looks like it outputs probabilities" in r.message
    ]
    assert len(warned) == 1 and "--teacher-outputs auto" in warned[0].message

    def confidence(name):  # mean top-1 probability of the student on the test split
        from compress.data import load_dataset

        model = model_from_checkpoint(load_checkpoint(tmp_path / name), tmp_path / name).eval()
        x = torch.from_numpy(load_dataset("digits").x_test)
        with torch.no_grad():
            return model(x).softmax(dim=1).max(dim=1).values.mean().item()

    # probabilities taken for logits are nearly uniform soft targets: the student learns to be unsure
    assert confidence("logits.pt") < 0.7 * confidence("auto.pt")
    assert detected["metrics"]["teacher_outputs"] == "probs"


def test_probs_for_a_teacher_with_negative_outputs_is_refused(tmp_path, teachers, capsys):
    out = tmp_path / "s.pt"
    args = ["--teacher", teachers["plain.onnx"], "--preprocessing", "fit", "--teacher-outputs", "probs"]
    err = one_line_refusal(capsys, "distill", *map(str, args), "--out", str(out), "--epochs", "1")
    assert "outputs negative values" in err and "not probabilities" in err and "--teacher-outputs logits" in err
    assert not out.exists() and not manifest_path(out).exists()


def test_teacher_outputs_takes_only_its_three_values(tmp_path, teachers, capsys):
    err = one_line_refusal(
        capsys, "distill", "--teacher", str(teachers["checkpoint"]), "--teacher-outputs", "softmax", "--out", "s.pt"
    )
    assert "--teacher-outputs" in err and "auto" in err and "probs" in err


# -- how the inputs of a teacher without a manifest were normalised -----------------------------


@pytest.mark.parametrize("kind", ["plain.onnx", "plain.ts"])
def test_a_teacher_without_a_manifest_needs_preprocessing(tmp_path, teachers, kind, capsys):
    out = tmp_path / "s.pt"
    err = one_line_refusal(capsys, "distill", "--teacher", str(teachers[kind]), "--out", str(out), "--epochs", "1")
    assert f"teacher {teachers[kind]} has no manifest, so how its inputs were normalised is unknown" in err
    assert "pass --preprocessing fit" in err and "scale" in err and "raw" in err
    assert not list(tmp_path.glob("s.*")) and not list(tmp_path.glob(".s.*"))


def test_the_preprocessing_named_is_what_teacher_and_student_see(tmp_path, teachers):
    manifest = student(tmp_path, teachers["plain.onnx"], preprocessing="scale", epochs=1)
    assert manifest["config"]["preprocessing"] == "scale"
    assert manifest["preprocessing"]["mean"] == [0.0] and manifest["preprocessing"]["std"] == [1.0]
    assert manifest["preprocessing"]["scale"] == 1 / 16  # digits: pixels 0..16 to [0, 1]
    # fit: mean/std of the same training split, as compress train fitted them: the teacher sees what it was trained on
    fitted = student(tmp_path, teachers["plain.onnx"], "fitted.pt", preprocessing="fit", epochs=1)
    trained = json.loads(manifest_path(teachers["checkpoint"]).read_text())
    assert fitted["preprocessing"] == trained["preprocessing"]
    assert fitted["metrics"]["teacher_test_accuracy"] == pytest.approx(trained["metrics"]["test_accuracy"], abs=0.003)


def test_a_teachers_manifest_wins_over_preprocessing(tmp_path, teachers, caplog):
    with caplog.at_level(logging.INFO, logger="compress"):
        manifest = student(tmp_path, teachers["checkpoint"], preprocessing="raw", epochs=1)
    assert "--preprocessing raw is ignored (the manifest wins)" in caplog.text
    assert manifest["preprocessing"] == json.loads(manifest_path(teachers["checkpoint"]).read_text())["preprocessing"]


def test_prune_asks_the_same_of_a_teacher_without_a_manifest(tmp_path, teachers, capsys):
    out = tmp_path / "pruned.pt"
    args = [str(teachers["checkpoint"]), "--amount", "0.5", "--teacher", str(teachers["plain.onnx"])]
    err = one_line_refusal(capsys, "prune", *args, "--out", str(out), "--epochs", "1")
    assert "has no manifest" in err and "pass --preprocessing fit" in err
    assert not out.exists()
    manifest = prune(
        PruneConfig(
            checkpoint=str(teachers["checkpoint"]),
            teacher=str(teachers["softmax.onnx"]),
            preprocessing="fit",
            amount=0.5,
            epochs=1,
            out=str(out),
        )
    )
    assert manifest["metrics"]["teacher_outputs"] == "probs"
    assert manifest["pruning"]["after"]["params"] < manifest["pruning"]["before"]["params"]


# -- recipes ---------------------------------------------------------------------------------------


def recipe(tmp_path, teacher_table, student_table=""):
    path = tmp_path / "recipe.toml"
    path.write_text(
        f'out = "{tmp_path / "run"}"\ndata = "digits"\n{teacher_table}[student]\n{student_table}'
        'model = "mlp"\nmodel_args = { hidden = [16] }\nepochs = 1\ndevice = "cpu"\n'
        "[bench]\nbatch_sizes = [1]\nwarmup = 1\nmin_runs = 7\nmin_time = 0.02\nmemory = false\n"
    )
    return path


@pytest.mark.parametrize(
    "teacher, preprocessing, student_table, message",
    [
        ("plain.onnx", None, "", r"line 4: teacher .*plain.onnx has no manifest, .* add preprocessing = "),
        ("checkpoint", "fit", "", r"line 5: teacher .*teacher.pt has a manifest, .*; remove preprocessing"),
        ("plain.onnx", "zscore", "", r"line 5: preprocessing must be one of fit, scale, raw, got 'zscore'"),
        ("plain.onnx", "fit", 'preprocessing = "fit"\n', r"line 7: \[student\] preprocessing is set by the pipeline"),
    ],
)
def test_a_recipe_names_the_preprocessing_of_a_teacher_without_a_manifest(
    tmp_path, teachers, capsys, teacher, preprocessing, student_table, message
):
    table = f'[teacher]\npath = "{teachers[teacher]}"\n'
    if preprocessing:
        table += f'preprocessing = "{preprocessing}"\n'
    err = one_line_refusal(capsys, "run", str(recipe(tmp_path, table, student_table)))
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_a_recipes_preprocessing_reaches_distill_and_bench(tmp_path, teachers):
    table = f'[teacher]\npath = "{teachers["softmax.onnx"]}"\npreprocessing = "fit"\n'
    plan = build_plan(load_recipe(recipe(tmp_path, table)))
    steps = {step.name: step.config for step in plan.steps}
    assert list(steps) == ["distill", "export-student", "bench"]
    assert steps["distill"].preprocessing == "fit" and steps["distill"].teacher == str(teachers["softmax.onnx"])
    assert steps["bench"].preprocessing == "fit" and steps["bench"].data == "digits"


@pytest.mark.slow
def test_a_recipe_with_a_softmax_onnx_teacher_runs_to_the_report(tmp_path, teachers, capsys):
    table = f'[teacher]\npath = "{teachers["softmax.onnx"]}"\npreprocessing = "fit"\n'
    status, out, err = run_cli(capsys, "run", str(recipe(tmp_path, table)))
    assert status == 0, err
    assert "outputs probabilities" in out + err
    distilled = json.loads((tmp_path / "run" / "student.pt.json").read_text())
    assert distilled["metrics"]["teacher_outputs"] == "probs" and distilled["config"]["preprocessing"] == "fit"
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["softmax.onnx", "student.onnx"]


# -- a student larger than its teacher ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["checkpoint", "plain.onnx"])
def test_a_student_larger_than_its_teacher_is_warned_about(tmp_path, teachers, kind, caplog):
    teacher_params = json.loads(manifest_path(teachers["checkpoint"]).read_text())["model"]["params"]
    with caplog.at_level(logging.WARNING, logger="compress"):
        manifest = student(tmp_path, teachers[kind], model_args={"hidden": [256]}, preprocessing="fit", epochs=1)
    warned = [r.message for r in caplog.records if "is larger than teacher" in r.message]
    assert len(warned) == 1
    assert f"{manifest['model']['params']:,} params" in warned[0] and f"{teacher_params:,} params" in warned[0]
    if kind == "checkpoint":  # MACs are known of both
        assert f"{manifest['model']['macs']:,} MACs" in warned[0]


def test_a_smaller_student_is_not_warned_about(tmp_path, teachers, caplog):
    with caplog.at_level(logging.WARNING, logger="compress"):
        student(tmp_path, teachers["checkpoint"], epochs=1)
    assert "larger than teacher" not in caplog.text
