"""Models of any signature through quantize and bench: integer token ids, a softmax head, several
inputs, a recurrent state whose batch axis is not the first, a map output; with data (npz arrays
named after the inputs) and without (synthetic inputs from the signature); bad input on each is one
line, and nothing is left in the working folder."""

import json

import numpy as np
import onnx
import pytest
from factories.onnx_graphs import const, save, value
from onnx import TensorProto, helper

from compress.cli import main
from compress.feeds import Samples, batch_axes, parse_ranges, synthetic
from compress.onnx_io import load_any

VOCAB, LENGTH, CLASSES = 50, 16, 4
QUICK_BENCH = ["--batch-sizes", "1,8", "--warmup", "0", "--min-runs", "3", "--min-time", "0.01", "--no-memory"]


def token_classifier(path):
    """int64 token ids -> embedding (Gather) -> mean over the sequence -> MatMul -> Softmax: a text
    classifier whose head gives probabilities."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embed"),
        helper.make_node("ReduceMean", ["embedded"], ["pooled"], axes=[1], keepdims=0, name="pool"),
        helper.make_node("MatMul", ["pooled", "w"], ["scores"], name="head"),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=1, name="softmax"),
    ]
    inits = [
        const("table", rng.standard_normal((VOCAB, 8)).astype(np.float32)),
        const("w", rng.standard_normal((8, CLASSES)).astype(np.float32)),
    ]
    return save(
        path,
        nodes,
        [value("ids", TensorProto.INT64, ["batch", LENGTH])],
        [value("probs", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )


def masked_token_classifier(path):
    """Two inputs: int32 token ids and a bool mask (padding); logits of the masked mean."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"]),
        helper.make_node("Cast", ["mask"], ["weight"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["weight", "last"], ["weight3"]),
        helper.make_node("Mul", ["embedded", "weight3"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "seq_axis"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["logits"], name="head"),
    ]
    inits = [
        const("table", rng.standard_normal((VOCAB, 8)).astype(np.float32)),
        const("last", np.array([2], np.int64)),
        const("seq_axis", np.array([1], np.int64)),
        const("w", rng.standard_normal((8, CLASSES)).astype(np.float32)),
    ]
    return save(
        path,
        nodes,
        [value("ids", TensorProto.INT32, ["batch", LENGTH]), value("mask", TensorProto.BOOL, ["batch", LENGTH])],
        [value("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )


def stateful(path):
    """A recurrent step as audio models ship: samples (batch, 8), a state (2, batch, 4) whose batch is on
    axis 1, and a scalar rate; gives a probability (batch, 1) and the next state."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("MatMul", ["x", "wx"], ["xw"], name="project"),  # (batch, 4)
        helper.make_node("ReduceSum", ["state", "zero"], ["summed"], keepdims=0),  # (batch, 4)
        helper.make_node("Add", ["xw", "summed"], ["mixed"]),
        helper.make_node("Cast", ["sr"], ["rate"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["mixed", "rate"], ["scaled"]),
        helper.make_node("Tanh", ["scaled"], ["h"]),
        helper.make_node("Unsqueeze", ["h", "zero"], ["h1"]),
        helper.make_node("Concat", ["h1", "h1"], ["stateN"], axis=0),
        helper.make_node("MatMul", ["h", "wo"], ["o"], name="out"),
        helper.make_node("Sigmoid", ["o"], ["prob"]),
    ]
    inits = [
        const("wx", rng.standard_normal((8, 4)).astype(np.float32)),
        const("wo", rng.standard_normal((4, 1)).astype(np.float32)),
        const("zero", np.array([0], np.int64)),
    ]
    return save(
        path,
        nodes,
        [
            value("x", TensorProto.FLOAT, ["batch", 8]),
            value("state", TensorProto.FLOAT, [2, "batch", 4]),
            value("sr", TensorProto.INT64, []),
        ],
        [value("prob", TensorProto.FLOAT, ["batch", 1]), value("stateN", TensorProto.FLOAT, [2, "batch", 4])],
        inits,
    )


def map_model(path):
    """A text detector's shape: an image of any size in, a probability map of the same size out."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Sigmoid", ["conv"], ["map"]),
    ]
    inits = [
        const("w", rng.standard_normal((1, 3, 3, 3)).astype(np.float32) * 0.3),
        const("b", np.zeros(1, np.float32)),
    ]
    return save(
        path,
        nodes,
        [value("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [value("map", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        inits,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign")
    return {
        "tokens": token_classifier(folder / "tokens.onnx"),
        "masked": masked_token_classifier(folder / "masked.onnx"),
        "stateful": stateful(folder / "stateful.onnx"),
        "map": map_model(folder / "map.onnx"),
    }


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder; the test checks that nothing but its outputs is left there."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def run_cli(args, capsys):
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def token_data(path, n=200, **arrays):
    """Token ids and the class the token model gives them: labels a perfect model would match."""
    rng = np.random.default_rng(4)
    found = {"ids": rng.integers(0, VOCAB, (n, LENGTH)), "y": rng.integers(0, CLASSES, n)}
    np.savez(path, **{**found, **arrays})
    return f"npz:{path}"


# --- the signature: batch axes, synthetic inputs ---------------------------------------------------


def test_batch_axes_follow_the_named_batch_dimension_else_the_leading_symbolic_one():
    assert batch_axes([["batch", 8], [2, "batch", 4], [], ["batch", 1]]) == [
        (0, True),
        (1, True),
        (None, False),
        (0, True),
    ]
    # exporters that name each tensor's batch differently: a leading symbolic dimension is a guess
    assert batch_axes([["unk__1", 2048], ["unk__2", 214]]) == [(0, True), (0, False)]
    # unnamed: the first axis like the batch (symbolic, or the same number)
    assert batch_axes([[None, 512], [2, None, 128], [None, 1], []]) == [
        (0, False),
        (1, False),
        (0, False),
        (None, False),
    ]
    assert batch_axes([[1, 576], [2, 1, 128], [3, 4]]) == [(0, False), (1, False), (None, False)]


def test_synthetic_ids_stay_inside_the_embedding_they_index(models):
    model = load_any(models["tokens"])
    assert model.inputs[0].vocabulary == VOCAB
    ids = synthetic(model.inputs, 500, {}, {}, "m").arrays["ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() == VOCAB - 1


def test_synthetic_values_follow_the_declared_types_and_the_ranges_given(models):
    model = load_any(models["masked"])
    samples = synthetic(model.inputs, 64, {}, parse_ranges(["ids=3:5"]), "m")
    assert samples.arrays["ids"].dtype == np.int32 and set(np.unique(samples.arrays["ids"])) <= {3, 4, 5}
    assert samples.arrays["mask"].dtype == np.bool_ and samples.arrays["mask"].all()  # masks: all tokens count


def test_a_state_is_fed_with_its_batch_on_the_axis_the_model_declares(models):
    model = load_any(models["stateful"])
    assert [i.batch_axis for i in model.inputs] == [0, 1, None]
    samples = Samples(
        {"x": np.ones((3, 8), np.float32), "state": np.zeros((3, 2, 4), np.float32)}, {"sr": np.array(2, np.int64)}
    )
    feeds = samples.feeds(model.inputs)
    assert feeds["state"].shape == (2, 3, 4) and feeds["sr"].shape == ()
    prob, state = model.predict(samples, batch_size=2)  # two batches, joined on the samples' axis
    assert prob.shape == (3, 1) and state.shape == (3, 2, 4)


def test_an_output_that_is_no_tensor_is_refused_in_one_line(tmp_path):
    """A scikit-learn converter's ZipMap: a sequence of maps, class -> probability."""
    nodes = [helper.make_node("ZipMap", ["p"], ["probs"], domain="ai.onnx.ml", classlabels_int64s=[0, 1])]
    probs = helper.make_value_info(
        "probs",
        helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
        ),
    )
    graph = helper.make_graph(nodes, "z", [value("p", TensorProto.FLOAT, ["n", 2])], [probs])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)], ir_version=8
    )
    onnx.save(model, str(tmp_path / "z.onnx"))
    with pytest.raises(
        Exception, match="gives output 'probs' as seq.*; compress compares numeric and bool tensor outputs"
    ):
        load_any(tmp_path / "z.onnx")


def test_an_input_the_model_cannot_take_is_refused_in_one_line(tmp_path):
    nodes = [helper.make_node("Identity", ["text"], ["out"])]
    path = save(
        tmp_path / "s.onnx",
        nodes,
        [value("text", TensorProto.STRING, ["n"])],
        [value("out", TensorProto.STRING, ["n"])],
        [],
    )
    with pytest.raises(
        Exception, match="takes input 'text' as string \\[n\\]; compress feeds numeric and bool tensors"
    ):
        load_any(path)


# --- bench ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tokens", "masked", "stateful", "map"])
def test_bench_without_data_measures_latency_on_synthetic_inputs_and_says_accuracy_was_not(
    models, kind, in_tmp, capsys
):
    shapes = ["--shape", "image=1x3x32x48"] if kind == "map" else []
    code, err = run_cli(["bench", models[kind], "--report", "r", *QUICK_BENCH, *shapes], capsys)
    assert code == 0, err
    report = json.loads((in_tmp / "r" / "report.json").read_text())
    entry = report["models"][0]
    assert entry["data"] == "synthetic inputs" and "no data" in entry["accuracy_not_measured"]
    assert entry["providers"]["cpu"]["top1"] is None
    assert {i["name"] for i in entry["synthetic_inputs"]} == {i.name for i in load_any(models[kind]).inputs}
    assert len(report["rows"]) == 2 and all(r["p50_ms"] > 0 for r in report["rows"])
    assert "accuracy not measured" in (in_tmp / "r" / "report.md").read_text()
    assert sorted(p.name for p in in_tmp.iterdir()) == ["r"]


def test_bench_with_arrays_named_after_the_inputs_measures_accuracy_where_there_are_labels(models, in_tmp, capsys):
    data = token_data(in_tmp / "d.npz")
    code, err = run_cli(["bench", models["tokens"], "--report", "r", "--data", data, *QUICK_BENCH], capsys)
    assert code == 0, err
    entry = json.loads((in_tmp / "r" / "report.json").read_text())["models"][0]
    assert entry["providers"]["cpu"]["top1"] is not None and entry["providers"]["cpu"]["test_samples"] == 200
    assert entry["preprocessing"] is None and entry["accuracy_not_measured"] is None


def test_bench_says_why_labels_give_no_accuracy_for_an_output_without_classes(models, in_tmp, capsys):
    rng = np.random.default_rng(6)
    np.savez(
        in_tmp / "d.npz",
        x=rng.standard_normal((20, 8)).astype(np.float32),
        state=np.zeros((20, 2, 4), np.float32),
        sr=np.array(1),
        y=rng.integers(0, 2, 20),
    )
    args = ["bench", models["stateful"], "--report", "r", "--data", f"npz:{in_tmp / 'd.npz'}", *QUICK_BENCH]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    entry = json.loads((in_tmp / "r" / "report.json").read_text())["models"][0]
    assert entry["providers"]["cpu"]["top1"] is None
    assert (
        "its first output, 'prob' of shape [20, 1], gives no scores of the 2 classes" in entry["accuracy_not_measured"]
    )


def test_bench_compares_outputs_without_classes_against_the_baseline(models, in_tmp, capsys):
    """Two map models on the same synthetic inputs: no accuracy, but how far the second's map moved."""
    other = in_tmp / "map2.onnx"
    other.write_bytes(models["map"].read_bytes())
    args = ["bench", models["map"], other, "--report", "r", "--shape", "image=1x3x16x16", *QUICK_BENCH]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads((in_tmp / "r" / "report.json").read_text())
    second = report["models"][1]["providers"]["cpu"]
    assert second["top1"] is None and second["agreement_with_baseline"] is None
    assert second["fidelity_to_baseline"]["relative_l2"] == 0 and second["fidelity_to_baseline"]["cosine"] > 0.999


BAD = {
    "missing_input_array": (
        "masked",
        lambda folder: ["--data", token_data(folder / "d.npz")],
        "lacks 'mask'; the inputs of model",
    ),
    "fractional_ids": (
        "tokens",
        lambda folder: ["--data", token_data(folder / "d.npz", ids=np.full((200, LENGTH), 0.5))],
        "gives input 'ids' the value 0.5, which int64 [batch, 16] cannot hold",
    ),
    "wrong_sample_shape": (
        "tokens",
        lambda folder: ["--data", token_data(folder / "d.npz", ids=np.zeros((200, 3), np.int64))],
        "takes input 'ids' of shape [batch, 16] but npz:",
    ),
    "labels_not_per_sample": (
        "tokens",
        lambda folder: ["--data", token_data(folder / "d.npz", y=np.zeros(7, np.int64))],
        "'y' has 7 rows but the inputs have 200 samples",
    ),
    "one_array_data_for_two_inputs": (
        "masked",
        lambda folder: ["--data", "digits", "--preprocessing", "raw"],
        "takes 2 inputs ('ids' int32 [batch, 16]; 'mask' bool [batch, 16]), but digits gives one array per sample",
    ),
    "symbolic_dims_without_shape": ("map", lambda folder: [], "give them with --shape image=Nx3xNxN"),
    "shape_of_an_unknown_input": ("tokens", lambda folder: ["--shape", "pixels=1x16"], "--shape names 'pixels'"),
    "bad_range": ("tokens", lambda folder: ["--input-range", "ids=9:1"], "is not NAME=LOW:HIGH"),
    "shape_beyond_memory": ("map", lambda folder: ["--shape", "image=1x3x100000x100000"], "give smaller --shape"),
    "range_of_an_unknown_input": ("tokens", lambda folder: ["--input-range", "x=0:1"], "--input-range names 'x'"),
}


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("command", ["bench", "quantize"])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(models, case, command, in_tmp, capsys):
    kind, extra, message = BAD[case]
    args = extra(in_tmp)
    if command == "bench":
        args = ["bench", models[kind], "--report", "r", *QUICK_BENCH, *args]
    else:
        args = ["quantize", models[kind], "--out", "q.onnx", "--mode", "dynamic", *args]
    before = sorted(p.name for p in in_tmp.iterdir())
    code, err = run_cli(args, capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert sorted(p.name for p in in_tmp.iterdir()) == before


# --- quantize ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tokens", "masked", "stateful"])
def test_quantize_dynamic_without_data_judges_int8_on_synthetic_inputs(models, kind, in_tmp, capsys):
    code, err = run_cli(
        ["quantize", models[kind], "--out", "q.onnx", "--mode", "dynamic", "--allow-over-budget", "--batch-size", "8"],
        capsys,
    )
    assert code == 0, err
    manifest = json.loads((in_tmp / "q.onnx.json").read_text())
    fidelity = manifest["metrics"]["fidelity"]
    assert fidelity["split"] == "synthetic" and manifest["metrics"]["accuracy"] is None
    assert manifest["quantization"]["synthetic_inputs"][0]["name"] == "x" if kind == "stateful" else "ids"
    if kind == "stateful":  # both outputs compared; the loss is the first one's relative L2
        assert [o["name"] for o in fidelity["outputs"]] == ["prob", "stateN"]
        assert fidelity["measure"] == "relative L2 error in percent"
    assert sorted(p.name for p in in_tmp.iterdir()) == ["q.onnx", "q.onnx.json"]


@pytest.mark.slow
def test_quantize_static_calibrates_on_arrays_named_after_the_inputs(models, in_tmp, capsys):
    rng = np.random.default_rng(5)
    np.savez(
        in_tmp / "d.npz", ids=rng.integers(0, VOCAB, (300, LENGTH)).astype(np.int32), mask=np.ones((300, LENGTH), bool)
    )
    args = ["quantize", models["masked"], "--out", "q.onnx", "--data", f"npz:{in_tmp / 'd.npz'}"]
    code, err = run_cli([*args, "--allow-over-budget", "--batch-size", "8"], capsys)
    assert code == 0, err
    manifest = json.loads((in_tmp / "q.onnx.json").read_text())
    assert manifest["quantization"]["calibration_samples"] == 240  # the 80% not held out
    assert manifest["metrics"]["fidelity"]["samples"] == 60 and manifest["metrics"]["fidelity"]["split"] == "val"
    assert manifest["quantization"]["data"] == f"npz:{in_tmp / 'd.npz'}"


@pytest.mark.slow
def test_outputs_of_inf_are_said_never_taken_for_a_small_error(in_tmp, capsys):
    """exp(100) is inf in float32: fp32 itself gives no finite output to compare int8 with."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Exp", ["xw"], ["y"])]
    path = save(
        in_tmp / "exp.onnx",
        nodes,
        [value("x", TensorProto.FLOAT, ["n", 4])],
        [value("y", TensorProto.FLOAT, ["n", 2])],
        [const("w", np.ones((4, 2), np.float32))],
    )
    code, err = run_cli(["quantize", path, "--out", "q.onnx", "--mode", "dynamic", "--input-range", "x=25:30"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "gives non-finite values (inf or NaN) in output 'y'" in err
    assert not (in_tmp / "q.onnx").exists()
    other = in_tmp / "exp2.onnx"
    other.write_bytes(path.read_bytes())
    code, err = run_cli(["bench", path, other, "--report", "r", "--input-range", "x=25:30", *QUICK_BENCH], capsys)
    assert code == 0 and "not reported" in err
