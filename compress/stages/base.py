"""What a stage is made of: a typed config, and the record of it that the registry keeps.

A stage config is a pydantic model whose fields are the stage's settings, declared once (name,
type, default, bounds, help). The command line turns each field into a flag (``cli.py``), a
recipe into the keys of its table (``recipe.py``) and the Python API into keyword arguments
(``api.py``); a validation error is rendered once per front end, in that front end's words
(``--min-time``, ``min_time`` with the recipe's line, ``min_time=``).

Messages of validators name fields in backticks (```amount```), so that each front end can
write the name its user typed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator

from ..artifacts import check_outputs, resume_path
from ..errors import CompressError


class StageConfig(BaseModel):
    """Settings of a stage: unknown keys, wrong types and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Cli:
    """How a config field looks on the command line, where ``--field-name VALUE`` does not fit."""

    flags: tuple[str, ...] = ()  # the flag and its aliases, e.g. ("--temperature", "-T")
    metavar: str | None = None
    argument: bool = False  # positional (CHECKPOINT, MODELS...)
    repeat: bool = False  # a repeatable flag, one item each (--hint A:B --hint C:D)
    parse: Callable[[Any], Any] | None = None  # the flag's text (or texts) -> the field's value
    hidden: bool = False  # filled in by the stage itself: no flag, no recipe key


@dataclass(frozen=True)
class Shortcut:
    """An option that makes a command do something else than run its stage (``--list-layers``)."""

    flag: str
    metavar: str
    help: str
    action: Callable[[Any, dict[str, Any]], list[str]]  # (its value, the other options given) -> lines
    nargs: int = 1


