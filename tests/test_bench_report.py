"""What bench reports of foreign and compress models: each fed its own preprocessing, speed-ups next to
the baseline figure they come from, a default report folder, an HTML page and plot a browser shows
right, and plain words for model files a stage does not take."""

import json
import shutil
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from matplotlib.container import ErrorbarContainer
from onnx import TensorProto, helper, numpy_helper

from compress.artifacts import manifest_path
from compress.cli import main
from compress.data import Preprocessing, load_dataset, load_dataset_for
from compress.measure import latency
from compress.measure.report import (
    header,
    html_page,
    load_report,
    markdown,
    plot_figure,
    table_rows,
    terminal_table,
)
from compress.measure.report_model import validate_report
from compress.stages import bench as bench_stage
from compress.stages.bench import BenchConfig, bench
from compress.stages.export import ExportConfig, export
from compress.stages.quantize import QuantizeConfig, quantize
from compress.stages.train import TrainConfig, train

QUICK = dict(batch_sizes=[1, 4], threads=[1], warmup=1, min_runs=7, min_time=0.02, memory=False)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A compress student (a tiny MLP on digits, exported with its manifest) and a manifest-less copy."""
    folder = tmp_path_factory.mktemp("students")
    checkpoint = folder / "student.pt"
    train(TrainConfig(model="mlp", model_args={"hidden": [32]}, data="digits", out=str(checkpoint), epochs=3))
    export(ExportConfig(checkpoint=str(checkpoint), out=str(folder / "student.onnx"), exporter="torchscript"))
    bare = folder / "foreign.onnx"
    shutil.copyfile(folder / "student.onnx", bare)
    return folder / "student.onnx", bare


@pytest.fixture(scope="module")
def mixed_report(student, tmp_path_factory):
    """The student and its manifest-less copy benched in one call with --preprocessing scale."""
    folder = tmp_path_factory.mktemp("mixed") / "report"
    config = BenchConfig(
        models=[str(p) for p in student], report=str(folder), data="digits", preprocessing="scale", **QUICK
    )
    return bench(config), folder


def _top1(model, preprocessing) -> float:
    dataset = load_dataset("digits", preprocessing=preprocessing)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: dataset.x_test})[0]
    return float((logits.argmax(1) == dataset.y_test).mean())


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err


# -- 1. a model's manifest wins over --preprocessing ----------------------------------------------


def test_each_model_is_fed_its_own_preprocessing_when_benched_together(student, mixed_report):
    report, _ = mixed_report
    manifest = json.loads(manifest_path(student[0]).read_text())
    by_name = {m["name"]: m for m in report["models"]}
    ours, foreign = by_name["student.onnx"], by_name["foreign.onnx"]
    own = _top1(student[0], Preprocessing.from_dict(manifest["preprocessing"]))
    scaled = _top1(student[1], "scale")
    assert own != scaled  # the two data paths really differ on this model
    assert ours["providers"]["cpu"]["top1"] == own
    assert abs(own - manifest["source"]["metrics"]["test_accuracy"]) <= 1 / 359  # its figure from training
    assert foreign["providers"]["cpu"]["top1"] == scaled
    assert (ours["preprocessing"], foreign["preprocessing"]) == ("manifest", "scale")
    notes = markdown(report)
    assert "`student.onnx`: test data `digits`, normalised as its manifest records." in notes
    assert "`foreign.onnx`: test data `digits`, normalised by `--preprocessing scale` (no manifest says how)." in notes


def test_the_ignored_flag_is_said_once_per_model_on_the_terminal(student, tmp_path, capsys):
    args = [*map(str, student), "--data", "digits", "--preprocessing", "raw", "--report", str(tmp_path / "r")]
    main(["bench", *args, "--batch-sizes", "1", "--min-time", "0.01", "--min-runs", "3", "--no-memory"])
    err = capsys.readouterr().err
    assert f"{student[0]} is fed as its manifest records; --preprocessing raw applies only to models without one" in err
    assert f"{student[1]} is fed" not in err


def test_load_dataset_for_lets_the_manifest_win_and_shares_one_load(student):
    manifest = json.loads(manifest_path(student[0]).read_text())
    recorded = Preprocessing.from_dict(manifest["preprocessing"])
    cache = {}
    with_flag = load_dataset_for("student.onnx", manifest, "digits", "raw", cache=cache)
    without = load_dataset_for("student.int8.onnx", manifest, None, None, cache=cache)
    assert with_flag.preprocessing == recorded and without is with_flag
    assert load_dataset_for("foreign.onnx", None, "digits", "raw").preprocessing.scale == 1.0
    # a manifest without a preprocessing record (exported with --no-parity from a bare checkpoint) takes the flag
    unrecorded = {**manifest, "preprocessing": None}
    assert load_dataset_for("x.onnx", unrecorded, None, "scale", cache=cache).preprocessing.scale == 1 / 16


@pytest.mark.slow
def test_quantize_and_export_keep_the_manifest_preprocessing_given_another(student, tmp_path):
    manifest = json.loads(manifest_path(student[0]).read_text())
    out = tmp_path / "student.int8.onnx"
    quantize(QuantizeConfig(model=str(student[0]), out=str(out), data="digits", preprocessing="raw"))
    assert json.loads(manifest_path(out).read_text())["preprocessing"] == manifest["preprocessing"]
    exported = export(
        ExportConfig(
            checkpoint=str(student[0].with_suffix(".pt")), out=str(tmp_path / "again.onnx"), preprocessing="raw"
        )
    )
    assert exported["preprocessing"] == manifest["preprocessing"]


# -- 2. each speed-up next to the baseline figure of its own pairing -------------------------------


def test_each_row_names_the_baseline_p50_of_the_rounds_it_was_timed_against(student, tmp_path, monkeypatch):
    third = tmp_path / "third.onnx"
    shutil.copyfile(student[0], third)
    shutil.copyfile(manifest_path(student[0]), manifest_path(third))
    pairings = []

    def recorded(*args, **kwargs):
        pairings.append(latency.compare(*args, **kwargs))
        return pairings[-1]

    monkeypatch.setattr(bench_stage, "compare", recorded)
    models = [str(student[0]), str(student[1]), str(third)]
    report = bench(
        BenchConfig(models=models, report=str(tmp_path / "r"), data="digits", preprocessing="scale", **QUICK)
    )
    validate_report(report)
    rows = report["rows"]
    assert [r["model"] for r in rows] == ["student.onnx", "foreign.onnx", "third.onnx"] * 2 and len(pairings) == 4
    for batch in range(2):  # per batch size: the baseline's row, then one row per pairing
        base, *others = rows[3 * batch : 3 * batch + 3]
        paired = [p.seconds["baseline"] * 1e3 for p in pairings[2 * batch : 2 * batch + 2]]
        for row, times in zip(others, paired):
            assert row["baseline_p50_ms"] == pytest.approx(np.median(times))
        assert base["baseline_p50_ms"] is None and base["runs"] == sum(map(len, paired))  # pooled
    cells = [dict(zip(header(report), row)) for row in table_rows(report)]
    assert cells[0]["baseline p50 ms"] == "–"
    assert cells[1]["baseline p50 ms"] == f"{rows[1]['baseline_p50_ms']:.3f}"
    assert "the pairing the model's speed-up comes from" in terminal_table(report)


def test_the_baseline_rows_carry_no_pairing_figure(mixed_report):
    report, _ = mixed_report
    broken = json.loads(json.dumps(report))
    broken["rows"][0]["baseline_p50_ms"] = 1.0
    with pytest.raises(ValueError, match="baseline_p50_ms is null in the baseline's own rows"):
        validate_report(broken)


def test_a_report_from_before_the_pairing_and_preprocessing_fields_still_reads(mixed_report, tmp_path):
    report, _ = mixed_report
    older = json.loads(json.dumps(report))
    for row in older["rows"]:
        del row["baseline_p50_ms"]
    for model in older["models"]:
        del model["preprocessing"]
    (tmp_path / "report.json").write_text(json.dumps(older))
    loaded = load_report(tmp_path)
    assert all(row[header(loaded).index("baseline p50 ms")] == "–" for row in table_rows(loaded))
    assert "normalised" not in markdown(loaded)


# -- 3. --report has a default -------------------------------------------------------------------


def test_the_report_goes_to_bench_report_in_the_current_folder_by_default(student, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["bench", str(student[0]), "--batch-sizes", "1", "--min-time", "0.01", "--min-runs", "3", "--no-memory"])
    assert "wrote bench-report/report.json" in capsys.readouterr().out
    assert load_report(tmp_path / "bench-report")["baseline"] == "student.onnx"
    main(["bench", "--help"])
    assert "[default: bench-report]" in capsys.readouterr().out


def test_a_folder_holding_anything_but_a_report_is_never_replaced(student, tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "teacher.onnx").write_bytes(b"precious")
    code, err = run_cli(["bench", str(student[0]), "--report", str(folder), "--no-memory"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "holds files that are not a bench report (teacher.onnx)" in err and "--report" in err
    assert (folder / "teacher.onnx").read_bytes() == b"precious"


# -- 4. the HTML page and the plot ---------------------------------------------------------------


def test_the_html_notes_show_code_as_code_and_the_tables_show_macs(student, mixed_report):
    report, folder = mixed_report
    page = (folder / "report.html").read_text()
    assert "`" not in page and "<code>student.onnx</code> on cpu:" in page
    assert "<th>MACs</th>" in page and "| MACs |" in (folder / "report.md").read_text()
    macs = json.loads(manifest_path(student[0]).read_text())["model"]["macs"]
    by_model = {row[0]: dict(zip(header(report), row)) for row in table_rows(report)}
    assert by_model["student.onnx"]["MACs"] == f"{macs / 1e3:.3g}k" and by_model["foreign.onnx"]["MACs"] == "–"
    assert "MACs" in terminal_table(report).splitlines()[0]
    assert html_page(report, b"").count("<tr>") == 1 + len(report["rows"])


def test_the_plot_has_a_panel_per_provider_threads_and_batch_with_intervals_and_a_legend(mixed_report):
    report, _ = mixed_report
    report = json.loads(json.dumps(report))
    report["config"]["threads"] = [1, 2]  # as if measured at two thread counts too
    report["rows"] += [{**row, "threads": 2} for row in report["rows"]]
    figure = plot_figure(report)
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert sorted(ax.get_title() for ax in panels) == sorted(
        f"cpu, batch {b}, {t} thread{'s' if t > 1 else ''}" for b in (1, 4) for t in (1, 2)
    )
    for ax in panels:
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 2 and all(c.has_xerr for c in bars)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "student.onnx (baseline)" in legend
        assert any(t.startswith("foreign.onnx: ") and "x (" in t for t in legend)
        assert not ax.texts  # no labels on the points to collide


# -- 5. model files a stage does not take ----------------------------------------------------------


@pytest.fixture(scope="module")
def other_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("other")
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    example = torch.zeros(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what users still have
        torch.jit.save(torch.jit.trace(module, example), str(folder / "scripted.pt"))
    torch.export.save(torch.export.export(module, (example,)), str(folder / "program.pt2"))
    return folder


@pytest.mark.parametrize("command", ["export", "prune"])
@pytest.mark.parametrize(
    "kind, message",
    [
        pytest.param("onnx", "{file} is an ONNX model (protobuf) — quantize or bench it directly", id="onnx"),
        pytest.param("onnx named .pt", "{file} is an ONNX model (protobuf) — quantize or bench it", id="onnx-as-pt"),
        pytest.param("torchscript", "{file} is a TorchScript model (a zip with code/) — export it to", id="ts"),
        pytest.param("torch.export", "{file} is a torch.export program (.pt2) — export it to ONNX", id="pt2"),
    ],
)
def test_export_and_prune_say_what_they_take_instead(student, other_models, tmp_path, capsys, command, kind, message):
    file = {
        "onnx": student[0],
        "torchscript": other_models / "scripted.pt",
        "torch.export": other_models / "program.pt2",
    }.get(kind)
    if kind == "onnx named .pt":
        file = tmp_path / "model.pt"
        shutil.copyfile(student[0], file)
    out = tmp_path / ("out.onnx" if command == "export" else "out.pt")
    extra = ["--amount", "0.5"] if command == "prune" else []
    code, err = run_cli([command, str(file), "--out", str(out), *extra], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {command} takes a compress checkpoint (.pt) written by train, distill or prune; ")
    assert message.format(file=file) in err
    assert not out.exists()


def _channels_last_model(path):
    """A digits classifier whose input is (batch, height, width, 1): channels last."""
    weights = numpy_helper.from_array(np.zeros((64, 10), np.float32), "weights")
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Flatten", ["nchw"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
        ],
        "nhwc",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", "height", "width", 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [weights],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def test_a_channels_last_model_is_told_to_transpose_to_nchw_with_its_dimension_names(tmp_path, capsys):
    model = tmp_path / "nhwc.onnx"
    _channels_last_model(model)
    args = ["bench", str(model), "--data", "digits", "--preprocessing", "scale", "--report", str(tmp_path / "r")]
    code, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "takes input 'image' of shape [batch, height, width, 1], channels last (NHWC)" in err
    assert "compress feeds NCHW samples (digits: [1, 8, 8]); transpose to NCHW" in err
