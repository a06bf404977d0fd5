"""The Python API: the stages as functions, made from the stage registry."""

import inspect
import logging

import pytest

import compress
from compress.stages import STAGES


def test_the_api_functions_are_made_from_the_registry_and_the_stage_modules_do_not_shadow_them():
    import compress.stages.export  # noqa: F401  (stage modules live in compress.stages, not compress)
    from compress import bench, distill, export, quantize

    assert all(callable(f) and f.__module__ == "compress.api" for f in (bench, distill, export, quantize))
    assert compress.export is export and compress.run.__module__ == "compress.api"
    signature = inspect.signature(export)
    assert list(signature.parameters)[:2] == ["checkpoint", "out"]
    assert signature.parameters["atol"].default == STAGES["export"].config.model_fields["atol"].default


@pytest.mark.slow
def test_train_export_quantize_bench_from_python(tmp_path, caplog):
    teacher = compress.train(
        out=str(tmp_path / "t.pt"), model="mlp", model_args={"hidden": [32]}, epochs=1, device="cpu"
    )
    assert teacher["stage"] == "train" and teacher["model"]["macs"] > 0
    student = compress.distill(
        teacher=str(tmp_path / "t.pt"),
        out=str(tmp_path / "s.pt"),
        model="mlp",
        model_args={"hidden": [8]},
        epochs=1,
        device="cpu",
    )
    assert student["model"]["params"] < teacher["model"]["params"]
    onnx = compress.export(str(tmp_path / "s.pt"), out=str(tmp_path / "s.onnx"))
    assert onnx["parity"]["top1_agreement"] == 1.0
    with caplog.at_level(logging.INFO, logger="compress"):
        int8 = compress.quantize(str(tmp_path / "s.onnx"), out=str(tmp_path / "s.int8.onnx"), calibration_samples=32)
    assert int8["quantization"]["mode"] == "static"
    report = compress.bench(
        [str(tmp_path / "s.onnx"), str(tmp_path / "s.int8.onnx")],
        report=str(tmp_path / "report"),
        batch_sizes=[1],
        min_runs=7,
        min_time=0.02,
        memory=False,
    )
    assert report["baseline"] == "s.onnx" and (tmp_path / "report" / "report.md").is_file()


def test_the_api_says_nothing_unless_logging_is_configured(tmp_path, capsys):
    compress.train(out=str(tmp_path / "t.pt"), model="mlp", model_args={"hidden": [8]}, epochs=1, device="cpu")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: compress.train(out="x.pt", epoch=3), r"unknown keyword epoch=; valid keywords: .*epochs="),
        (lambda: compress.train(out="x.pt", epochs=0), r"compress.train\(\): epochs= must be at least 1, got 0"),
        (lambda: compress.train(out="x.pt", epochs="3"), r"epochs= must be a whole number, got a string '3'"),
        (lambda: compress.train(out="x.onnx"), r"out= must end in .pt, got .x.onnx."),
        (lambda: compress.prune("s.pt", out="p.pt"), r"give exactly one of amount=, target_macs=, target_params="),
        (lambda: compress.prune("s.pt", out="p.pt", amount=0.5, model_args={}), r"model_args= is not a setting"),
        (lambda: compress.export(out="x.onnx"), r"checkpoint= is required"),
    ],
)
def test_a_bad_setting_is_a_compress_error_in_the_words_of_the_api(call, message):
    with pytest.raises(compress.CompressError, match=message):
        call()
