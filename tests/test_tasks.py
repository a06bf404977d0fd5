"""Multi-label classification and regression: losses, metrics, task inference and its errors, the csv/tsv
sources, and each task through train, distill, prune and export on small real data."""

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.datasets import load_digits
from test_cli import run_cli

from compress.artifacts import load_checkpoint, manifest_path
from compress.data import load_dataset
from compress.distillation.losses import soft_sigmoid_bce
from compress.errors import CompressError
from compress.modelspec import model_from_checkpoint
from compress.stages.distill import DistillConfig, distill
from compress.stages.export import ExportConfig, export
from compress.stages.train import TrainConfig, train
from compress.tasks import TASKS, infer_task

MULTILABEL, REGRESSION = TASKS["multilabel"], TASKS["regression"]
LABEL_NAMES = ["even", "five-or-more", "multiple-of-three"]


def digit_label_sets(digits: np.ndarray) -> np.ndarray:
    """Three labels per digit, several of which may hold at once."""
    return np.stack([digits % 2 == 0, digits >= 5, digits % 3 == 0], axis=1).astype(np.uint8)


@pytest.fixture(scope="module")
def multilabel_npz(tmp_path_factory):
    x, y = load_digits(return_X_y=True)
    x = (x.reshape(-1, 1, 8, 8) * 16).clip(0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("multilabel") / "labels.npz"
    sets = digit_label_sets(y)
    np.savez(
        path, x_train=x[:1400], y_train=sets[:1400], x_test=x[1400:], y_test=sets[1400:], labels=np.array(LABEL_NAMES)
    )
    return f"npz:{path}"


def fit(out, data, epochs=3, **settings):
    settings = {"model": "mlp", "model_args": {"hidden": [64]}, "device": "cpu", **settings}
    return train(TrainConfig(data=data, out=str(out), epochs=epochs, **settings))


@pytest.fixture(scope="module")
def multilabel_teacher(tmp_path_factory, multilabel_npz):
    out = tmp_path_factory.mktemp("ml-teacher") / "teacher.pt"
    fit(out, multilabel_npz, epochs=6, model_args={"hidden": [128]})
    return out


@pytest.fixture(scope="module")
def regression_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("reg-teacher") / "teacher.pt"
    fit(out, "diabetes", epochs=20, batch_size=32, model_args={"hidden": [64]})
    return out


# --- losses and metrics against hand-computed values ----------------------------------------


def test_soft_sigmoid_bce_is_the_tempered_binary_cross_entropy_times_t_squared():
    student, teacher, t = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 3.0]]), 2.0
    expected = 0.0
    for s, z in ((2.0, 1.0), (-1.0, 3.0)):
        q, p = 1 / (1 + math.exp(-s / t)), 1 / (1 + math.exp(-z / t))
        expected += -(p * math.log(q) + (1 - p) * math.log(1 - q))
    assert soft_sigmoid_bce(student, teacher, t).item() == pytest.approx(t**2 * expected / 2, rel=1e-6)


def test_multilabel_distillation_mixes_soft_and_hard_bce_by_alpha():
    student, teacher = torch.tensor([[0.5, -2.0]]), torch.tensor([[3.0, -1.0]])
    y = torch.tensor([[1.0, 0.0]])
    soft = soft_sigmoid_bce(student, teacher, 4.0).item()
    hard = -(math.log(1 / (1 + math.exp(-0.5))) + math.log(1 - 1 / (1 + math.exp(2.0)))) / 2
    mixed = MULTILABEL.distillation_loss(student, teacher, y, 4.0, 0.7, "kl").item()
    assert mixed == pytest.approx(0.7 * soft + 0.3 * hard, rel=1e-6)


def test_regression_distillation_is_mse_to_teacher_and_targets_mixed_by_alpha():
    student, teacher, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [2.0]]), torch.tensor([[0.0], [5.0]])
    to_teacher, to_targets = (1 + 1) / 2, (1 + 4) / 2
    loss = REGRESSION.distillation_loss(student, teacher, y, 4.0, 0.25, "kl").item()
    assert loss == pytest.approx(0.25 * to_teacher + 0.75 * to_targets)


