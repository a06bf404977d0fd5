"""``compress quantize`` on the digits data: int8 that keeps accuracy, a budget that is met, honest speed."""

import json
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import torch

from compress.artifacts import manifest_path, sha256_file, write_manifest
from compress.cli import main
from compress.errors import CompressError
from compress.hardware import CpuInfo
from compress.stages import quantize as quantize_module
from compress.stages.export import ExportConfig, export
from compress.stages.quantize import Candidate, QuantizeConfig, Settings, choose_settings, quantize, search_space
from compress.stages.train import TrainConfig, train

pytestmark = pytest.mark.slow  # trains, exports, quantizes or times real models

X86_VNNI = CpuInfo("test", "x86_64", 2, frozenset({"avx2", "avx512f", "avx512_vnni"}))
X86_AVX2 = CpuInfo("test", "x86_64", 2, frozenset({"avx2"}))
ARM = CpuInfo("test", "aarch64", 2, frozenset({"asimd", "asimddp"}))


def exported(tmp_path_factory, name, model, epochs, **model_args):
    folder = tmp_path_factory.mktemp(name)
    checkpoint = folder / f"{name}.pt"
    train(
        TrainConfig(model=model, model_args=model_args, data="digits", out=str(checkpoint), epochs=epochs, device="cpu")
    )
    out = folder / f"{name}.onnx"
    export(ExportConfig(checkpoint=str(checkpoint), out=str(out)))
    return out


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory):
    return exported(tmp_path_factory, "mlp", "mlp", 8, hidden=[64, 64])


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    return exported(tmp_path_factory, "resnet", "resnet8", 3, width=8)


@pytest.fixture(scope="module")
def outlier_mlp_onnx(tmp_path_factory):
    """An MLP that per-tensor int8 breaks: one huge weight on an input pixel that is always 0.

    The float model is unchanged by it (digits' corner pixel is 0 in every image, and the bias
    absorbs the constant it contributes), but the
    first layer's single weight scale must cover it, so its other weights round to zero.
    """
    folder = tmp_path_factory.mktemp("outlier")
    checkpoint = folder / "outlier.pt"
    train(
        TrainConfig(
            model="mlp", model_args={"hidden": [64, 64]}, data="digits", out=str(checkpoint), epochs=8, device="cpu"
        )
    )
    state = torch.load(checkpoint, weights_only=True)
    pre = json.loads(manifest_path(checkpoint).read_text())["preprocessing"]
    corner = (0.0 - pre["mean"][0]) / pre["std"][0]  # the corner pixel after normalisation
    layer = state["state_dict"]
    layer["fc1.linear.bias"] -= (50.0 - layer["fc1.linear.weight"][:, 0]) * corner
    layer["fc1.linear.weight"][:, 0] = 50.0
    torch.save(state, checkpoint)
    manifest = json.loads(manifest_path(checkpoint).read_text())
    write_manifest(checkpoint, {**manifest, "sha256": sha256_file(checkpoint), "size_bytes": checkpoint.stat().st_size})
    out = folder / "outlier.onnx"
    export(ExportConfig(checkpoint=str(checkpoint), out=str(out), atol=1e-3))
    return out


def config(model, tmp_path, **overrides):
    settings = dict(model=str(model), out=str(tmp_path / "int8.onnx"), calibration_samples=128)
    settings.update(overrides)
    return QuantizeConfig(**settings)


def quantized_ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_dynamic_int8_runs_and_keeps_accuracy(mlp_onnx, tmp_path):
    manifest = quantize(config(mlp_onnx, tmp_path, mode="dynamic"))
    metrics, q = manifest["metrics"], manifest["quantization"]
    assert q["mode"] == "dynamic" and q["calibration_samples"] == 0
    assert "DynamicQuantizeLinear" in quantized_ops(tmp_path / "int8.onnx")
    assert metrics["accuracy_split"] == "val" and metrics["float_accuracy"] > 0.85
    assert metrics["accuracy_drop_points"] <= 1.0
    assert metrics["size_bytes"] < metrics["float_size_bytes"] / 2
    assert metrics["latency"]["int8"]["p50_ms"] > 0 and metrics["latency"]["speedup"] > 0


