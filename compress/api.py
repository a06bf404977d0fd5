"""The Python API: one function per stage, taking the stage's settings as keyword arguments.

    import compress

    compress.train(out="runs/t.pt", model="resnet8", data="digits", epochs=5)
    compress.distill(teacher="runs/t.pt", out="runs/s.pt", model="mlp", model_args={"hidden": [128]})
    compress.export("runs/s.pt", out="runs/s.onnx")
    compress.quantize("runs/s.onnx", out="runs/s.int8.onnx")
    report = compress.bench(["runs/t.onnx", "runs/s.onnx", "runs/s.int8.onnx"], report="runs/report")
    compress.run("recipes/demo.toml")

The functions are made from the stage registry: positional arguments are the command's
arguments (the checkpoint, the model, the models), keywords its settings, with the command's
defaults. Each returns what its command reports: the artifact's manifest, the bench report, or
the run log. Mistakes raise ``CompressError``; progress goes to the ``compress`` logger.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from .stages import STAGES, Stage
from .stages.base import build_or_raise, cli_of, settable


def _function(stage: Stage) -> Callable[..., dict[str, Any]]:
    config = stage.config
    positional = [name for name in settable(config) if cli_of(config, name).argument]

    def function(*args: Any, **settings: Any) -> dict[str, Any]:
        if len(args) > len(positional):
            raise TypeError(f"compress.{stage.name}() takes {len(positional)} positional argument(s)")
        values = {**dict(zip(positional, args)), **settings}
        built = build_or_raise(
            config, values, lambda field: f"{field}=", "keyword", prefix=f"compress.{stage.name}(): "
        )
        return stage.execute(built)

    parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in positional]
    parameters += [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=(
                inspect.Parameter.empty
                if config.model_fields[name].is_required()
                else config.model_fields[name].get_default(call_default_factory=True)
            ),
        )
        for name in settable(config)
        if name not in positional
    ]
    function.__signature__ = inspect.Signature(parameters)
    function.__name__ = function.__qualname__ = stage.name
    function.__doc__ = f"``compress {stage.name}``: {stage.help.strip().splitlines()[0]}"
    return function


globals().update({name: _function(stage) for name, stage in STAGES.items()})
__all__ = [*STAGES, "run"]


def run(recipe: str, *, data: str | None = None, out: str | None = None, force: Iterable[str] = ()) -> dict[str, Any]:
    """``compress run``: runs what is not up to date; returns the run log (as in run.json)."""
    from .pipeline import build_plan
    from .pipeline import run as run_plan
    from .recipe import load_recipe

    return run_plan(build_plan(load_recipe(recipe, data=data, out=out)), set(force))
