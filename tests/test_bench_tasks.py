"""``compress bench`` of multi-label and regression models: the task's metrics per model and provider, their
change against the baseline (marked when worse), the tables, the plot's axis and Pareto front, the recipe
summary, and models of different tasks refused."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits

from compress.artifacts import manifest_path
from compress.cli import main
from compress.data import load_dataset_for
from compress.measure.report import _quality, load_report, pareto_front, plot_figure, table_rows
from compress.measure.report_model import validate_report
from compress.pipeline import summary_rows, summary_table
from compress.stages.bench import BenchConfig, bench
from compress.stages.export import ExportConfig, export
from compress.stages.train import TrainConfig, train
from compress.tasks import TASKS

QUICK = dict(batch_sizes=[1, 4], threads=[1], warmup=1, min_runs=5, min_time=0.02, memory=False)
QUICK_CLI = ["--batch-sizes", "1,4", "--threads", "1", "--warmup", "1", "--min-runs", "5", "--min-time", "0.02"]
WORSE = "worse than baseline"


def _train_and_export(folder, name, data, **settings):
    checkpoint = folder / f"{name}.pt"
    train(TrainConfig(model="mlp", data=data, out=str(checkpoint), device="cpu", **settings))
    export(ExportConfig(checkpoint=str(checkpoint), out=str(folder / f"{name}.onnx"), exporter="torchscript"))
    return folder / f"{name}.onnx"


@pytest.fixture(scope="module")
def multilabel_models(tmp_path_factory):
    """Digits as three 0/1 labels (even, >= 5, divisible by 3): a trained MLP and a much weaker one."""
    folder = tmp_path_factory.mktemp("multilabel")
    x, digit = load_digits(return_X_y=True)
    x = (x.reshape(-1, 1, 8, 8) * 16).clip(0, 255).astype(np.uint8)
    y = np.stack([digit % 2 == 0, digit >= 5, digit % 3 == 0], axis=1).astype(np.uint8)
    np.savez(
        folder / "ml.npz",
        x_train=x[:1200],
        y_train=y[:1200],
        x_test=x[1200:],
        y_test=y[1200:],
        labels=np.array(["even", "at least 5", "divisible by 3"]),
    )
    data = f"npz:{folder / 'ml.npz'}"
    good = _train_and_export(folder, "good", data, epochs=3)
    weak = _train_and_export(folder, "weak", data, epochs=1, model_args={"hidden": [4]}, lr=1e-4)
    return good, weak


@pytest.fixture(scope="module")
def regression_models(tmp_path_factory):
    """An MLP on the diabetes regression data (one target) and a much weaker one."""
    folder = tmp_path_factory.mktemp("regression")
    good = _train_and_export(folder, "good", "diabetes", epochs=20, batch_size=32)
    weak = _train_and_export(folder, "weak", "diabetes", epochs=1, batch_size=32, model_args={"hidden": [16]}, lr=1e-4)
    return good, weak


@pytest.fixture(scope="module")
def multilabel_report(multilabel_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml-report") / "report"
    return bench(BenchConfig(models=[str(m) for m in multilabel_models], report=str(folder), **QUICK)), folder


@pytest.fixture(scope="module")
def regression_report(regression_models, tmp_path_factory):
    """Benched through the command line."""
    folder = tmp_path_factory.mktemp("r-report") / "report"
    main(["bench", *map(str, regression_models), "--report", str(folder), *QUICK_CLI, "--no-memory"])
    return load_report(folder), folder


def _outputs_and_targets(model):
    """The model's first output on its test split through onnxruntime, and the targets in their own units."""
    manifest = json.loads(manifest_path(model).read_text())
    dataset = load_dataset_for(str(model), manifest, None, None)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: dataset.x_test})[0]
    return outputs, dataset.in_units(dataset.y_test)


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_the_report_holds_every_metric_of_the_task_as_measured_by_hand(
    kind, multilabel_models, regression_models, multilabel_report, regression_report
):
    models, (report, _) = {
        "multilabel": (multilabel_models, multilabel_report),
        "regression": (regression_models, regression_report),
    }[kind]
    validate_report(report)
    task = TASKS[kind]
    (base_outputs, y), (weak_outputs, weak_y) = map(_outputs_and_targets, models)
    assert np.array_equal(y, weak_y) and y.ndim == 2
    expected = [task.measure(base_outputs, y), task.measure(weak_outputs, y)]
    base, weak = report["models"]
    for entry, metrics in zip((base, weak), expected):
        assert entry["task"] == kind and entry["accuracy_not_measured"] is None
        cpu = entry["providers"]["cpu"]
        assert set(cpu["metrics"]) == set(task.metrics)
        for name in task.metrics:
            assert cpu["metrics"][name] == pytest.approx(metrics[name], rel=1e-5, abs=1e-7), name
        assert cpu["top1"] is None and cpu["top5"] is None and cpu["accuracy_delta_points"] is None
        assert cpu["test_samples"] == len(y)
    loss = task.loss_points(expected[0], expected[1])
    assert loss > 0  # the weak model is worse: lower mAP, higher RMSE
    assert weak["providers"]["cpu"]["metric_loss_points"] == pytest.approx(loss, rel=1e-4)
    assert base["providers"]["cpu"]["metric_loss_points"] == 0.0
    # against the baseline: label decisions kept (multilabel), none for regression; the distances as ever
    agreement = weak["providers"]["cpu"]["agreement_with_baseline"]
    if kind == "multilabel":
        kept = float(np.mean((base_outputs >= 0) == (weak_outputs >= 0)))
        assert agreement == pytest.approx(kept) and base["providers"]["cpu"]["agreement_with_baseline"] == 1.0
    else:
        assert agreement is None and base["providers"]["cpu"]["agreement_with_baseline"] is None
    assert weak["providers"]["cpu"]["fidelity_to_baseline"]["relative_l2"] > 0