def test_multilabel_metrics_by_hand():
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=np.float32)
    logits = np.array([[2.0, -1.0], [0.5, -0.5], [-1.0, 1.0], [-2.0, 3.0]])  # decisions: 10, 10, 01, 01
    found = MULTILABEL.measure(logits, y)
    # label 0: tp 2, fp 0, fn 0 -> F1 1; label 1: tp 1, fp 1, fn 1 -> F1 0.5; micro: tp 3, fp 1, fn 1 -> 0.75
    assert found["micro_f1"] == pytest.approx(0.75) and found["macro_f1"] == pytest.approx(0.75)
    # label 0 ranks both positives first: AP 1; label 1 ranks 3.0 (pos), 1.0 (neg), -0.5 (pos): (1 + 2/3) / 2
    assert found["map"] == pytest.approx((1 + (1 + 2 / 3) / 2) / 2)


def test_regression_metrics_by_hand():
    y, predicted = np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([[1.5], [2.0], [2.0], [4.0]])
    found = REGRESSION.measure(predicted, y)
    assert found["rmse"] == pytest.approx(math.sqrt((0.25 + 1) / 4))
    assert found["mae"] == pytest.approx(1.5 / 4)
    assert found["r2"] == pytest.approx(1 - 1.25 / 5)


def test_loss_points_count_points_for_fractions_and_percent_rise_for_errors():
    assert MULTILABEL.loss_points({"map": 0.9}, {"map": 0.885}) == pytest.approx(1.5)
    assert REGRESSION.loss_points({"rmse": 2.0}, {"rmse": 2.1}) == pytest.approx(5.0)
    assert REGRESSION.loss_points({"rmse": 2.0}, {"rmse": 1.9}) == pytest.approx(-5.0)


# --- task inference ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("y", "requested", "task"),
    [
        (np.array([0, 2, 1]), None, "classification"),
        (np.array([0.0, 2.0, 1.0]), None, "classification"),
        (np.array([0.5, 2.0, 1.0]), None, "regression"),
        (np.array([0, 2, 1]), "regression", "regression"),
        (np.array([[0, 1], [1, 1]], dtype=np.uint8), None, "multilabel"),
        (np.array([[True, False]]), None, "multilabel"),
        (np.array([[0.0, 1.5], [1.0, 1.0]]), None, "regression"),
        (np.array([[0, 1], [1, 1]]), "regression", "regression"),
    ],
)
def test_task_is_inferred_from_the_targets(y, requested, task):
    assert infer_task(y, requested, "data").name == task


@pytest.mark.parametrize(
    ("y", "requested", "message"),
    [
        (np.array([0.5, 1.0]), "classification", "non-integer values \\(e.g. 0.5\\), which are not class indices"),
        (np.array([0, 1]), "multilabel", "needs one 0/1 vector per sample"),
        (np.array([[0, 2]]), "multilabel", "needs 0/1 targets, but they hold other values \\(e.g. 2"),
        (np.array([[0, 1]]), "classification", "needs one class index per sample"),
        (np.array([np.nan, 1.0]), None, "NaN or infinite"),
        (np.array(["a", "b"]), None, "are not numbers"),
        (np.zeros((2, 2, 2)), None, "targets of shape \\[2, 2, 2\\]"),
        (np.array([0, 1]), "ranking", "unknown task 'ranking'"),
    ],
)
def test_targets_that_cannot_be_the_task_are_refused(y, requested, message):
    with pytest.raises(CompressError, match=message):
        infer_task(y, requested, "data")


def test_npz_float_labels_for_a_classifier_are_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((20, 4)), y_train=rng.random(20), x_test=rng.random((5, 4)), y_test=np.ones(5))
    status, _, err = run_cli(capsys, "train", "--data", f"npz:{path}", "--task", "classification", "--out", "m.pt")
    assert status == 2 and err.count("\n") == 1 and "which are not class indices 0..K-1; use --task regression" in err


