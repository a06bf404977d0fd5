"""The stage registry: one declaration of each stage's settings, read by every front end."""

import logging
import subprocess
import sys

import click
import pytest

from compress.cli import _progress_on_stderr, cli, flag_of
from compress.recipe import TABLES, pipeline_keys
from compress.stages import STAGES
from compress.stages.base import cli_of, settable


@pytest.mark.parametrize("name", list(STAGES))
def test_every_setting_of_a_stage_is_a_flag_with_the_configs_default_and_help(name):
    stage = STAGES[name]
    command = cli.commands[name]
    params = {p.name: p for p in command.params}
    for field in settable(stage.config):
        param = params[field]
        info = stage.config.model_fields[field]
        if isinstance(param, click.Argument):
            assert cli_of(stage.config, field).argument
            continue
        assert param.help == info.description
        if not info.is_required() and param.default is not None and not param.multiple:
            default = info.get_default(call_default_factory=True)
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            assert param.default == shown, f"compress {name} {flag_of(stage.config, field)}"


@pytest.mark.parametrize("table", list(TABLES))
def test_recipe_keys_are_the_flag_names(table):
    config = STAGES[TABLES[table]].config
    for field in set(settable(config)) - pipeline_keys(table):
        flag = flag_of(config, field).lstrip("-").replace("-", "_")
        repeatable = cli_of(config, field).repeat
        assert flag == field or (repeatable and field.startswith(flag)), (table, field, flag)


def test_progress_and_warnings_of_the_compress_loggers_go_to_stderr(capsys):
    with _progress_on_stderr():
        logging.getLogger("compress.stages.quantize").info("step 1")
        logging.getLogger("compress.stages.quantize").warning("int8 is not faster")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["step 1", "warning: int8 is not faster"]


def test_the_command_line_is_built_without_loading_pytorch_or_onnxruntime():
    code = (
        "import sys; from compress.cli import main\n"
        "try:\n    main(['export', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "m.onnx", "--report", "r", "--batch-sizes", "1,x"], "--batch-sizes must be a comma-separated list"),
        (["bench", "m.onnx", "--report", "r", "--batch-sizes", ""], "--batch-sizes must have at least 1 item(s)"),
        (["bench", "m.onnx", "--report", "r", "--confidence", "0.3"], "--confidence must be greater than 0.5"),
        (["quantize", "m.onnx", "--out", "m.onnx"], "--out must differ from the input model"),
        (["prune", "s.pt", "--out", "p.pt"], "give exactly one of --amount, --target-macs, --target-params"),
        (["export", "s.pt", "--out", "s.pt"], "--out must end in .onnx, got 's.pt'"),
        (["train", "--out", "t.pt", "--model-arg", "hidden"], "is not KEY=VALUE"),
    ],
)
def test_a_bad_option_is_one_line_naming_the_flag(tmp_path, monkeypatch, capsys, args, message):
    from test_cli import run_cli

    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli(capsys, *args)
    assert status == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert message in err, err
    assert list(tmp_path.iterdir()) == []
