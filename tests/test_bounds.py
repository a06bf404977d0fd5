"""Every numeric setting of every stage has a lower and an upper bound, and a value outside them (or no
number at all) is refused before any work: one line naming the flag (or the recipe key and its line),
exit status 2, nothing written.

The cases are generated from the typed configs (``compress.stages.STAGES``), so a new numeric setting
is checked as soon as it is declared, and one declared without bounds fails here.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from pydantic import ValidationError
from test_cli import run_cli

from compress.cli import flag_of
from compress.recipe import TABLES, pipeline_keys
from compress.stages import STAGES
from compress.stages.base import cli_of

# What a command needs besides the flag under test; the files named need not exist, since a setting out
# of bounds is refused when the config is built, before any file is read.
BASE_ARGS = {
    "train": ["--out", "out.pt"],
    "distill": ["--teacher", "teacher.pt", "--out", "out.pt"],
    "prune": ["in.pt", "--out", "out.pt"],
    "export": ["in.pt", "--out", "out.onnx"],
    "quantize": ["in.onnx", "--out", "out.onnx"],
    "bench": ["in.onnx", "--report", "out"],
}
HUGE = "99999999999999999999"  # more than any 64-bit integer


@dataclass(frozen=True)
class Numeric:
    """A numeric setting (or a list of numbers) of a stage, with its bounds."""

    stage: str
    name: str
    kind: type  # int or float
    many: bool  # a list of numbers: the bounds are those of each item
    bounds: dict[str, Any]  # ge / gt / le / lt

    @property
    def id(self) -> str:
        return f"{self.stage}.{self.name}"


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    """ge / gt / le / lt of a field's metadata (annotated_types.Ge, ..., or a FieldInfo holding them)."""
    found: dict[str, Any] = {}
    for item in metadata:
        if hasattr(item, "metadata") and not hasattr(item, "ge"):  # a FieldInfo of an Annotated item
            found.update(_bounds(item.metadata))
        for key in ("ge", "gt", "le", "lt"):
            if getattr(item, key, None) is not None:
                found[key] = getattr(item, key)
    return found


def _mentions_number(annotation: Any) -> bool:
    return annotation in (int, float) or any(_mentions_number(a) for a in typing.get_args(annotation))


def numeric_settings() -> tuple[list[Numeric], list[str]]:
    """The numeric fields of every stage, and those of a type with numbers this module does not understand."""
    found, unknown = [], []
    for stage_name, stage in STAGES.items():
        for name, info in stage.config.model_fields.items():
            annotation, metadata, many = _without_none(info.annotation), list(info.metadata), False
            if typing.get_origin(annotation) is list:
                (annotation,) = typing.get_args(annotation)
                many = True
            if typing.get_origin(annotation) is Annotated:
                annotation, *extra = typing.get_args(annotation)
                metadata = extra if many else metadata + extra
            elif many:
                metadata = []  # a list's own constraints (min_length) are not its items' bounds
            if annotation in (int, float):
                found.append(Numeric(stage_name, name, annotation, many, _bounds(metadata)))
            elif _mentions_number(info.annotation):
                unknown.append(f"{stage_name}.{name}: {info.annotation}")
    return found, unknown


NUMERIC, UNKNOWN = numeric_settings()
FLAGGED = [
    s
    for s in NUMERIC
    if not cli_of(STAGES[s.stage].config, s.name).hidden and not cli_of(STAGES[s.stage].config, s.name).argument
]


def outside(setting: Numeric) -> dict[str, str]:
    """Values just outside the bounds, as typed on a command line."""
    b, values = setting.bounds, {}
    if setting.kind is int:
        if "ge" in b or "gt" in b:
            values["below"] = str(b["ge"] - 1 if "ge" in b else b["gt"])
        if "le" in b or "lt" in b:
            values["above"] = str(b["le"] + 1 if "le" in b else b["lt"])
    else:
        if "ge" in b or "gt" in b:
            values["below"] = repr(math.nextafter(b["ge"], -math.inf) if "ge" in b else float(b["gt"]))
        if "le" in b or "lt" in b:
            values["above"] = repr(math.nextafter(b["le"], math.inf) if "le" in b else float(b["lt"]))
    return values


def inside(setting: Numeric) -> list[int | float]:
    """The values nearest each bound that the setting takes."""
    b, values = setting.bounds, []
    step = (lambda x, to: x + (1 if to > x else -1)) if setting.kind is int else math.nextafter
    if "ge" in b or "gt" in b:
        values.append(b["ge"] if "ge" in b else step(b["gt"], math.inf))
    if "le" in b or "lt" in b:
        values.append(b["le"] if "le" in b else step(b["lt"], -math.inf))
    return [setting.kind(v) for v in values]


