"""Every quantize run judges int8 against fp32, narrows what it quantizes when over budget, and never
writes a destroyed model; onnxruntime's preprocessing stays inside the staging folder."""

import importlib.util
import json
import logging
import shutil
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from compress.artifacts import manifest_path
from compress.stages import quantize as quantize_module
from compress.stages.export import ExportConfig, export
from compress.stages.quantize import COMPUTE_OPS, QuantizeConfig, quantize, summary
from compress.stages.train import TrainConfig, train


def softmax_head(folder, opset=None):
    """A classifier ending in a flat Softmax (probabilities close together, as many exported models
    have): int8 of the Softmax output rounds them into ties, so naive int8 changes the top-1 class."""
    train(TrainConfig(model="mlp", model_args={"hidden": [64]}, data="digits", out=str(folder / "m.pt"), epochs=3))
    export(ExportConfig(checkpoint=str(folder / "m.pt"), out=str(folder / "m.onnx"), opset=opset))
    model = onnx.load(str(folder / "m.onnx"))
    graph = model.graph
    logits = graph.output[0].name
    graph.initializer.append(numpy_helper.from_array(np.array(0.05, np.float32), "flatten"))
    graph.node.append(helper.make_node("Mul", [logits, "flatten"], ["scaled"], name="scale"))
    graph.node.append(helper.make_node("Softmax", ["scaled"], ["probs"], axis=1, name="softmax"))
    graph.output[0].name = "probs"
    path = folder / "softmax.onnx"
    onnx.save(model, str(path))  # no manifest: a foreign model
    return path


@pytest.fixture(scope="module")
def softmax_headed(tmp_path_factory):
    return softmax_head(tmp_path_factory.mktemp("softmax"))


def settings(model, tmp_path, **overrides):
    return QuantizeConfig(model=str(model), out=str(tmp_path / "int8.onnx"), **overrides)


def test_a_head_that_int8_destroys_is_kept_in_float_by_quantizing_compute_ops_only(softmax_headed, tmp_path):
    manifest = quantize(settings(softmax_headed, tmp_path, data="digits", preprocessing="fit"))
    q, fidelity = manifest["quantization"], manifest["metrics"]["fidelity"]
    naive, kept = q["judged"][0], q["judged"][-1]
    assert naive["loss_points"] > q["budget_points"] == 1.0  # all ops quantized: over budget
    assert kept["settings"].endswith("only)") and q["op_types"] == list(COMPUTE_OPS) and not q["excluded_nodes"]
    assert fidelity["loss_points"] <= 1.0 and fidelity["measure"] == "accuracy points lost"
    assert "Softmax" in {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}


needs_nncf = pytest.mark.skipif(
    importlib.util.find_spec("nncf") is None, reason="NNCF is not installed (pip install 'compress[nncf]')"
)


@needs_nncf
@pytest.mark.slow
def test_the_nncf_backend_is_judged_and_narrowed_like_onnxruntimes(tmp_path):
    # opset 20: NNCF 3.4 writes QuantizeLinear nodes onnxruntime refuses into some opset 21+ graphs
    model = softmax_head(tmp_path, opset=20)
    manifest = quantize(settings(model, tmp_path, data="digits", preprocessing="fit", backend="nncf"))
    q, fidelity = manifest["quantization"], manifest["metrics"]["fidelity"]
    assert q["backend"] == "nncf" and q["nncf_preset"] == "performance" and q["per_channel"]
    assert all(j["settings"].startswith("NNCF performance QDQ") for j in q["judged"])
    assert fidelity["loss_points"] <= 1.0
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}


