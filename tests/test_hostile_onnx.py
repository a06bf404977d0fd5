"""ONNX models that load but do not fit what compress measures: one line, exit 2, nothing written.

Each model is a few nodes built with ``onnx.helper`` on the 8x8 digits images: graphs that ask for far
more memory than any machine has, by a static shape (refused before a session exists) or by one only
known at run time (onnxruntime's allocation failure, wrapped). Beside them, models of signatures that
are not a classifier's (a float64 input, a 3-D output, integer labels as the output, one row of output
for a whole batch), which are measured rather than refused.
"""

import json

import numpy as np
import pytest
from factories.onnx_graphs import const, save, value
from onnx import TensorProto, helper

from compress.artifacts import manifest_path
from compress.cli import main
from compress.stages import quantize as quantize_module
from compress.stages.quantize import QuantizeConfig, quantize

BATCH = ["N", 1, 8, 8]
HUGE = [200_000, 200_000]  # 149 GiB of float32
HUGER = [1 << 20, 1 << 20]  # 4 TiB: beyond what any system grants


def classifier_nodes(x="x", out="logits"):
    """Flatten the 8x8 image and multiply by a (64, 10) weight: a linear classifier."""
    return [helper.make_node("Flatten", [x], ["flat"]), helper.make_node("MatMul", ["flat", "w"], [out])]


def weights():
    return const("w", np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32))


def with_huge_tensor(path, make_huge, extra_initializers):
    """The classifier plus ``logits += sum(huge tensor)``: the huge tensor is made by ``make_huge``."""
    nodes = [
        *classifier_nodes(out="m"),
        *make_huge,
        helper.make_node("ReduceSum", ["huge", "axes"], ["total"], keepdims=0),
        helper.make_node("Add", ["m", "total"], ["logits"]),
    ]
    initializers = [weights(), const("axes", np.array([0, 1], np.int64)), *extra_initializers]
    return save(
        path,
        nodes,
        [value("x", TensorProto.FLOAT, BATCH)],
        [value("logits", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )


def build(kind, folder):
    path = folder / f"{kind}.onnx"
    x = value("x", TensorProto.FLOAT, BATCH)
    logits = value("logits", TensorProto.FLOAT, ["N", 10])
    if kind == "control":
        return save(path, classifier_nodes(), [x], [logits], [weights()])
    if kind == "float64_input":
        cast = helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT)
        return save(
            path, [cast, *classifier_nodes("x32")], [value("x", TensorProto.DOUBLE, BATCH)], [logits], [weights()]
        )
    if kind == "3d_output":  # (N, T, C): a row of 8 pixels is a time step
        nodes = [
            helper.make_node("Reshape", ["x", "shape"], ["rows"]),
            helper.make_node("MatMul", ["rows", "w"], ["logits"]),
        ]
        initializers = [const("w", np.ones((8, 10), np.float32)), const("shape", np.array([0, 8, 8], np.int64))]
        return save(path, nodes, [x], [value("logits", TensorProto.FLOAT, ["N", 8, 10])], initializers)
    if kind == "label_output":  # the predicted class, as scikit-learn's converters give it
        nodes = [*classifier_nodes(out="scores"), helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)]
        return save(path, nodes, [x], [value("label", TensorProto.INT64, ["N"])], [weights()])
    if kind == "one_row_per_batch":  # declares (N, C) but pools over the batch
        nodes = [*classifier_nodes(out="scores"), helper.make_node("ReduceMean", ["scores"], ["logits"], axes=[0])]
        return save(path, nodes, [x], [logits], [weights()])
    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [0.0])
    if kind == "huge_constant_of_shape":
        make = [helper.make_node("ConstantOfShape", ["shape"], ["huge"], value=fill)]
        return with_huge_tensor(path, make, [const("shape", np.array(HUGE, np.int64))])
    if kind == "huge_expand":
        make = [helper.make_node("Expand", ["zero", "shape"], ["huge"])]
        return with_huge_tensor(
            path, make, [const("zero", np.zeros((1, 1), np.float32)), const("shape", np.array(HUGE, np.int64))]
        )
    if kind == "huge_at_run_time":  # the shape passes through Abs, which shape inference does not follow
        make = [
            helper.make_node("Abs", ["shape"], ["computed"]),
            helper.make_node("Expand", ["zero", "computed"], ["huge"]),
        ]
        return with_huge_tensor(
            path, make, [const("zero", np.zeros((1, 1), np.float32)), const("shape", np.array(HUGER, np.int64))]
        )
    raise ValueError(kind)


