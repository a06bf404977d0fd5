"""Recipes: a TOML file that names every stage of a ``compress run``, checked before anything runs.

Each table maps onto the config of the stage it stands for (``compress.stages``), so its keys are
the command's flags (``--min-time`` -> ``min_time``) and a key left out takes the flag's default::

    name = "demo"                 # outputs in runs/demo/ (or: out = "some/folder")
    data = "digits"               # any --data source; ${VAR} takes an environment variable

    [teacher]                     # TrainConfig: train one ...
    model = "resnet8"             # ... or give one: path = "teacher.pt" (or .onnx); a checkpoint
                                  # of your own code also takes model = "file.py:factory" (its code),
                                  # an ONNX model without a manifest preprocessing = "fit"|"scale"|"raw"
    [student]                     # DistillConfig (model is the student)
    [prune]                       # PruneConfig; optional: prunes the student
    [export]                      # ExportConfig, for every export
    [quantize]                    # QuantizeConfig; optional: int8 of the final student
    [bench]                       # BenchConfig

Paths (outputs, inputs, the teacher) are the pipeline's business: each stage reads what the
previous one wrote in the run folder, so the keys that name them are refused in the tables.
Mistakes (unknown key, wrong type, a value out of bounds, missing file) are a ``CompressError``
naming the key and its line, raised before any stage runs.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from .artifacts import manifest_path, read_manifest
from .data import PreprocessingChoice
from .data.sources import BUILT_IN_SOURCES, PATH_SOURCES, SOURCE_FORMS, source_paths
from .errors import CompressError
from .stages import STAGES
from .stages.base import StageConfig, build, settable, type_word

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Each table of a recipe, and the stage whose settings it holds.
TABLES = {
    "teacher": "train",
    "student": "distill",
    "prune": "prune",
    "export": "export",
    "quantize": "quantize",
    "bench": "bench",
}
TOP_LEVEL_KEYS = {"name", "out", "data", *TABLES}
# Settings the pipeline fills in for every stage, besides the files each reads and writes: the data,
# and the model code of the teacher (named in [teacher]).
WIRED_SETTINGS = {"data", "preprocessing", "resume", "teacher_model", "trust_model_code"}
# Tables whose stage rebuilds a checkpoint of the run: the pipeline names its model code.
REBUILDS_CHECKPOINT = {"prune", "export"}
TEACHER_SUFFIXES = (".pt", ".onnx")
MASKED_LENGTH = 4  # values of ${VAR} this long or longer are not repeated in messages
# [teacher] with path = FILE takes only these: the code its checkpoint names, or trust in it; and for
# a model without a manifest, how its inputs were normalised.
TEACHER_PATH_KEYS = {"path": str, "model": str, "trust_model_code": bool, "preprocessing": str}
# [student] settings of a teacher trained beside the student (distill --online): a recipe's teacher is [teacher]'s.
ONLINE_KEYS = {"online", "teacher_model_args"}


def pipeline_keys(table: str) -> set[str]:
    """The settings of ``table`` that the pipeline sets: the files of its stage, the data, model code."""
    stage = STAGES[TABLES[table]]
    wired = WIRED_SETTINGS | ({"model"} if table in REBUILDS_CHECKPOINT else set())
    return (set(stage.reads) | set(stage.writes) | wired) & set(stage.config.model_fields)


@dataclass
class Recipe:
    """A parsed, checked recipe: the settings of each table as keyword arguments of its config."""

    path: Path
    name: str
    out: Path
    data: str
    teacher_path: Path | None  # an existing teacher, or None to train one
    teacher_code: dict[str, Any]  # for teacher_path: the model code the user names (model), or trust in it
    teacher_preprocessing: str | None  # for a teacher_path without a manifest: how its inputs were normalised
    tables: dict[str, dict[str, Any]]  # table -> settings (only the keys the recipe gives)
    locator: _Locator = field(repr=False)

    def mask(self, message: str) -> str:
        """``message`` without the values of the recipe's environment variables (see ``_Locator.mask``)."""
        return self.locator.mask(message)

    def has(self, table: str) -> bool:
        return table in self.tables

    def build(self, table: str, **paths: Any) -> StageConfig:
        """The config of ``table``'s stage: its settings in the recipe, and the files the pipeline gives.
        A setting that does not validate is an error naming its key and line."""
        stage = STAGES[TABLES[table]]
        settings = self.tables.get(table, {})
        config, key, message = build(stage.config, {**paths, **settings}, lambda name: name, "key")
        if config is None:
            if key in settings:
                raise self.locator.error(table, key, f"[{table}] {message}")
            raise self.locator.error(None, table, f"[{table}] {message}")
        return config


