"""``compress quantize`` judges multi-label and regression models by their task: with targets, the task's primary
metric (mAP points lost, RMSE's rise in percent); without, changed label decisions or the relative L2 error,
never top-1 disagreements; a model without a recorded task is judged as before."""

import json
import math
import shutil

import numpy as np
import pytest
from sklearn.datasets import load_digits

from compress.artifacts import manifest_path, read_manifest, write_manifest
from compress.cli import main
from compress.data.model_data import load_model_data
from compress.feeds import Samples
from compress.measure.fidelity import (
    classifier_accuracy,
    compare_all,
    compare_outputs,
    decisions_changed,
    loss_measure,
)
from compress.onnx_io import load_any
from compress.stages import quantize as quantize_module
from compress.stages.export import ExportConfig, export
from compress.stages.quantize import QuantizeConfig, quantize, summary
from compress.stages.train import TrainConfig, train
from compress.tasks import TASKS


def digits_npz(path, targets):
    """The digits as npz data of 8x8 images, ``targets(digit, image)`` their y."""
    x, digit = load_digits(return_X_y=True)
    x = (x.reshape(-1, 1, 8, 8) * 16).clip(0, 255).astype(np.uint8)
    y = targets(digit, x)
    np.savez(path, x_train=x[:1200], y_train=y[:1200], x_test=x[1200:], y_test=y[1200:])
    return f"npz:{path}"


def trained(folder, data, epochs, **settings):
    checkpoint, out = folder / "m.pt", folder / "m.onnx"
    train(TrainConfig(model="mlp", data=data, out=str(checkpoint), epochs=epochs, device="cpu", **settings))
    export(ExportConfig(checkpoint=str(checkpoint), out=str(out)))
    return out


@pytest.fixture(scope="module")
def multilabel_onnx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multilabel")
    labels = lambda d, x: np.stack([d % 2 == 0, d >= 5, d % 3 == 0], axis=1).astype(np.uint8)  # noqa: E731
    return trained(folder, digits_npz(folder / "ml.npz", labels), 3)


@pytest.fixture(scope="module")
def regression_onnx(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("regression"), "diabetes", 20, batch_size=32)


@pytest.fixture(scope="module")
def two_target_onnx(tmp_path_factory):
    """A regression with two targets per sample: outputs (N, 2) that are not class scores."""
    folder = tmp_path_factory.mktemp("two_targets")
    targets = lambda d, x: np.stack([x.mean(axis=(1, 2, 3)) / 16, d * 0.5 + 0.25], 1).astype(np.float32)  # noqa: E731
    return trained(folder, digits_npz(folder / "two.npz", targets), 3)


def without_data(model, folder):
    """A copy of ``model`` whose manifest records its task but no data: judged on synthetic inputs."""
    copy = folder / f"nodata.{model.name}"
    shutil.copyfile(model, copy)
    write_manifest(copy, {**read_manifest(model), "data": None})
    return copy


def quantized(model, tmp_path, **overrides):
    settings = dict(model=str(model), out=str(tmp_path / "int8.onnx"), calibration_samples=128)
    return quantize(QuantizeConfig(**{**settings, **overrides}))


def assert_judged_by_the_task(manifest, kind, metric):
    m, task = manifest["metrics"], TASKS[kind]
    assert manifest["task"]["kind"] == kind and m["task"] == kind and m["metric"] == metric
    assert set(m["float_metrics"]) == set(m["task_metrics"]) == set(task.metrics)
    assert m["float_accuracy"] is None and m["accuracy"] is None and m["accuracy_drop_points"] is None
    expected = task.loss_points(m["float_metrics"], m["task_metrics"])
    assert m["metric_drop"] == pytest.approx(expected, abs=1e-6)
    assert m["fidelity"]["loss_points"] == m["metric_drop"] and m["fidelity"]["measure"] == task.loss_unit
    assert m["metric_drop_unit"] == task.loss_unit and m["fidelity"]["top1_agreement"] is None
    assert m["accuracy_split"] == m["fidelity"]["split"] == "val"
    return m


@pytest.mark.slow
def test_multilabel_is_judged_by_map_points_lost(multilabel_onnx, tmp_path):
    manifest = quantized(multilabel_onnx, tmp_path)
    m = assert_judged_by_the_task(manifest, "multilabel", "map")
    assert m["float_metrics"]["map"] > 0.8 and m["metric_drop_unit"] == "mAP points lost"
    assert 0 <= m["fidelity"]["decisions_changed"] < 0.05  # the label decisions are recorded beside
    lines = summary(manifest)
    line = next(line for line in lines if line.startswith("mAP (val): fp32 "))
    assert "int8" in line and "points lost" in line and "micro-F1" in line and "macro-F1" in line
    assert not any(line.startswith("accuracy") for line in lines)
    assert "label decisions kept" in next(line for line in lines if line.startswith("fidelity"))


@pytest.mark.slow
def test_regression_is_judged_by_the_rise_of_rmse(regression_onnx, tmp_path, capsys):
    out = tmp_path / "r.int8.onnx"
    main(["quantize", str(regression_onnx), "--out", str(out), "--calibration-samples", "128"])
    text = capsys.readouterr().out
    manifest = json.loads(manifest_path(out).read_text())
    m = assert_judged_by_the_task(manifest, "regression", "rmse")
    assert m["metric_drop_unit"] == "RMSE rise in percent" and m["fidelity"]["resolution_points"] == 0.0
    line = next(line for line in text.splitlines() if line.startswith("RMSE (val): fp32 "))
    assert f"({m['metric_drop']:+.2f}%)" in line and "MAE" in line and "R²" in line
    assert "accuracy" not in text


