"""The Python API: the commands as functions, with the commands' defaults."""

import dataclasses

import click
import pytest

import compress
from compress.bench.run import BenchConfig
from compress.cli import cli
from compress.distill.trainer import DistillConfig
from compress.export import ExportConfig
from compress.prune import PruneConfig
from compress.quantize import QuantizeConfig
from compress.train import TrainConfig


def test_the_api_names_are_the_functions_even_after_their_modules_are_imported():
    import compress.bench.run  # noqa: F401  (each import would rebind compress.<name> to a module)
    import compress.distill.trainer  # noqa: F401
    import compress.export  # noqa: F401
    import compress.quantize  # noqa: F401
    from compress import bench, distill, export, quantize

    assert all(callable(f) and f.__module__ == "compress.api" for f in (bench, distill, export, quantize))
    assert compress.export is export and compress.run.__module__ == "compress.api"
    from compress.export import ExportConfig as again

    assert again is ExportConfig


def test_train_export_quantize_bench_from_python(tmp_path):
    teacher = compress.train(
        out=str(tmp_path / "t.pt"), model="mlp", model_args={"hidden": [32]}, epochs=1, device="cpu"
    )
    assert teacher["stage"] == "train" and teacher["model"]["macs"] > 0
    student = compress.distill(
        teacher=str(tmp_path / "t.pt"),
        out=str(tmp_path / "s.pt"),
        student="mlp",
        model_args={"hidden": [8]},
        epochs=1,
        device="cpu",
    )
    assert student["model"]["params"] < teacher["model"]["params"]
    onnx = compress.export(str(tmp_path / "s.pt"), out=str(tmp_path / "s.onnx"))
    assert onnx["parity"]["top1_agreement"] == 1.0
    int8 = compress.quantize(
        str(tmp_path / "s.onnx"), out=str(tmp_path / "s.int8.onnx"), calibration_samples=32, log=lambda line: None
    )
    assert int8["quantization"]["mode"] == "static"
    report = compress.bench(
        [str(tmp_path / "s.onnx"), str(tmp_path / "s.int8.onnx")],
        report=str(tmp_path / "report"),
        batch_sizes=[1],
        min_runs=7,
        min_seconds=0.02,
        memory=False,
        log=lambda line: None,
    )
    assert report["baseline"] == "s.onnx" and (tmp_path / "report" / "report.md").is_file()


def test_an_unknown_setting_is_a_compress_error_listing_the_valid_ones():
    with pytest.raises(compress.CompressError, match="unknown setting.*epoch\\b.*valid: .*epochs"):
        compress.train(out="x.pt", epoch=3)


@pytest.mark.parametrize(
    "command, config",
    [
        ("train", TrainConfig),
        ("distill", DistillConfig),
        ("prune", PruneConfig),
        ("export", ExportConfig),
        ("quantize", QuantizeConfig),
        ("bench", BenchConfig),
    ],
)
def test_each_flag_defaults_to_its_config_field_default(command, config):
    """One set of defaults: a recipe (or the API) leaving a key out gets what the flag gives."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    for option in cli.commands[command].params:
        field = fields.get(option.name)
        # flags without a default (click's sentinel), arguments and multiple-value flags: nothing to compare
        if (
            field is None
            or isinstance(option, click.Argument)
            or not isinstance(option.default, (bool, int, float, str))
        ):
            continue
        if field.default_factory is not dataclasses.MISSING:
            expected = field.default_factory()
        else:
            expected = field.default
        flag = option.default
        if isinstance(expected, list) and isinstance(flag, str):  # --batch-sizes 1,64 and the like
            flag = [type(expected[0])(v) for v in flag.split(",")]
        assert flag == expected, f"compress {command} --{option.name}: flag {flag!r}, config {expected!r}"