def bad_values(setting: Numeric) -> list[tuple[str, str]]:
    extreme = {"nan": "nan", "inf": "inf", "-inf": "-inf", "huge": HUGE, "text": "abc"}
    return list(outside(setting).items()) + list(extreme.items())


CLI_CASES = [
    pytest.param(setting, value, id=f"{setting.id}-{label}")
    for setting in FLAGGED
    for label, value in bad_values(setting)
]


def test_every_numeric_setting_has_a_lower_and_an_upper_bound():
    assert not UNKNOWN, f"numeric settings of a type this test does not read: {UNKNOWN}"
    assert len(NUMERIC) > 40  # the generation found the settings
    unbounded = [s.id for s in NUMERIC if not ({"ge", "gt"} & s.bounds.keys() and {"le", "lt"} & s.bounds.keys())]
    assert unbounded == [], f"give these Field(ge=/gt=..., le=/lt=...): {unbounded}"


@pytest.mark.parametrize("setting", NUMERIC, ids=lambda s: s.id)
def test_defaults_and_the_values_at_the_bounds_are_taken(setting):
    config = STAGES[setting.stage].config
    info = config.model_fields[setting.name]
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    for value in (default if isinstance(default, list) else [default]) + inside(setting):
        if value is None:
            continue
        given = [value] if setting.many else value
        try:
            config(**{setting.name: given})  # other fields may be missing: only this one's errors count
        except ValidationError as exc:
            refused = [e["msg"] for e in exc.errors() if e["loc"][:1] == (setting.name,)]
            assert refused == [], f"{setting.id} = {given!r}: {refused}"


@pytest.mark.parametrize("setting, value", CLI_CASES)
def test_a_flag_out_of_bounds_is_one_line_naming_it_and_nothing_is_written(
    tmp_path, monkeypatch, capsys, setting, value
):
    config = STAGES[setting.stage].config
    flag = flag_of(config, setting.name)
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli(capsys, setting.stage, *BASE_ARGS[setting.stage], flag, value)
    lines = err.strip().splitlines()
    assert status == 2, (status, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert flag in lines[0], lines[0]
    assert out == ""
    assert list(tmp_path.iterdir()) == []


# -- recipes: the same settings as table keys, refused when the recipe is planned ---------------------


def _toml(setting: Numeric, value: str) -> str:
    literal = '"abc"' if value == "abc" else value
    return f"[{literal}]" if setting.many else literal


RECIPE_CASES = [
    pytest.param(table, setting, value, id=f"{table}.{setting.name}-{label}")
    for table, stage in TABLES.items()
    for setting in FLAGGED
    if setting.stage == stage and setting.name not in pipeline_keys(table)
    for label, value in bad_values(setting)
]


def run_recipe(tmp_path, monkeypatch, capsys, body: str, *flags: str):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'name = "t"\n{body}\n')
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli(capsys, "run", "r.toml", *flags)
    lines = err.strip().splitlines()
    assert status == 2, (status, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: recipe r.toml, line ") and "Traceback" not in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["r.toml"]  # no run folder
    return lines[0]


@pytest.mark.parametrize("table, setting, value", RECIPE_CASES)
def test_a_recipe_key_out_of_bounds_is_one_line_naming_it_and_its_line(
    tmp_path, monkeypatch, capsys, table, setting, value
):
    line = run_recipe(
        tmp_path, monkeypatch, capsys, f"[{table}]\n{setting.name} = {_toml(setting, value)}", "--dry-run"
    )
    assert f"line 3: [{table}] {setting.name}" in line, line


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize(
    "body, message",
    [
        ("providers = []", "providers must have at least 1 item(s), got []"),
        ('providers = ["cpu", "npu"]', "providers[1] must be 'cpu', 'cuda', 'cuda-graph' or 'tensorrt', got 'npu'"),
        ("min_time = nan", "min_time must be a finite number, got nan"),
        ("min_time = 0", "min_time must be greater than 0, got 0"),
        ("batch_sizes = [1, 99999999999999999999]", "batch_sizes[1] must be at most 1048576"),
        ('threads = ["1"]', "threads[0] must be a whole number, got a string '1'"),
    ],
)
def test_bench_settings_of_a_recipe_are_refused_before_any_stage_runs(
    tmp_path, monkeypatch, capsys, dry_run, body, message
):
    line = run_recipe(tmp_path, monkeypatch, capsys, f"[bench]\n{body}", *(["--dry-run"] if dry_run else []))
    assert f"line 3: [bench] {message}" in line, line