def load_recipe(path: str | Path, data: str | None = None, out: str | None = None) -> Recipe:
    """Read and check ``path``; ``data`` / ``out`` override the recipe's (as the CLI flags do)."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"recipe {path} does not exist; give the path of a .toml file (see recipes/ for examples)")
    try:
        text = path.read_text()
        raw = tomllib.loads(text)
    except UnicodeDecodeError:
        raise CompressError(f"recipe {path} is not a text file; give a TOML recipe") from None
    except tomllib.TOMLDecodeError as exc:
        raise CompressError(f"recipe {path} is not valid TOML: {exc}") from None
    where = _Locator(path, text)

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise where.error(None, key, f"unknown key {key!r}; a recipe has {', '.join(sorted(TOP_LEVEL_KEYS))}")
    for key in ("name", "out", "data"):
        if key in raw and not isinstance(raw[key], str):
            raise where.error(None, key, f"{key} must be a string, got {type_word(raw[key])}")
    tables = {}
    for table in TABLES:
        if table in raw and not isinstance(raw[table], dict):
            raise where.error(None, table, f"{table} must be a table ([{table}]), got {type_word(raw[table])}")
        if table in raw:
            tables[table] = dict(raw[table])

    name = _expand(raw.get("name", path.stem), where, None, "name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise where.error(
            None,
            "name",
            f"name {name!r} must be a plain folder name (letters, digits, . _ -); use out = PATH for another place",
        )
    out_text = out if out is not None else _expand(raw.get("out", f"runs/{name}"), where, None, "out")
    if not out_text.strip():
        raise where.error(None, "out", "out is empty; name the run folder (out = PATH), or leave out out for runs/NAME")
    out_dir = Path(out_text)
    if out_dir.exists() and not out_dir.is_dir():
        raise where.error(None, "out", f"the run folder {out_dir} exists and is not a folder; choose another out")
    default_data = STAGES["train"].config.model_fields["data"].default
    data_spec = data or _expand(raw.get("data", default_data), where, None, "data")
    _check_data(data_spec, where)

    teacher_path = None
    teacher_preprocessing = None
    teacher = tables.setdefault("teacher", {})
    teacher_code: dict[str, Any] = {"model": None, "trust_model_code": False}
    if "path" in teacher:
        others = sorted(set(teacher) - set(TEACHER_PATH_KEYS))
        if others:
            raise where.error(
                "teacher",
                others[0],
                "[teacher] takes either path = FILE (an existing teacher, with its model code as model = SPEC "
                "or trust_model_code = true, and preprocessing when it has no manifest) or the settings to train "
                "one, not both; remove "
                f"{', '.join(others)} or path",
            )
        for key, kind in TEACHER_PATH_KEYS.items():
            if key in teacher and not isinstance(teacher[key], kind):
                raise where.error("teacher", key, f"{key} must be {type_word(kind())}, got {type_word(teacher[key])}")
        if "model" in teacher:
            teacher_code["model"] = _expand(teacher["model"], where, "teacher", "model")
        teacher_code["trust_model_code"] = teacher.get("trust_model_code", False)
        teacher_path = Path(_expand(teacher.pop("path"), where, "teacher", "path"))
        if teacher_path.suffix not in TEACHER_SUFFIXES:
            raise where.error(
                "teacher",
                "path",
                f"teacher {teacher_path} must be a compress checkpoint "
                "(.pt) or an ONNX model (.onnx): the bench compares against it in ONNX "
                "Runtime",
            )
        if not teacher_path.is_file():
            raise where.error("teacher", "path", f"teacher {teacher_path} does not exist; check the path")
        if teacher_path.suffix == ".pt" and not manifest_path(teacher_path).is_file():
            raise where.error(
                "teacher",
                "path",
                f"teacher {teacher_path} has no manifest "
                f"({manifest_path(teacher_path).name}), so it is not a compress checkpoint "
                "the pipeline can export for the bench; export it to ONNX yourself and "
                "give path = TEACHER.onnx",
            )
        if teacher_path.suffix == ".pt":
            _check_teacher_code(teacher_path, teacher_code, where)
        teacher_preprocessing = _check_teacher_preprocessing(teacher_path, teacher.get("preprocessing"), where)
        del tables["teacher"]
    tables.setdefault("student", {})
    tables.setdefault("export", {})
    tables.setdefault("bench", {})
    for table, settings in tables.items():
        _check_table(table, settings, where)
    return Recipe(
        path=path,
        name=name,
        out=out_dir,
        data=data_spec,
        teacher_path=teacher_path,
        teacher_code=teacher_code,
        teacher_preprocessing=teacher_preprocessing,
        tables=tables,
        locator=where,
    )


def _check_teacher_code(path: Path, code: dict[str, Any], where: _Locator) -> None:
    """The code a teacher checkpoint names may run (see ``modelspec.check_model_code``), known before
    any stage starts: the recipe names it in [teacher] (model = SPEC) or trusts the file."""
    from .artifacts import load_checkpoint
    from .modelspec import check_model_code

    try:
        spec = load_checkpoint(path)["model_spec"]
        check_model_code(
            spec,
            path,
            [code["model"]],
            code["trust_model_code"],
            "model = SPEC in [teacher]",
            "trust_model_code = true",
        )
    except CompressError as exc:
        raise where.error("teacher", "path", str(exc)) from None


def _check_teacher_preprocessing(path: Path, choice: str | None, where: _Locator) -> str | None:
    """``preprocessing`` in [teacher]: given exactly when the teacher's manifest does not say how its
    inputs were normalised (a manifest always wins, so there it would do nothing)."""
    choices = get_args(PreprocessingChoice)
    if choice is not None and choice not in choices:
        raise where.error(
            "teacher", "preprocessing", f"preprocessing must be one of {', '.join(choices)}, got {choice!r}"
        )
    try:
        manifest = read_manifest(path)
    except CompressError as exc:
        raise where.error("teacher", "path", str(exc)) from None
    recorded = (manifest or {}).get("preprocessing")
    if recorded and choice is not None:
        raise where.error(
            "teacher",
            "preprocessing",
            f"teacher {path} has a manifest, which says how its inputs were normalised; remove preprocessing",
        )
    if not recorded and choice is None:
        raise where.error(
            "teacher",
            "path",
            f"teacher {path} has {'no manifest' if manifest is None else 'a manifest that records no preprocessing'}, "
            "so how its inputs were normalised is unknown; add "
            'preprocessing = "fit" (mean/std of the training split, as compress train does), "scale" '
            '(pixels to [0, 1]) or "raw" to [teacher]',
        )
    return choice


def _check_table(table: str, settings: dict[str, Any], where: _Locator) -> None:
    """No key the pipeline sets, no key the stage does not have; ``${VAR}`` expanded in place.
    (The values are checked by the stage's config, when the plan is built.)"""
    owned = pipeline_keys(table)
    config = STAGES[TABLES[table]].config
    for key, value in list(settings.items()):
        if key in owned:
            raise where.error(
                table,
                key,
                f"[{table}] {key} is set by the pipeline (each stage reads "
                "what the one before wrote in the run folder); remove it",
            )
        if table == "student" and key in ONLINE_KEYS:
            raise where.error(
                table,
                key,
                f"[student] {key} is for compress distill --online, which trains its own teacher; a recipe's "
                "teacher is trained by [teacher] (or given there as path = FILE): remove it",
            )
        if key not in config.model_fields:
            valid = ", ".join(sorted(set(settable(config)) - owned))
            raise where.error(table, key, f"unknown key {key!r} in [{table}]; valid keys: {valid}")
        if isinstance(value, str):
            settings[key] = _expand(value, where, table, key)


def _expand(value: str, where: _Locator, table: str | None, key: str) -> str:
    """``${VAR}`` -> the environment variable VAR (an error naming it when unset)."""

    def lookup(match: re.Match) -> str:
        variable = match.group(1)
        if variable not in os.environ:
            alternative = " or pass --data" if key == "data" else ""
            raise where.error(
                table, key, f"{key} uses ${{{variable}}}, which is not set; export {variable}=...{alternative}"
            )
        where.variables[variable] = os.environ[variable]
        return os.environ[variable]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lookup, value)