# models of signatures other than (N, ...) float32 -> (N, C) logits: measured, not refused
OTHER_SIGNATURES = ("float64_input", "3d_output", "label_output", "one_row_per_batch")

# what the one line says about each model
HOSTILE = {
    "huge_constant_of_shape": "its ConstantOfShape node output 'huge' (float32 [200000, 200000]) needs at least 149.0 GiB",
    "huge_expand": "its Expand node output 'huge' (float32 [200000, 200000]) needs at least 149.0 GiB",
    "huge_at_run_time": "onnxruntime could not allocate 4,096.0 GiB",
}

DATA = ["--data", "digits", "--preprocessing", "scale"]
QUICK_BENCH = ["--batch-sizes", "4", "--warmup", "0", "--min-runs", "3", "--min-time", "0.01", "--no-memory"]
COMMANDS = {
    "quantize_static": lambda model, out: ["quantize", model, "--out", out, *DATA, "--calibration-samples", "32"],
    "quantize_dynamic": lambda model, out: ["quantize", model, "--out", out, "--mode", "dynamic"],
    "bench": lambda model, out: ["bench", model, "--report", out, *DATA, *QUICK_BENCH],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return {kind: build(kind, folder) for kind in ["control", *OTHER_SIGNATURES, *HOSTILE]}


def run_cli(args, capsys):
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def output_of(command, tmp_path):
    return tmp_path / ("report" if command == "bench" else "int8.onnx")


@pytest.mark.parametrize(
    "command", [pytest.param(c, marks=pytest.mark.slow) if c.startswith("quantize") else c for c in COMMANDS]
)
def test_the_control_model_runs(models, command, tmp_path, capsys):
    """The hostile models below differ from this one only in what makes them hostile (quantize
    times int8 against fp32 for seconds: slow)."""
    out = output_of(command, tmp_path)
    code, err = run_cli(COMMANDS[command](models["control"], out), capsys)
    assert code == 0, err
    assert (out / "report.json").is_file() if command == "bench" else manifest_path(out).is_file()


@pytest.mark.parametrize("kind", OTHER_SIGNATURES)
def test_a_model_of_another_signature_is_benched_with_accuracy_only_where_it_means_something(
    models, kind, tmp_path, capsys
):
    """A float64 input is fed float64; outputs that are no (N, C) scores get no accuracy, only latency."""
    out = output_of("bench", tmp_path)
    code, err = run_cli(COMMANDS["bench"](models[kind], out), capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    top1 = report["models"][0]["providers"]["cpu"]["top1"]
    assert (top1 is not None) == (kind == "float64_input")
    assert report["rows"] and report["rows"][0]["p50_ms"] > 0


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", HOSTILE)
def test_a_model_that_does_not_fit_is_one_line_exit_2_and_nothing_written(models, kind, command, tmp_path, capsys):
    out = output_of(command, tmp_path)
    code, err = run_cli(COMMANDS[command](models[kind], out), capsys)
    assert code == 2 and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(models[kind]) in lines[0] and HOSTILE[kind] in lines[0]
    assert not out.exists() and not manifest_path(out).exists()
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.slow
def test_a_failure_after_the_int8_model_is_made_leaves_nothing(models, tmp_path, monkeypatch):
    """The model and its manifest are moved into place only after everything else succeeded."""

    def failing(path):
        raise OSError("disk trouble")

    monkeypatch.setattr(quantize_module, "sha256_file", failing)  # hashing the staged int8 model
    out = tmp_path / "int8.onnx"
    with pytest.raises(OSError, match="disk trouble"):
        quantize(QuantizeConfig(model=str(models["control"]), out=str(out), mode="dynamic"))
    assert not out.exists() and not manifest_path(out).exists()
    assert not list(tmp_path.rglob(".*.tmp"))
