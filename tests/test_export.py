"""``compress export``: parity with PyTorch, a really dynamic batch axis, errors that leave nothing behind."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from compress.artifacts import manifest_path
from compress.cli import main
from compress.errors import CompressError
from compress.onnx_io import OnnxClassifier, max_runtime_opset, open_session
from compress.stages import export as export_module
from compress.stages.export import ExportConfig, export
from compress.stages.train import TrainConfig, train

pytestmark = pytest.mark.slow  # trains, exports, quantizes or times real models

ZOO = ["mlp", "mlp-1200", "cnn", "resnet", "resnet8", "resnet14", "resnet20"]
FACTORIES = Path(__file__).parent / "factories" / "custom_models.py"


def trained(tmp_path_factory, spec, **model_args):
    """A one-epoch checkpoint on digits: real weights and a real manifest, made in seconds."""
    name = spec.rsplit(":", 1)[-1].replace("-", "_")
    out = tmp_path_factory.mktemp(name) / f"{name}.pt"
    train(TrainConfig(model=spec, model_args=model_args, data="digits", out=str(out), epochs=1, device="cpu"))
    return out


@pytest.fixture(scope="module")
def student_pt(tmp_path_factory):
    return trained(tmp_path_factory, "mlp", hidden=[32])


@pytest.fixture(scope="module")
def student_onnx(student_pt):
    out = student_pt.with_name("student.onnx")
    export(ExportConfig(checkpoint=str(student_pt), out=str(out)))
    return out


@pytest.mark.parametrize("spec", ZOO)
def test_every_zoo_model_exports_with_parity_at_batch_1_and_7(tmp_path_factory, spec):
    checkpoint = trained(tmp_path_factory, spec)
    out = checkpoint.with_suffix(".onnx")
    manifest = export(ExportConfig(checkpoint=str(checkpoint), out=str(out)))
    parity = manifest["parity"]
    assert [b["batch_size"] for b in parity["batches"]] == [1, 7]
    assert all(b["passed"] for b in parity["batches"])
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 1.0
    onnx.checker.check_model(str(out))


def test_manifest_carries_spec_preprocessing_labels_and_parity(student_pt, student_onnx):
    source = json.loads(manifest_path(student_pt).read_text())
    manifest = json.loads(manifest_path(student_onnx).read_text())
    assert manifest["stage"] == "export"
    assert manifest["input_spec"] == {
        "name": "input",
        "shape": [None, 1, 8, 8],
        "dtype": "float32",
        "dynamic_axes": {"0": "batch"},
    }
    assert manifest["preprocessing"] == source["preprocessing"]
    assert manifest["labels"] == source["labels"] and manifest["data"] == source["data"]
    assert manifest["inputs"][0]["role"] == "checkpoint"
    assert manifest["inputs"][0]["sha256"] == source["sha256"]
    assert manifest["source"]["metrics"]["test_accuracy"] == source["metrics"]["test_accuracy"]
    assert manifest["onnx"]["opset"] == min(export_module.EXPORTER_MAX_OPSET["dynamo"], max_runtime_opset())
    assert manifest["size_bytes"] == student_onnx.stat().st_size
    assert manifest["parity"]["samples"] == 63


def test_batch_axis_is_really_dynamic(student_onnx):
    runner = OnnxClassifier(open_session(student_onnx))
    assert not isinstance(runner.input_shape[0], int)
    for batch in (1, 3, 64, 200):
        assert runner.run(np.zeros((batch, 1, 8, 8), np.float32)).shape == (batch, 10)


def test_static_batch_fixes_the_axis(student_pt, tmp_path):
    out = tmp_path / "static.onnx"
    manifest = export(ExportConfig(checkpoint=str(student_pt), out=str(out), static_batch=4))
    runner = OnnxClassifier(open_session(out))
    assert runner.input_shape[0] == 4 and manifest["input_spec"]["shape"][0] == 4
    assert manifest["input_spec"]["dynamic_axes"] == {}
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime raises its own types for a wrong batch
        runner.run(np.zeros((3, 1, 8, 8), np.float32))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("level", ["basic", "extended", "all"])
def test_runtime_optimisation_levels_pass_parity(student_pt, tmp_path, exporter, level):
    out = tmp_path / "optimised.onnx"
    manifest = export(ExportConfig(checkpoint=str(student_pt), out=str(out), exporter=exporter, optimize=level))
    assert manifest["onnx"]["optimize"] == level and manifest["parity"]["top1_agreement"] == 1.0


def test_transformer_optimizer_fuses_attention(tmp_path_factory):
    spec = f"{FACTORIES}:tiny_transformer"
    checkpoint = trained(tmp_path_factory, spec)
    out = checkpoint.with_suffix(".onnx")
    manifest = export(
        ExportConfig(
            checkpoint=str(checkpoint), model=spec, out=str(out), transformer="bert", num_heads=4, hidden_size=32
        )
    )
    assert "Attention" in manifest["onnx"]["op_types"]
    assert manifest["parity"]["max_abs_diff"] < 1e-4


def test_large_models_keep_weights_in_external_data(student_pt, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD_BYTES", 1000)
    out = tmp_path / "large.onnx"
    manifest = export(ExportConfig(checkpoint=str(student_pt), out=str(out)))
    data_files = [p for p in tmp_path.iterdir() if p.suffix == ".data"]
    assert manifest["onnx"]["external_data"] and len(data_files) == 1
    assert data_files[0].name == "large.onnx.data"
    assert out.stat().st_size < data_files[0].stat().st_size
    assert manifest["size_bytes"] == out.stat().st_size + data_files[0].stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_data_dependent_branch_is_caught_by_parity(tmp_path_factory):
    checkpoint = trained(tmp_path_factory, f"{FACTORIES}:branch_on_mean")
    out = checkpoint.with_name("broken.onnx")
    with pytest.raises(CompressError, match="parity check failed at batch size 1"):
        export(ExportConfig(checkpoint=str(checkpoint), out=str(out), exporter="torchscript", trust_model_code=True))
    assert sorted(p.name for p in out.parent.iterdir()) == ["branch_on_mean.pt", "branch_on_mean.pt.json"]


def test_batch_size_baked_in_by_tracing_is_caught(tmp_path_factory):
    spec = f"{FACTORIES}:fixed_batch_view"
    checkpoint = trained(tmp_path_factory, spec)
    out = checkpoint.with_name("baked.onnx")
    with pytest.raises(CompressError, match="batch axis was fixed during export"):
        export(ExportConfig(checkpoint=str(checkpoint), model=spec, out=str(out), exporter="torchscript"))
    assert not out.exists() and not manifest_path(out).exists()


def test_failed_export_keeps_the_earlier_good_one(student_pt, student_onnx, tmp_path):
    before = student_onnx.read_bytes(), manifest_path(student_onnx).read_text()
    with pytest.raises(CompressError, match="parity check failed"):
        export(ExportConfig(checkpoint=str(student_pt), out=str(student_onnx), atol=0, rtol=0, parity_samples=63))
    assert (student_onnx.read_bytes(), manifest_path(student_onnx).read_text()) == before


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_export_prints_parity_and_paths(student_pt, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    main(["export", str(student_pt), "--out", str(out)])
    text = capsys.readouterr().out
    assert "parity: max |diff|" in text and "at batch 1, 7" in text
    assert f"wrote {out}" in text and f"wrote {manifest_path(out)}" in text


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("not_a_checkpoint", "is not a readable compress checkpoint"),
        ("opset_too_new", "newer than the installed onnxruntime runs"),
        ("opset_too_old", "writes opsets 18..23"),
        ("not_onnx_suffix", "must end in .onnx"),
        ("wrong_data_shape", "takes samples of shape [1, 8, 8]"),
        ("no_manifest_no_data", "has no manifest naming its data"),
        ("no_manifest_no_preprocessing", "--preprocessing fit"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(student_pt, tmp_path, wide_npz, capsys, case, message):
    checkpoint, out, extra = str(student_pt), tmp_path / "out.onnx", []
    if case == "missing":
        checkpoint = str(tmp_path / "nope.pt")
    elif case == "not_a_checkpoint":
        checkpoint = str(tmp_path / "junk.pt")
        Path(checkpoint).write_bytes(b"not a checkpoint")
    elif case == "opset_too_new":
        extra = ["--opset", str(max_runtime_opset() + 1)]
    elif case == "opset_too_old":
        extra = ["--opset", "12"]
    elif case == "not_onnx_suffix":
        out = tmp_path / "out.pt"
    elif case == "wrong_data_shape":
        extra = ["--data", f"npz:{wide_npz}"]
    elif case in ("no_manifest_no_data", "no_manifest_no_preprocessing"):
        bare = tmp_path / "bare.pt"
        bare.write_bytes(student_pt.read_bytes())
        checkpoint = str(bare)
        extra = ["--data", "digits"] if case == "no_manifest_no_preprocessing" else []
    code, _, err = run_cli(["export", checkpoint, "--out", str(out), *extra], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists() and not manifest_path(out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_checkpoint_without_manifest_exports_with_data_and_preprocessing(student_pt, tmp_path):
    bare = tmp_path / "bare.pt"
    bare.write_bytes(student_pt.read_bytes())
    out = tmp_path / "bare.onnx"
    manifest = export(ExportConfig(checkpoint=str(bare), out=str(out), data="digits", preprocessing="fit"))
    source = json.loads(manifest_path(student_pt).read_text())
    assert manifest["preprocessing"] == source["preprocessing"]  # fitted the same way as training did
    assert manifest["labels"] == source["labels"] and manifest["parity"]["top1_agreement"] == 1.0