def _check_data(spec: str, where: _Locator) -> None:
    """The data source names a known kind, and its files or folders exist (read later, by each stage)."""
    kind, sep, location = spec.partition(":")
    if kind in BUILT_IN_SOURCES and not sep:
        return
    if kind not in PATH_SOURCES or not location:
        raise where.error(None, "data", f"data {spec!r} is not a data source; use {SOURCE_FORMS}")
    try:
        paths = source_paths(spec)
    except CompressError as exc:
        raise where.error(None, "data", f"data {spec!r}: {exc}") from None
    for path in paths:
        if not path.exists():
            raise where.error(None, "data", f"data {spec!r}: {path} does not exist; check the path (or pass --data)")


def data_files(spec: str) -> list[Path]:
    """The files a data source reads, for hashing (none for a built-in source)."""
    files = []
    for root in source_paths(spec):
        files += [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return files


class _Locator:
    """Finds the line of a key in the recipe text, for error messages (tomllib gives no positions)."""

    def __init__(self, path: Path, text: str):
        self.path, self.lines = path, text.splitlines()
        self.variables: dict[str, str] = {}  # the environment variables the recipe uses, and their values

    def mask(self, message: str) -> str:
        """``message`` with the values of the recipe's ``${VAR}`` written as ``${VAR}``: a variable
        may hold a secret (a token in a path), and errors end up in logs. Values shorter than
        MASKED_LENGTH are left, as they would mask parts of words and numbers."""
        for variable, value in sorted(self.variables.items(), key=lambda item: -len(item[1])):
            if len(value) >= MASKED_LENGTH:
                message = message.replace(value, f"${{{variable}}}")
        return message

    def line_of(self, table: str | None, key: str) -> int | None:
        current = None
        for number, line in enumerate(self.lines, start=1):
            stripped = line.split("#", 1)[0].strip()
            header = re.fullmatch(r"\[\s*([^\[\]]+?)\s*\]", stripped)
            if header:
                current = header.group(1).strip("\"'")
                if table is None and current == key:
                    return number
                continue
            match = re.match(r"""["']?([A-Za-z0-9_-]+)["']?\s*=""", stripped)
            if match and match.group(1) == key and current == table:
                return number
            # dotted keys at the top level: teacher.path = "..."
            if match is None and table is not None and current is None:
                dotted = re.match(rf"""{re.escape(table)}\s*\.\s*["']?{re.escape(key)}["']?\s*=""", stripped)
                if dotted:
                    return number
        return None

    def error(self, table: str | None, key: str, message: str) -> CompressError:
        line = self.line_of(table, key)
        where = f"{self.path}, line {line}" if line else str(self.path)
        return CompressError(self.mask(f"recipe {where}: {message}"))
