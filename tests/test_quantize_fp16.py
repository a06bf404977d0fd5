"""``compress quantize --mode fp16``: float16 for GPU providers by onnxruntime's converter, inputs and outputs
float32, judged against fp32 like int8, loadable in the CPU provider, refused with int8's settings."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime.transformers.float16 as float16
import pytest
from factories.onnx_graphs import const, save, value
from onnx import TensorProto, helper

from compress.artifacts import manifest_path
from compress.cli import main
from compress.data import load_dataset_for
from compress.errors import CompressError
from compress.pipeline import build_plan
from compress.recipe import load_recipe
from compress.stages import quantize as quantize_module
from compress.stages.export import ExportConfig, export
from compress.stages.quantize import QuantizeConfig, quantize, summary
from compress.stages.train import TrainConfig, train


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp16")
    train(TrainConfig(model="mlp", model_args={"hidden": [64]}, data="digits", out=str(folder / "m.pt"), epochs=3))
    export(ExportConfig(checkpoint=str(folder / "m.pt"), out=str(folder / "m.onnx")))
    return folder / "m.onnx"


@pytest.fixture(scope="module")
def mlp_fp16(mlp_onnx):
    out = mlp_onnx.with_name("m.fp16.onnx")
    return out, quantize(QuantizeConfig(model=str(mlp_onnx), out=str(out), mode="fp16"))


def logits(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.slow
def test_fp16_has_float16_weights_float32_io_runs_on_cpu_and_agrees_with_fp32(mlp_onnx, mlp_fp16):
    out, manifest = mlp_fp16
    model = onnx.load(str(out))
    weights = [t for t in model.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in (*model.graph.input, *model.graph.output))
    onnx.checker.check_model(model)  # as every stage that reads it checks it (nodes in order)

    x = load_dataset_for(str(mlp_onnx), json.loads(manifest_path(mlp_onnx).read_text())).x_test
    fp32, fp16 = logits(mlp_onnx, x), logits(out, x)
    assert fp16.dtype == np.float32 and fp16.shape == fp32.shape
    assert np.mean(fp16.argmax(1) == fp32.argmax(1)) >= 0.99

    q, metrics = manifest["quantization"], manifest["metrics"]
    assert q["mode"] == q["precision"] == "fp16" and q["calibration_samples"] == 0
    assert q["coverage"] == {"fp16_compute": 2, "float_compute": 0, "conversions": 2}  # the two io casts
    assert metrics["accuracy_drop_points"] <= 1.0 and metrics["fidelity"]["top1_agreement"] >= 0.99
    assert metrics["size_bytes"] < 0.7 * metrics["float_size_bytes"]
    assert metrics["latency"]["fp16"]["p50_ms"] > 0 and metrics["latency"]["provider"] == "cpu"
    assert metrics["recommendation"].startswith("fp16 on GPU providers (CUDA/TensorRT)")
    assert manifest["sha256"] and manifest == json.loads(manifest_path(out).read_text())


@pytest.mark.slow
def test_the_summary_says_fp16_is_for_gpu_providers_and_a_slower_cpu_is_expected(mlp_fp16):
    lines = summary(mlp_fp16[1])
    assert lines[0].startswith("settings: fp16 by onnxruntime.transformers.float16")
    assert any(line.startswith("accuracy (val): fp32") and "-> fp16" in line for line in lines)
    assert any(line.startswith("latency on the CPU provider") for line in lines)
    gpu = next(line for line in lines if line.startswith("fp16 is for GPU providers (CUDA/TensorRT)"))
    assert "usually no faster and often slower" in gpu and "not a fault" in gpu
    # a slower fp16 on the CPU is no warning against the variant
    assert mlp_fp16[1]["metrics"]["warnings"] == []


@pytest.mark.slow
def test_bench_measures_the_fp16_model_beside_fp32(mlp_onnx, mlp_fp16, tmp_path):
    report = tmp_path / "report"
    timing = ["--batch-sizes", "1", "--warmup", "1", "--min-runs", "7", "--min-time", "0.02", "--no-memory"]
    main(["bench", str(mlp_onnx), str(mlp_fp16[0]), "--report", str(report), *timing])
    models = json.loads((report / "report.json").read_text())["models"]
    fp32, fp16 = (m["providers"]["cpu"] for m in models)
    assert models[1]["name"] == "m.fp16.onnx" and abs(fp16["top1"] - fp32["top1"]) <= 0.01


@pytest.mark.parametrize(
    "flags",
    [
        ["--format", "qdq"],
        ["--activation-type", "u8"],
        ["--weight-type", "s8"],
        ["--per-channel"],
        ["--calibration", "entropy"],
        ["--calibration-samples", "64"],
        ["--no-preprocess"],
        ["--search"],
        ["--backend", "nncf"],
        ["--nncf-preset", "mixed"],
    ],
)
def test_int8_settings_with_fp16_are_one_line_exit_2(tmp_path, capsys, flags):
    out = tmp_path / "m.fp16.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(tmp_path / "m.onnx"), "--out", str(out), "--mode", "fp16", *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {flags[0].replace('--no-', '--')} applies to int8 only; --mode fp16")
    assert list(tmp_path.iterdir()) == []


def rounded_head(path):
    """``proj`` (fine in fp16) gives scores that sum to zero, ``head`` weighs them by 1 plus differences of about
    1e-4: the common 1 cancels, the differences pick the class. fp16 (spacing 1e-3 near 1) rounds the differences
    away, so every class ties, unless ``head`` keeps its weights in float32."""
    rng = np.random.default_rng(0)
    a = rng.normal(0, 3, (16, 10))
    return save(
        path,
        [
            helper.make_node("MatMul", ["x", "w"], ["scores"], name="proj"),
            helper.make_node("MatMul", ["scores", "v"], ["y"], name="head"),
        ],
        [value("x", TensorProto.FLOAT, ["n", 16])],
        [value("y", TensorProto.FLOAT, ["n", 10])],
        [
            const("w", (a - a.mean(axis=1, keepdims=True)).astype(np.float32)),
            const("v", (1 + rng.normal(0, 1e-4, (10, 10))).astype(np.float32)),
        ],
    )


@pytest.mark.slow
def test_over_budget_fp16_is_narrowed_by_keeping_nodes_in_float32(tmp_path):
    model = rounded_head(tmp_path / "head.onnx")
    manifest = quantize(QuantizeConfig(model=str(model), out=str(tmp_path / "head.fp16.onnx"), mode="fp16"))
    q, fidelity = manifest["quantization"], manifest["metrics"]["fidelity"]
    assert fidelity["split"] == "synthetic" and fidelity["loss_points"] <= 1.0  # no data: judged on the signature
    assert q["judged"][0]["settings"] == "fp16" and q["judged"][0]["loss_points"] > 50  # every node fp16: ties
    assert q["op_types"] == list(quantize_module.COMPUTE_OPS) and q["excluded_nodes"] == ["head"]
    assert [entry["node"] for entry in q["sensitivity"]] == ["head", "proj"]
    assert q["coverage"] == {"fp16_compute": 1, "float_compute": 1, "conversions": 4}
    weights = {t.name: t.data_type for t in onnx.load(str(tmp_path / "head.fp16.onnx")).graph.initializer}
    assert weights == {"w": TensorProto.FLOAT16, "v": TensorProto.FLOAT}  # head's weights kept in float32
    assert any(line.startswith("kept in float32") and line.endswith(": head") for line in summary(manifest))


@pytest.mark.slow
def test_fp16_that_no_narrowing_brings_within_budget_writes_nothing(tmp_path, monkeypatch, capsys):
    model = rounded_head(tmp_path / "head.onnx")
    monkeypatch.setattr(quantize_module, "_quantizable_nodes", lambda path: [])  # no node may stay float32
    out = tmp_path / "head.fp16.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(model), "--out", str(out), "--mode", "fp16"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2 and len(errors) == 1
    assert errors[0].startswith("error: fp16 misses the fidelity budget") and "nothing written" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.onnx"]


@pytest.mark.slow
def test_an_fp16_model_the_cpu_provider_cannot_load_is_one_line(mlp_onnx, tmp_path, monkeypatch):
    def unloadable(model, **settings):  # valid ONNX (a custom domain), but no kernel for it in onnxruntime
        model.graph.node[0].domain, model.graph.node[0].op_type = "com.example", "Unknown"
        model.opset_import.append(helper.make_opsetid("com.example", 1))
        return model

    monkeypatch.setattr(float16, "convert_float_to_float16", unloadable)
    out = tmp_path / "m.fp16.onnx"
    with pytest.raises(CompressError, match="^onnxruntime's CPU provider cannot load the fp16 model") as info:
        quantize(QuantizeConfig(model=str(mlp_onnx), out=str(out), mode="fp16"))
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []


def test_a_recipe_in_fp16_names_its_variant_fp16(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'name = "r"\ndata = "digits"\n[teacher]\n[student]\n[export]\n[quantize]\nmode = "fp16"\n[bench]\n'
    )
    plan = build_plan(load_recipe(recipe))
    step = next(s for s in plan.steps if s.name == "quantize")
    assert step.config.out.endswith("student.fp16.onnx") and plan.variants[-1][0] == "student fp16"