def test_without_nncf_its_backend_is_one_line_and_nothing_is_written(softmax_headed, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # what an import of a package that is not installed meets
    with pytest.raises(quantize_module.CompressError, match=r"pip install 'compress\[nncf\]'"):
        quantize(settings(softmax_headed, tmp_path, data="digits", preprocessing="fit", backend="nncf"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "setting", [{"mode": "dynamic"}, {"per_channel": True}, {"search": True}, {"format": "qoperator"}]
)
def test_onnxruntimes_settings_are_refused_with_the_nncf_backend(softmax_headed, tmp_path, setting):
    with pytest.raises(ValueError, match=f"`{next(iter(setting))}` sets how onnxruntime quantizes; NNCF chooses"):
        settings(softmax_headed, tmp_path, backend="nncf", **setting)


def test_without_data_int8_is_judged_on_synthetic_inputs_and_says_accuracy_was_not_measured(softmax_headed, tmp_path):
    manifest = quantize(settings(softmax_headed, tmp_path, mode="dynamic"))
    metrics = manifest["metrics"]
    assert metrics["accuracy"] is None and metrics["accuracy_split"] is None
    assert metrics["fidelity"]["split"] == "synthetic" and metrics["fidelity"]["samples"] == 1000
    assert metrics["fidelity"]["measure"] == "top-1 disagreements in points"
    assert metrics["fidelity"]["top1_agreement"] >= 0.99
    assert any(line.startswith("accuracy not measured") for line in summary(manifest))


def test_nothing_is_written_when_no_narrowing_meets_the_budget(softmax_headed, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_module, "COMPUTE_OPS", ("Softmax",))  # narrowing that cannot help
    monkeypatch.setattr(quantize_module, "_quantizable_nodes", lambda path: [])
    with pytest.raises(quantize_module.CompressError, match="misses the fidelity budget.*nothing written"):
        quantize(settings(softmax_headed, tmp_path, data="digits", preprocessing="fit"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_budget_finer_than_one_sample_is_said(softmax_headed, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="compress"):
        quantize(settings(softmax_headed, tmp_path, data="digits", preprocessing="fit", max_accuracy_drop=0.1))
    assert any("more than the budget of 0.1" in r.getMessage() for r in caplog.records)


def test_preprocessing_failure_is_retried_without_symbolic_shapes_and_leaves_the_working_folder_clean(
    softmax_headed, tmp_path, monkeypatch, caplog
):
    from onnxruntime import quantization

    real = quantization.quant_pre_process

    def fails_on_symbolic_shapes(model, out, skip_symbolic_shape=False):
        if not skip_symbolic_shape:  # as onnxruntime does when shape inference gives up
            shutil.copyfile(model, "sym_shape_infer_temp.onnx")
            raise Exception("Incomplete symbolic shape inference")
        real(model, out, skip_symbolic_shape=True)

    monkeypatch.setattr(quantization, "quant_pre_process", fails_on_symbolic_shapes)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    manifest = quantize(settings(softmax_headed.with_name("m.onnx"), tmp_path, mode="dynamic"))
    assert manifest["quantization"]["preprocessed"].startswith("quant_pre_process without symbolic shape inference")
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx", "int8.onnx.json", "work"]
    assert manifest_path(tmp_path / "int8.onnx").exists()


def test_a_model_given_by_a_relative_path_is_preprocessed(softmax_headed, tmp_path, monkeypatch):
    monkeypatch.chdir(softmax_headed.parent)
    manifest = quantize(QuantizeConfig(model="m.onnx", out=str(tmp_path / "int8.onnx"), mode="dynamic"))
    assert manifest["quantization"]["preprocessed"] == "quant_pre_process"


@pytest.fixture
def any_size_image_classifier(tmp_path):
    """Conv, global pooling and Gemm over images of any height and width: (N, 3, H, W) -> (N, 4)."""
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "fc": rng.standard_normal((4, 8)).astype(np.float32),
        "b": np.zeros(4, np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
            helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "fc", "b"], ["y"], name="gemm", transB=1),
        ],
        "any_size",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    path = tmp_path / "any_size.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_symbolic_dimensions_without_data_are_given_by_shape(any_size_image_classifier, tmp_path, capsys):
    from compress.cli import main

    out = tmp_path / "out" / "int8.onnx"
    args = ["quantize", str(any_size_image_classifier), "--mode", "dynamic", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--shape x=Nx3xNxN" in err and not out.parent.exists()
    for bad, message in (["--shape", "y=1x3x8x8"], "not an input"), (["--shape", "x=1x4x8x8"], "does not fit"):
        with pytest.raises(SystemExit):
            main([*args, *bad])
        assert message in capsys.readouterr().err
    main([*args, "--shape", "x=1x3x16x24"])
    fidelity = json.loads(manifest_path(out).read_text())["metrics"]["fidelity"]
    assert fidelity["split"] == "synthetic" and fidelity["loss_points"] <= 1.0


def test_the_fewest_nodes_kept_in_float_are_found_in_a_few_tries():
    """Loss falls as more of the ranked nodes stay in float; 37 of 200 are needed: doubling, then bisection."""
    from compress.stages.quantize import Candidate, Settings, _exclude_until_within

    class Quantizer:
        def quantize(self, settings, exclude=()):
            return len(exclude)  # stands for the model: how many nodes it keeps in float

    class Judge:
        calls = 0

        def __call__(self, candidate):
            Judge.calls += 1
            candidate.loss = max(0.0, 5.0 - 0.11 * candidate.path)  # within 1 point from 37 nodes on
            return candidate

        def describe(self, candidate):
            return f"{candidate.loss:.2f}"

    settings = Settings("static", "qdq", "u8", "s8", False, False, "minmax")
    start = Candidate(settings, 0, loss=5.0)
    ranking = [{"node": f"n{i}"} for i in range(200)]
    found = _exclude_until_within(Quantizer(), start, ranking, 1.0, Judge())
    assert found.excluded == [f"n{i}" for i in range(37)] and found.loss <= 1.0
    assert Judge.calls <= 2 * 8  # 1, 2, 4, ..., 64, then bisecting 32..64
    # all but one in float do not meet it: the most faithful tried, never every node in float
    nothing_helps = _exclude_until_within(Quantizer(), start, ranking[:3], 0.0, Judge())
    assert nothing_helps.excluded == ["n0", "n1"]