@pytest.mark.parametrize("calibration", ["minmax", "entropy", "percentile"])
def test_static_int8_keeps_accuracy_for_every_calibration(mlp_onnx, tmp_path, calibration):
    manifest = quantize(config(mlp_onnx, tmp_path, calibration=calibration))
    q = manifest["quantization"]
    assert q["calibration"] == calibration and q["calibration_samples"] == 128
    assert q["format"] == "qdq" and "QuantizeLinear" in quantized_ops(tmp_path / "int8.onnx")
    assert manifest["metrics"]["accuracy_drop_points"] <= 1.0
    assert q["coverage"]["float_compute"] == 0 and q["coverage"]["int8_compute"] == 3


def test_static_qoperator_per_channel_on_a_cnn(cnn_onnx, tmp_path):
    manifest = quantize(config(cnn_onnx, tmp_path, format="qoperator", per_channel=True))
    assert "QLinearConv" in quantized_ops(tmp_path / "int8.onnx")
    assert manifest["quantization"]["per_channel"] is True
    assert manifest["metrics"]["accuracy_drop_points"] <= 2.0


def test_manifest_carries_the_fp32_models_facts(mlp_onnx, tmp_path):
    source = json.loads(manifest_path(mlp_onnx).read_text())
    manifest = quantize(config(mlp_onnx, tmp_path))
    for key in ("input_spec", "output_spec", "preprocessing", "labels", "data", "model"):
        assert manifest[key] == source[key]
    assert manifest["inputs"][0]["sha256"] == source["sha256"]
    assert manifest["quantization"]["preprocessed"] == "quant_pre_process"
    assert manifest["quantization"]["cpu"]["architecture"]


def test_a_model_that_naive_int8_destroys_is_narrowed_within_the_default_budget(outlier_mlp_onnx, tmp_path):
    manifest = quantize(config(outlier_mlp_onnx, tmp_path))
    q, metrics = manifest["quantization"], manifest["metrics"]
    assert q["judged"][0]["loss_points"] > 5 and q["judged"][0]["float_nodes"] == 0  # naive int8: destroyed
    assert q["op_types"] == list(quantize_module.COMPUTE_OPS) and q["budget_points"] == 1.0
    assert not q["over_budget"] and metrics["accuracy_drop_points"] <= 1.0 and q["excluded_nodes"]
    assert metrics["fidelity"]["top1_agreement"] > 0.95 and metrics["fidelity"]["split"] == "val"


def test_tight_budget_keeps_sensitive_nodes_in_float_and_is_met(outlier_mlp_onnx, tmp_path):
    manifest = quantize(config(outlier_mlp_onnx, tmp_path, max_accuracy_drop=0.5))
    q, metrics = manifest["quantization"], manifest["metrics"]
    assert not q["over_budget"] and metrics["accuracy_drop_points"] <= 0.5
    ranked = [entry["node"] for entry in q["sensitivity"]]
    assert len(ranked) == 3 and q["excluded_nodes"] == ranked[: len(q["excluded_nodes"])]
    first_layer = next(n.name for n in onnx.load(str(outlier_mlp_onnx)).graph.node if n.op_type in ("Gemm", "MatMul"))
    assert ranked[0] == first_layer == q["excluded_nodes"][0]
    assert q["coverage"]["float_compute"] == len(q["excluded_nodes"]) < 3