def test_a_test_split_of_another_kind_than_the_training_split_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path, x_train=rng.random((20, 4)), y_train=np.arange(20) % 3, x_test=rng.random((5, 4)), y_test=rng.random(5)
    )
    with pytest.raises(CompressError, match="y_test.*non-integer values"):
        load_dataset(f"npz:{path}")


def test_names_that_do_not_match_the_target_columns_are_refused(tmp_path):
    path = tmp_path / "d.npz"
    sets = digit_label_sets(np.arange(20) % 10)
    np.savez(path, x_train=np.zeros((20, 4)), y_train=sets, x_test=np.zeros((5, 4)), y_test=sets[:5], labels=["a", "b"])
    with pytest.raises(CompressError, match="names 2 labels but its targets have 3 columns"):
        load_dataset(f"npz:{path}")


# --- csv and tsv tables ------------------------------------------------------------------------


def write_table(path, rows, delimiter=","):
    path.write_text("\n".join(delimiter.join(str(v) for v in row) for row in rows) + "\n", encoding="utf-8")
    return path


def test_csv_with_several_target_columns_is_a_multi_output_regression(tmp_path):
    rng = np.random.default_rng(0)
    rows = [["a", "b", "c", "y1", "y2"]] + [
        [*np.round(rng.random(3), 3), rng.random(), rng.random()] for _ in range(50)
    ]
    dataset = load_dataset(f"csv:{write_table(tmp_path / 't.csv', rows)}?target=y1,y2")
    assert dataset.task.name == "regression" and dataset.labels == ["y1", "y2"]
    assert dataset.in_shape == (3,) and len(dataset.y_test) == 10 and dataset.y_train.shape[1] == 2
    # the targets are standardised on the training split, and come back in their units
    assert abs(dataset.y_train.mean()) < 0.2
    raw = np.array([r[3:] for r in rows[1:]], dtype=np.float32)
    back = dataset.in_units(np.concatenate([dataset.y_train, dataset.y_val, dataset.y_test]))
    np.testing.assert_allclose(np.sort(back, axis=0), np.sort(raw, axis=0), atol=1e-5)


def test_tsv_with_0_1_target_columns_and_a_test_file_is_multi_label(tmp_path):
    header = ["f1", "f2", "cat", "dog"]
    rows = [[i, i % 7, i % 2, int(i % 3 == 0)] for i in range(30)]
    write_table(tmp_path / "test.tsv", [header, *rows[:6]], "\t")
    train_file = write_table(tmp_path / "train.tsv", [header, *rows], "\t")
    dataset = load_dataset(f"tsv:{train_file}?target=cat,dog&test=test.tsv", val_fraction=0)
    assert dataset.task.name == "multilabel" and dataset.labels == ["cat", "dog"]
    assert len(dataset.y_train) == 30 and len(dataset.y_test) == 6


@pytest.mark.parametrize(
    ("content", "spec_tail", "message"),
    [
        ("a,b\n1,2\n", "?target=c", "has no column 'c'"),
        ("a,b\n1,x\n", "", "line 2, column 'b': 'x' is not a number"),
        ("a,b\n1,2,3\n", "", "line 2: 3 fields but the header has 2"),
        ("a,b\n", "", "needs a header row and at least one data row"),
        ("a,b\n1,2\n", "?target=a,b", "every column is a target"),
        ("a,b\n1,2\n", "?size=2", "bad table option 'size=2'"),
    ],
)
def test_bad_tables_are_refused_in_one_line(tmp_path, content, spec_tail, message):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(CompressError, match=message):
        load_dataset(f"csv:{path}{spec_tail}")


def test_a_table_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n1,\xff\xfe\n")
    with pytest.raises(CompressError, match="is not UTF-8 text"):
        load_dataset(f"csv:{path}")


# --- each task end to end ---------------------------------------------------------------------