@pytest.mark.parametrize(
    "kind, columns, absent",
    [
        ("multilabel", "| mAP % (Δ pts) | micro-F1 % | macro-F1 % | vs baseline |", "RMSE"),
        ("regression", "| RMSE (Δ %) | MAE | R² | vs baseline |", "mAP"),
    ],
)
def test_the_tables_name_the_metrics_and_mark_the_worse_model(
    kind, columns, absent, multilabel_report, regression_report
):
    report, folder = multilabel_report if kind == "multilabel" else regression_report
    page = (folder / "report.md").read_text()
    assert columns in page and "top-1" not in page and absent not in page
    rows = {row[0]: row for row in table_rows(report)}
    base, weak = (m["name"] for m in report["models"])
    assert WORSE in rows["weak.onnx"][7] and WORSE not in " ".join(rows["good.onnx"])
    metrics = report["models"][0]["providers"]["cpu"]["metrics"]
    primary = 100 * metrics["map"] if kind == "multilabel" else metrics["rmse"]
    assert float(rows[base][7]) == pytest.approx(primary, rel=1e-3)  # the baseline: its value, no change
    loss = report["models"][1]["providers"]["cpu"]["metric_loss_points"]
    if kind == "multilabel":  # mAP points, signed as mAP moves: down
        assert f"(-{loss:.2f}, {WORSE})" in rows[weak][7]
        assert rows[weak][10].startswith("labels kept ")
        assert f"mAP {loss:.2f} points lower than the baseline's" in page
        assert "keeps " in page and "of the baseline's label decisions" in page
    else:  # RMSE up, in percent of the baseline's
        assert f"(+{loss:.2f}%, {WORSE})" in rows[weak][7]
        assert rows[weak][10].startswith("rel. L2 ")
        assert f"RMSE {loss:.2f}% higher than the baseline's" in page and "(lower is better)" in page
    assert "worse than the baseline" in page
    assert "worse than the baseline" in (folder / "report.html").read_text()
    assert f"`{base}`" in page