@pytest.mark.slow
def test_a_regression_budget_out_of_reach_is_an_error_unless_allowed(regression_onnx, tmp_path, monkeypatch, capsys):
    """Targets that fp32 nearly meets (its own outputs, barely moved): int8's error raises RMSE far over any
    budget, and with no node left to keep in float the budget cannot be met."""
    float_model = load_any(regression_onnx)
    data = load_model_data(regression_onnx, float_model, read_manifest(regression_onnx), None, None, {}, {}, 10)
    x = np.concatenate([data.train.arrays["input"], data.test.arrays["input"]])
    (fp32,) = float_model.predict(Samples({"input": x}))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "near.npz", input=x, y=fp32 + rng.normal(0, 1e-3, fp32.shape).astype(np.float32))
    monkeypatch.setattr(quantize_module, "_quantizable_nodes", lambda path: [])  # nothing may stay float
    out = tmp_path / "out" / "r.int8.onnx"
    out.parent.mkdir()
    args = ["quantize", str(regression_onnx), "--data", f"npz:{tmp_path / 'near.npz'}", "--out", str(out)]
    args += ["--max-accuracy-drop", "0.5", "--calibration-samples", "64"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2 and len(error_lines) == 1
    assert "misses the fidelity budget: RMSE" in error_lines[0] and "budget 0.5% RMSE rise" in error_lines[0]
    assert "nothing written" in error_lines[0] and not any(out.parent.iterdir())
    main(args + ["--allow-over-budget"])
    assert "RMSE (val): fp32" in capsys.readouterr().out
    manifest = json.loads(manifest_path(out).read_text())
    m = manifest["metrics"]
    assert manifest["quantization"]["over_budget"] and m["metric_drop"] > 0.5
    assert m["metric_drop"] == pytest.approx(TASKS["regression"].loss_points(m["float_metrics"], m["task_metrics"]))


@pytest.mark.slow
def test_without_data_a_multilabel_model_is_judged_by_its_label_decisions(multilabel_onnx, tmp_path):
    manifest = quantized(without_data(multilabel_onnx, tmp_path), tmp_path, mode="dynamic")
    m, f = manifest["metrics"], manifest["metrics"]["fidelity"]
    assert f["split"] == "synthetic" and f["measure"] == "label decisions changed in percent"
    assert f["top1_agreement"] is None and f["loss_points"] == pytest.approx(100 * f["decisions_changed"])
    assert f["resolution_points"] == pytest.approx(100 / (f["samples"] * 3))
    assert m["float_metrics"] is None and m["task_metrics"] is None and m["metric_drop"] is None
    lines = summary(manifest)
    assert "label decisions kept" in next(line for line in lines if line.startswith("fidelity"))
    assert any(line.startswith("mAP not measured: no data") for line in lines)


@pytest.mark.slow
def test_a_model_without_a_recorded_task_is_judged_as_before(multilabel_onnx, tmp_path):
    """No manifest, no task: three float outputs per sample are class scores, judged by top-1 as always."""
    bare = tmp_path / "bare.onnx"
    shutil.copyfile(multilabel_onnx, bare)
    manifest = quantized(bare, tmp_path, mode="dynamic")
    f = manifest["metrics"]["fidelity"]
    assert f["measure"] == "top-1 disagreements in points" and f["top1_agreement"] is not None
    assert manifest["task"] is None and manifest["metrics"]["task"] == "classification"


@pytest.mark.slow
def test_several_regression_targets_are_never_judged_as_classes(two_target_onnx, tmp_path):
    m = assert_judged_by_the_task(quantized(two_target_onnx, tmp_path, mode="dynamic"), "regression", "rmse")
    assert m["fidelity"]["measure"] == "RMSE rise in percent"
    bare = without_data(two_target_onnx, tmp_path)
    manifest = quantized(bare, tmp_path, mode="dynamic", out=str(tmp_path / "nodata.int8.onnx"))
    f = manifest["metrics"]["fidelity"]
    assert f["measure"] == "relative L2 error in percent" and f["top1_agreement"] is None
    assert f["loss_points"] == pytest.approx(100 * f["relative_l2"])


def test_the_label_free_measure_comes_from_the_task_when_known():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 4)).astype(np.float32)
    candidate = reference.copy()
    candidate[:5, 0] = -candidate[:5, 0]  # five of the 200 decisions flip (their logits change sign)
    names = ["out"]
    assert loss_measure(reference) == loss_measure(reference, "classification") == "top-1 disagreements in points"
    assert loss_measure(reference, "multilabel") == "label decisions changed in percent"
    assert loss_measure(reference, "regression") == "relative L2 error in percent"
    assert decisions_changed(reference, candidate) == pytest.approx(5 / 200)
    multilabel = compare_all([reference], [candidate], names, "multilabel")
    assert multilabel["loss_points"] == pytest.approx(100 * 5 / 200) and multilabel["top1_agreement"] is None
    regression = compare_all([reference], [candidate], names, "regression")
    assert regression["loss_points"] == pytest.approx(100 * regression["relative_l2"])
    assert "decisions_changed" not in regression and regression["top1_agreement"] is None
    assert compare_all([reference], [candidate], names) == compare_all([reference], [candidate], names, None)
    assert compare_outputs(reference, candidate)["top1_agreement"] is not None
    broken = candidate.copy()
    broken[0, 0] = np.nan
    assert math.isnan(decisions_changed(reference, broken))
    # label sets are not class indices: no accuracy, not a crash
    assert classifier_accuracy(reference, (reference > 0).astype(np.float32)) is None


def test_the_budget_help_says_what_the_points_are_for_each_task():
    description = QuantizeConfig.model_fields["max_accuracy_drop"].description
    for words in ("accuracy points", "mAP points", "RMSE", "top-1", "label decisions", "relative L2"):
        assert words in description