def test_budget_out_of_reach_is_an_error_unless_allowed(outlier_mlp_onnx, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quantize_module, "_quantizable_nodes", lambda path: [])  # nothing may stay float
    out = tmp_path / "int8.onnx"
    args = ["quantize", str(outlier_mlp_onnx), "--out", str(out), "--max-accuracy-drop", "0.5"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and "misses the fidelity budget" in captured.err
    error_lines = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "nothing written" in error_lines[0]
    assert not out.exists() and not manifest_path(out).exists()
    main(args + ["--allow-over-budget"])
    assert "accuracy (val)" in capsys.readouterr().out
    assert json.loads(manifest_path(out).read_text())["quantization"]["over_budget"]


def test_search_keeps_the_fastest_setting_within_budget(mlp_onnx, tmp_path):
    manifest = quantize(config(mlp_onnx, tmp_path, search=True, max_accuracy_drop=1.0))
    records = manifest["quantization"]["search"]
    assert len(records) == len(search_space(choose_settings(config(mlp_onnx, tmp_path), X86_VNNI), X86_VNNI))
    assert all(r["accuracy"] is not None and r["p50_ms"] > 0 for r in records)
    within = [r for r in records if r["loss_points"] <= 1.0]
    fastest = max(within, key=lambda r: r["speedup"])
    q = manifest["quantization"]
    chosen = next(
        r
        for r in records
        if (r["mode"], r["format"], r["activation_type"], r["per_channel"])
        == (q["mode"], q["format"], q["activation_type"], q["per_channel"])
    )
    # the fastest, or one within its round-to-round spread that is at least as faithful
    as_fast = [r for r in within if r["speedup"] >= fastest["speedup_range"][0]]
    assert chosen in as_fast and chosen["loss_points"] == min(r["loss_points"] for r in as_fast)


def test_types_are_chosen_for_the_cpu_with_reasons():
    base = QuantizeConfig(model="m.onnx", out="o.onnx")
    vnni = choose_settings(base, X86_VNNI)
    assert (vnni.activation_type, vnni.weight_type, vnni.reduce_range) == ("u8", "s8", False)
    assert any("VNNI" in r for r in vnni.reasons)
    avx2 = choose_settings(base, X86_AVX2)
    assert avx2.reduce_range and any("saturation" in r for r in avx2.reasons)
    arm = choose_settings(base, ARM)
    assert (arm.activation_type, arm.weight_type, arm.reduce_range) == ("s8", "s8", False)
    with pytest.raises(CompressError, match="slow on x86-64"):
        choose_settings(
            QuantizeConfig(model="m", out="o.onnx", format="qoperator", activation_type="s8", weight_type="s8"),
            X86_VNNI,
        )
    assert not any(s.format == "qoperator" and s.activation_type == "s8" for s in search_space(vnni, X86_VNNI))
    assert any(s.format == "qoperator" and s.activation_type == "s8" for s in search_space(arm, ARM))


def test_int8_slower_than_fp32_is_explained(mlp_onnx, tmp_path):
    settings = Settings("dynamic", "qoperator", "u8", "s8", False, False, "minmax")
    quantize(config(mlp_onnx, tmp_path, mode="dynamic"))
    candidate = Candidate(settings, tmp_path / "int8.onnx")
    warnings = quantize_module._speed_warnings(candidate, {"speedup": 0.8, "batch_size": 1}, X86_AVX2)
    assert len(warnings) == 1 and "not faster than fp32" in warnings[0]
    assert "dynamic quantization" in warnings[0] and "no VNNI" in warnings[0]
    assert "keeping fp32" in warnings[0]
    assert quantize_module._speed_warnings(candidate, {"speedup": 1.6, "batch_size": 1}, X86_AVX2) == []


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def test_cli_prints_choices_accuracy_latency_and_paths(mlp_onnx, tmp_path, capsys):
    out = tmp_path / "cli.int8.onnx"
    main(["quantize", str(mlp_onnx), "--out", str(out), "--calibration-samples", "64"])
    text = capsys.readouterr().out
    for expected in (
        "settings: static, qdq, activations",
        "why:",
        "accuracy (val): fp32",
        "latency (batch 64, p50)",
        "size:",
        f"wrote {out}",
        f"wrote {manifest_path(out)}",
    ):
        assert expected in text


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("not_onnx", "is not a readable ONNX model"),
        ("truncated", "is not a readable ONNX model"),
        ("opset_too_new", "newer than onnxruntime runs"),
        ("wrong_shape_data", "but npz:"),
        ("no_manifest_static", "has no manifest naming its data"),
        ("no_manifest_no_preprocessing", "--preprocessing"),
        ("same_out", "must differ from the input model"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(mlp_onnx, tmp_path, wide_npz, capsys, case, message):
    model, out, extra = str(mlp_onnx), tmp_path / "out.onnx", []
    bare = tmp_path / "bare.onnx"
    if case == "missing":
        model = str(tmp_path / "nope.onnx")
    elif case == "not_onnx":
        Path(model := str(tmp_path / "junk.onnx")).write_text("hello")
    elif case == "truncated":
        data = mlp_onnx.read_bytes()
        Path(model := str(tmp_path / "cut.onnx")).write_bytes(data[: len(data) // 2])
    elif case == "opset_too_new":
        proto = onnx.load(str(mlp_onnx))
        proto.opset_import[0].version = onnx.defs.onnx_opset_version()
        onnx.save(proto, model := str(tmp_path / "future.onnx"))
    elif case == "wrong_shape_data":
        extra = ["--data", f"npz:{wide_npz}"]
    elif case == "no_manifest_static":
        bare.write_bytes(mlp_onnx.read_bytes())
        model = str(bare)
    elif case == "no_manifest_no_preprocessing":
        bare.write_bytes(mlp_onnx.read_bytes())
        model, extra = str(bare), ["--data", "digits"]
    elif case == "same_out":
        out = mlp_onnx
    before = set(tmp_path.iterdir())
    code, err = run_cli(["quantize", model, "--out", str(out), *extra], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert set(tmp_path.iterdir()) == before


def test_model_without_manifest_quantizes_with_data_and_preprocessing(mlp_onnx, tmp_path):
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(mlp_onnx.read_bytes())
    manifest = quantize(
        QuantizeConfig(
            model=str(bare),
            out=str(tmp_path / "bare.int8.onnx"),
            data="digits",
            preprocessing="fit",
            calibration_samples=64,
        )
    )
    assert manifest["data"]["spec"] == "digits" and manifest["metrics"]["accuracy_drop_points"] <= 1.0


@pytest.mark.slow
def test_a_setting_the_quantizer_fails_on_is_left_out_of_the_search_and_recorded(mlp_onnx, tmp_path, monkeypatch):
    """onnxruntime's quantizer raises on some graphs for some settings only: the others are still tried."""
    real = quantize_module.Quantizer.quantize

    def failing_per_channel(self, settings, exclude=(), only=None):
        if settings.per_channel and settings.mode == "static":
            raise CompressError("onnxruntime.quantization failed (test): ambiguous truth value")
        return real(self, settings, exclude, only)

    monkeypatch.setattr(quantize_module.Quantizer, "quantize", failing_per_channel)
    manifest = quantize(config(mlp_onnx, tmp_path, search=True))
    q = manifest["quantization"]
    assert q["search_failed"] and all("ambiguous truth value" in f["error"] for f in q["search_failed"])
    assert q["search"] and not any(r["per_channel"] and r["mode"] == "static" for r in q["search"])


def test_search_prefers_the_default_unless_another_setting_is_faster_beyond_noise():
    base = choose_settings(QuantizeConfig(model="m.onnx", out="o.onnx"), X86_VNNI)
    space = search_space(base, X86_VNNI)

    def candidates(default_speedup, other_speedup):
        found = []
        for settings in space:
            c = Candidate(settings, Path("unused.onnx"))
            is_default = replace(settings, reasons=()) == replace(base, reasons=())
            c.speedup = default_speedup if is_default else other_speedup
            found.append(c)
        return found

    noisy = quantize_module._pick(candidates((2.0, 1.9, 2.1), (2.2, 1.8, 2.6)), base)
    assert replace(noisy.settings, reasons=()) == replace(base, reasons=()) and noisy.settings.reasons
    clear = quantize_module._pick(candidates((2.0, 1.9, 2.1), (3.0, 2.8, 3.2)), base)
    assert replace(clear.settings, reasons=()) != replace(base, reasons=())
    assert quantize_module._pick([], base) is None
    # as fast within noise, but more faithful: the more faithful one, whichever is fastest
    found = candidates((2.0, 1.9, 2.1), (2.2, 1.8, 2.6))
    for c in found:
        c.loss = 0.5
    found[-1].loss = 0.1
    assert quantize_module._pick(found, base) is found[-1]