def test_multilabel_train_records_task_metrics_and_label_names(multilabel_teacher):
    manifest = json.loads(manifest_path(multilabel_teacher).read_text())
    assert manifest["task"] == {"kind": "multilabel", "metric": "map", "threshold": 0.5}
    assert manifest["labels"] == LABEL_NAMES and manifest["output_spec"]["shape"] == [None, 3]
    metrics = manifest["metrics"]
    assert set(metrics["test_metrics"]) == {"map", "micro_f1", "macro_f1"}
    assert metrics["test_metrics"]["map"] > 0.8 and "test_accuracy" not in metrics
    assert load_checkpoint(multilabel_teacher)["task"]["kind"] == "multilabel"


def test_multilabel_distillation_learns_from_the_teacher(tmp_path, multilabel_teacher, multilabel_npz):
    config = DistillConfig(
        teacher=str(multilabel_teacher),
        model="mlp",
        model_args={"hidden": [16]},
        data=multilabel_npz,
        out=str(tmp_path / "student.pt"),
        epochs=3,
        alpha=1.0,
        device="cpu",
    )
    manifest = distill(config)
    teacher = json.loads(manifest_path(multilabel_teacher).read_text())["metrics"]["test_metrics"]
    assert manifest["metrics"]["teacher_test_metrics"] == pytest.approx(teacher)
    # with alpha 1 the student never sees a label: what it knows comes from the teacher
    assert manifest["metrics"]["test_metrics"]["map"] > 0.6


def test_multilabel_export_gives_the_logits_pytorch_gives(tmp_path, multilabel_teacher):
    out = tmp_path / "m.onnx"
    manifest = export(ExportConfig(checkpoint=str(multilabel_teacher), out=str(out)))
    assert manifest["task"] == {"kind": "multilabel", "metric": "map", "threshold": 0.5}
    assert manifest["parity"]["top1_agreement"] is None and manifest["parity"]["max_abs_diff"] < 1e-4


def test_regression_export_outputs_the_targets_units(tmp_path, regression_teacher):
    out = tmp_path / "r.onnx"
    manifest = export(ExportConfig(checkpoint=str(regression_teacher), out=str(out)))
    assert manifest["task"] == {"kind": "regression", "metric": "rmse"}
    dataset = load_dataset("diabetes")
    predicted = ort.InferenceSession(str(out)).run(None, {"input": dataset.x_test})[0]
    rmse = math.sqrt(float(((predicted - dataset.in_units(dataset.y_test)) ** 2).mean()))
    recorded = json.loads(manifest_path(regression_teacher).read_text())["metrics"]["test_metrics"]
    assert rmse == pytest.approx(recorded["rmse"], rel=1e-4) and 20 < rmse < 100  # progression units, not std units


def foreign_onnx(checkpoint, out):
    """``checkpoint`` exported to ``out`` without its manifest: an ONNX model that records nothing of its task."""
    export(ExportConfig(checkpoint=str(checkpoint), out=str(out)))
    manifest_path(out).unlink()
    return out


def test_regression_distils_from_an_onnx_teacher_in_target_units(tmp_path, regression_teacher):
    teacher_onnx = foreign_onnx(regression_teacher, tmp_path / "t.onnx")  # a regressor predicting target units
    config = DistillConfig(
        teacher=str(teacher_onnx),
        preprocessing="fit",
        model="mlp",
        model_args={"hidden": [16]},
        data="diabetes",
        out=str(tmp_path / "s.pt"),
        epochs=20,
        batch_size=32,
        device="cpu",
    )
    manifest = distill(config)
    recorded = json.loads(manifest_path(regression_teacher).read_text())["metrics"]["test_metrics"]
    assert manifest["metrics"]["teacher_test_metrics"]["rmse"] == pytest.approx(recorded["rmse"], rel=1e-4)
    assert manifest["task"]["kind"] == "regression" and len(manifest["task"]["target_mean"]) == 1