@dataclass(frozen=True)
class Stage:
    """One stage as the CLI, recipes, the pipeline and the API see it."""

    name: str  # the command: compress NAME
    config: type[StageConfig]
    run: Callable[[Any], dict[str, Any]]  # does the work; returns the manifest or report written
    summary: Callable[[dict[str, Any]], list[str]]  # what is said of that result, CLI and pipeline alike
    help: str  # the command's help, with an example
    reads: tuple[str, ...] = ()  # fields naming the files it reads (hashed by the pipeline)
    writes: tuple[str, ...] = ("out",)  # fields naming what it writes
    resumable: bool = False  # continues from its last finished epoch with ``resume``
    shortcuts: tuple[Shortcut, ...] = ()
    folders: tuple[str, ...] = ()  # the fields of ``writes`` that name a folder, not a file
    preflight: Callable[[Any], None] | None = None  # checks of the machine, before any stage of a run starts
    distributed: bool = False  # trains in parallel when torchrun starts several processes
    # (reads, writes) of one config, where a setting turns an input into an output (distill --online writes
    # the teacher it would otherwise read); ``reads``/``writes`` then list every field that may name a file
    io: Callable[[Any], tuple[tuple[str, ...], tuple[str, ...]]] | None = None

    def files(self, config: StageConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The fields naming the files ``config`` reads, and those naming what it writes."""
        return self.io(config) if self.io is not None else (self.reads, self.writes)

    def check(self, config: StageConfig) -> None:
        """What can be known before running: the outputs are writable and distinct from the inputs
        (``artifacts.check_outputs``), the machine has what the stage needs (``preflight``)."""
        if not self.distributed:
            from ..launch import refuse_if_launched

            refuse_if_launched(self.name)
        reads, writes = self.files(config)
        outputs = paths_of(config, writes)
        check_outputs(outputs, paths_of(config, reads), self.folders)
        if self.resumable and resume_path(outputs["out"]).is_dir():
            state = resume_path(outputs["out"])
            raise CompressError(f"cannot keep the resume state {state}: a folder is in the way; remove it")
        if self.preflight is not None:
            self.preflight(config)

    def execute(self, config: StageConfig) -> dict[str, Any]:
        """Run the stage once ``check`` passed: what would fail only after all the work fails first."""
        self.check(config)
        return self.run(config)


def paths_of(config: StageConfig, fields: tuple[str, ...]) -> dict[str, Path]:
    """setting -> path for the path settings ``fields`` of ``config`` (``models[1]`` for a list's items)."""
    found: dict[str, Path] = {}
    for name in fields:
        value = getattr(config, name)
        if isinstance(value, list):
            found.update({f"{name}[{i}]": Path(item) for i, item in enumerate(value)})
        elif value is not None:
            found[name] = Path(value)
    return found


def output_suffix(suffix: str) -> Any:
    """A validator of ``out``: the file written must end in ``suffix`` (.pt, .onnx)."""

    def check(cls: type, out: str) -> str:
        if not out.endswith(suffix):
            raise ValueError(f"`out` must end in {suffix}, got {out!r}")
        return out

    return field_validator("out")(check)


def _parsed_by(parser: str) -> AfterValidator:
    """A validator of a list of ``NAME=...`` items: ``compress.feeds.<parser>`` raises a ValueError naming
    the item that does not parse; the stage parses them again where it uses them."""

    def check(items: list[str]) -> list[str]:
        from .. import feeds

        getattr(feeds, parser)(items)
        return items

    return AfterValidator(check)


# ``--shape NAME=1x3x224x224`` (repeatable): the shape of a model input whose dimensions are symbolic, for
# inputs made without data (timing, fidelity).
InputShapes = Annotated[
    list[str], Cli(flags=("--shape",), metavar="NAME=DxDx...", repeat=True), _parsed_by("parse_shapes")
]
SHAPES_HELP = (
    "Shape of a model input with symbolic dimensions, batch first, for inputs made without data "
    "(e.g. x=1x3x224x224; repeatable)."
)
# ``--input-range NAME=LOW:HIGH`` (repeatable): the values synthetic inputs are drawn from (feeds.synthetic).
InputRanges = Annotated[
    list[str], Cli(flags=("--input-range",), metavar="NAME=LOW:HIGH", repeat=True), _parsed_by("parse_ranges")
]
RANGES_HELP = (
    "Values of a model input made without data, inclusive (e.g. input_ids=0:30521; repeatable). Default: "
    "standard normal floats, 0-255 for uint8, ids within the embedding they index, else 0-1; bools true."
)


def type_word(value: Any) -> str:
    """``3`` -> ``a whole number``: what a value is, in a message."""
    return _TYPE_WORDS.get(type(value), type(value).__name__)


def cli_of(config: type[StageConfig], name: str) -> Cli:
    for item in config.model_fields[name].metadata:
        if isinstance(item, Cli):
            return item
    return Cli()


def settable(config: type[StageConfig]) -> list[str]:
    """The fields a user sets (the hidden ones are the stage's own)."""
    return [name for name in config.model_fields if not cli_of(config, name).hidden]


# -- validation errors, in the words of each front end ---------------------------------------------

_KINDS = {
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a table of key = value",
    "finite_number": "a finite number",
}
_TYPE_WORDS = {
    bool: "a boolean",
    int: "a whole number",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
    tuple: "a list",
    type(None): "nothing",
}


def build(
    config: type[StageConfig], values: dict[str, Any], name_of: Callable[[str], str], setting: str = "setting"
) -> tuple[StageConfig | None, str | None, str | None]:
    """``config(**values)``, or (None, the field at fault, a one-line message naming it by ``name_of``).

    ``setting`` is what the front end calls a field in the message for an unknown one (option, key).
    """
    hidden = [key for key in values if key in config.model_fields and cli_of(config, key).hidden]
    if hidden:
        return None, hidden[0], f"{name_of(hidden[0])} is not a setting: the stage fills it in itself"
    try:
        return config(**values), None, None
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        # a rule over several fields (no location) is placed at the first field it names that was given
        named = [name for name in re.findall(r"`([a-z_]+)`", error["msg"]) if name in values]
        field = str(error["loc"][0]) if error["loc"] else (named[0] if named else None)
        return None, field, describe(error, config, name_of, setting)


def build_or_raise(
    config: type[StageConfig],
    values: dict[str, Any],
    name_of: Callable[[str], str],
    setting: str = "setting",
    prefix: str = "",
) -> StageConfig:
    built, _, message = build(config, values, name_of, setting)
    if built is None:
        raise CompressError(prefix + message)
    return built


def describe(error: dict[str, Any], config: type[StageConfig], name_of: Callable[[str], str], setting: str) -> str:
    """One pydantic error as a sentence: ``--epochs must be at least 1, got 0``."""
    loc = error["loc"]
    field = str(loc[0]) if loc else None
    name = name_of(field) + "".join(f"[{i}]" for i in loc[1:]) if field else ""
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        help_text = config.model_fields[field].description
        return f"{name} is required" + (f" ({help_text})" if help_text else "")
    if kind == "extra_forbidden":
        valid = ", ".join(name_of(n) for n in settable(config))
        return f"unknown {setting} {name}; valid {setting}s: {valid}"
    if kind in ("value_error", "assertion_error"):
        text = re.sub(r"^(Value|Assertion) error, ", "", error["msg"])
        text = re.sub(r"`([a-z_]+)`", lambda m: name_of(m.group(1)), text)
        return text if not field or name in text else f"{name}: {text}"
    if kind == "too_short":
        return f"{name} must have at least {error['ctx']['min_length']} item(s), got {value!r}"
    wanted = _KINDS.get(kind) or error["msg"].removeprefix("Input should be ")
    wanted = wanted.replace("greater than or equal to", "at least").replace("less than or equal to", "at most")
    if kind in _KINDS and kind != "finite_number":
        return f"{name} must be {wanted}, got {type_word(value)} {value!r}"
    meaning = config.model_fields[field].description if field in config.model_fields else None
    return f"{name} must be {wanted}, got {value!r}" + (f" ({_phrase(meaning)})" if meaning else "")


def _phrase(description: str) -> str:
    """A field's help as a parenthesis: ``Fraction to remove.`` -> ``fraction to remove``."""
    return description[:1].lower() + description[1:].rstrip(".")