def test_the_plot_shows_the_primary_metric_with_its_direction(multilabel_report, regression_report):
    for (report, folder), title, label, higher in (
        (multilabel_report, "mAP", "mAP, %, higher is better", True),
        (regression_report, "RMSE", "RMSE (target units), lower is better", False),
    ):
        assert (folder / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        quality = _quality(report)
        assert quality.label == label and quality.higher_is_better is higher
        figure = plot_figure(report)
        assert figure._supylabel.get_text() == label
        assert figure._suptitle.get_text() == f"{title} against latency"


def test_the_pareto_front_of_an_error_keeps_the_lowest():
    points = [(1.0, 50.0), (2.0, 40.0), (3.0, 45.0), (0.5, 60.0)]  # latency, RMSE
    assert pareto_front(points, higher_is_better=False) == [3, 0, 1]
    assert pareto_front(points) == [3]  # as if higher were better: the fastest is also the best


def test_a_report_with_metrics_of_another_task_is_refused(regression_report):
    report = json.loads(json.dumps(regression_report[0]))
    report["models"][1]["providers"]["cpu"]["metrics"] = {"accuracy": 0.5}
    with pytest.raises(ValueError, match="a regression model's metrics are rmse, mae, r2"):
        validate_report(report)
    report = json.loads(json.dumps(regression_report[0]))
    report["models"][1]["task"] = "multilabel"
    report["models"][1]["providers"]["cpu"]["metrics"] = None
    with pytest.raises(ValueError, match="a report holds models of one task"):
        validate_report(report)


def test_models_of_different_tasks_are_refused_in_one_line(multilabel_models, regression_models, tmp_path, capsys):
    report = tmp_path / "report"
    args = ["bench", str(multilabel_models[0]), str(regression_models[0]), "--report", str(report), "--no-memory"]
    code, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "good.onnx (the baseline) is a multilabel model but " in err and "good.onnx is a regression model" in err
    assert not report.exists()


def test_without_targets_the_metrics_are_not_measured_and_a_model_of_unknown_task_joins(regression_models, tmp_path):
    """Inputs without targets: no metrics; a manifest-less copy (task unknown) is judged as a regressor."""
    model = regression_models[0]
    manifest = json.loads(manifest_path(model).read_text())
    x_test = load_dataset_for(str(model), manifest, None, None).x_test
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **{session.get_inputs()[0].name: x_test})
    foreign = tmp_path / "foreign.onnx"
    shutil.copyfile(model, foreign)
    folder = tmp_path / "report"
    report = bench(BenchConfig(models=[str(model), str(foreign)], report=str(folder), data=f"npz:{inputs}", **QUICK))
    for entry in report["models"]:
        assert entry["task"] == "regression" and "has no targets" in entry["accuracy_not_measured"]
        cpu = entry["providers"]["cpu"]
        assert cpu["metrics"] is None and cpu["metric_loss_points"] is None and cpu["agreement_with_baseline"] is None
    assert report["models"][1]["providers"]["cpu"]["fidelity_to_baseline"]["relative_l2"] == 0.0
    page = (folder / "report.md").read_text()
    assert "**metrics not measured**" in page and "accuracy not measured" not in page
    assert "| RMSE (Δ %) | MAE | R² |" in page


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_the_recipe_summary_shows_the_primary_metric_and_its_change(
    kind, multilabel_models, regression_models, multilabel_report, regression_report
):
    models, (report, folder) = {
        "multilabel": (multilabel_models, multilabel_report),
        "regression": (regression_models, regression_report),
    }[kind]
    plan = SimpleNamespace(report_dir=folder, variants=[("teacher", models[0]), ("student", models[1])])
    rows = summary_rows(plan)
    assert [r["task"] for r in rows] == [kind, kind]
    loss = report["models"][1]["providers"]["cpu"]["metric_loss_points"]
    assert (
        rows[1]["metric_loss_points"] == loss
        and rows[1]["metrics"] == report["models"][1]["providers"]["cpu"]["metrics"]
    )
    lines = summary_table(rows).splitlines()
    student = next(line for line in lines if line.startswith("student"))
    if kind == "multilabel":
        assert lines[0].split()[:4] == ["variant", "mAP", "%", "Δ"]
        mean_ap = 100 * rows[1]["metrics"]["map"]
        assert f"{mean_ap:.2f}" in student and f"-{loss:.2f} worse" in student
        assert "mAP (higher is better)" in lines[-1]
    else:
        assert lines[0].split()[:4] == ["variant", "RMSE", "Δ", "%"]
        assert f"+{loss:.2f}% worse" in student
        assert "RMSE (lower is better)" in lines[-1]
    teacher = next(line for line in lines if line.startswith("teacher"))
    assert "worse" not in teacher