def test_regression_prune_recovers_and_reports_rmse(tmp_path, regression_teacher, capsys):
    status, out, err = run_cli(
        capsys,
        *("prune", str(regression_teacher), "--amount", "0.5", "--epochs", "5", "--batch-size", "32"),
        *("--device", "cpu", "--out", str(tmp_path / "p.pt")),
    )
    assert status == 0, err
    assert "test RMSE" in out and "after recovery" in out
    pruning = json.loads(manifest_path(tmp_path / "p.pt").read_text())["pruning"]
    assert pruning["after"]["params"] < pruning["before"]["params"] and pruning["after"]["test_rmse"] > 0
    module = model_from_checkpoint(load_checkpoint(tmp_path / "p.pt"), tmp_path / "p.pt")
    assert module(torch.zeros(2, 10)).shape == (2, 1)


def test_a_teacher_whose_outputs_differ_in_width_from_the_targets_is_refused(tmp_path, multilabel_teacher):
    path = tmp_path / "four.npz"
    x, y = load_digits(return_X_y=True)
    x = (x.reshape(-1, 1, 8, 8) * 16).clip(0, 255).astype(np.uint8)
    sets = np.concatenate([digit_label_sets(y), (y == 0)[:, None].astype(np.uint8)], axis=1)
    np.savez(path, x_train=x[:200], y_train=sets[:200], x_test=x[200:260], y_test=sets[200:260])
    teacher_onnx = foreign_onnx(multilabel_teacher, tmp_path / "t.onnx")
    config = DistillConfig(
        teacher=str(teacher_onnx),
        preprocessing="fit",
        model="mlp",
        data=f"npz:{path}",
        out=str(tmp_path / "s.pt"),
        device="cpu",
    )
    with pytest.raises(CompressError, match="outputs shape \\[3\\] per sample but .* has 4 labels; it must output one"):
        distill(config)
    assert not (tmp_path / "s.pt").exists()


def test_a_teacher_of_another_task_is_refused(tmp_path, multilabel_teacher, multilabel_npz):
    config = DistillConfig(
        teacher=str(multilabel_teacher), model="mlp", data=multilabel_npz, task="regression", out=str(tmp_path / "s.pt")
    )
    with pytest.raises(CompressError, match="was trained for multilabel but .* is read as regression"):
        distill(config)


def test_adversarial_and_online_distillation_are_for_classifiers(tmp_path, regression_teacher, capsys):
    status, _, err = run_cli(
        capsys,
        *(
            "distill",
            "--teacher",
            str(regression_teacher),
            "--data",
            "diabetes",
            "--adversarial",
            "fgsm",
            "--adv-eps",
            "0.1",
        ),
        *("--out", str(tmp_path / "s.pt")),
    )
    assert status == 2 and "adversarial distillation and --eval-attack are for classifiers" in err
    status, _, err = run_cli(
        capsys,
        *("distill", "--online", "--teacher-model", "mlp", "--teacher", str(tmp_path / "peer.pt")),
        *("--data", "diabetes", "--out", str(tmp_path / "s.pt")),
    )
    assert status == 2 and "online (mutual) distillation is for classifiers" in err
    assert not (tmp_path / "s.pt").exists() and not (tmp_path / "peer.pt").exists()


def test_the_training_summary_names_the_task_metrics(tmp_path, capsys):
    status, out, _ = run_cli(
        capsys,
        *("train", "--data", "diabetes", "--model", "mlp", "--model-arg", "hidden=8", "--epochs", "2"),
        *("--device", "cpu", "--out", str(tmp_path / "r.pt")),
    )
    assert status == 0 and "model: test RMSE" in out and "R²" in out


def test_a_recipe_hashes_a_tables_test_file_too(tmp_path):
    from compress.recipe import data_files

    write_table(tmp_path / "train.csv", [["a", "y"], [1, 2]])
    write_table(tmp_path / "test.csv", [["a", "y"], [3, 4]])
    assert data_files(f"csv:{tmp_path / 'train.csv'}?target=y&test=test.csv") == [
        tmp_path / "train.csv",
        tmp_path / "test.csv",
    ]
    assert data_files("diabetes") == []
