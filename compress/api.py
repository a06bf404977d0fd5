"""The Python API: one function per command, taking the command's options as keyword arguments.

    import compress

    compress.train(out="runs/t.pt", model="resnet8", data="digits", epochs=5)
    compress.distill(teacher="runs/t.pt", out="runs/s.pt", student="mlp", model_args={"hidden": [128]})
    compress.export("runs/s.pt", out="runs/s.onnx")
    compress.quantize("runs/s.onnx", out="runs/s.int8.onnx")
    report = compress.bench(["runs/t.onnx", "runs/s.onnx", "runs/s.int8.onnx"], report="runs/report")
    compress.run("recipes/demo.toml")

Each builds the same config dataclass its command builds (same defaults), runs the same stage
function and returns what the command reports: the artifact's manifest, the bench report, or
the run log. Progress lines go to ``log`` (print by default). Mistakes raise ``CompressError``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

from .errors import CompressError

Log = Callable[[str], None]


def _config(cls: type, command: str, settings: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise CompressError(
            f"compress.{command}() got unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}"
        )
    return cls(**settings)


def train(*, out: str, **settings: Any) -> dict[str, Any]:
    """``compress train``: returns the checkpoint's manifest."""
    from .train import TrainConfig
    from .train import train as run_train

    return run_train(_config(TrainConfig, "train", {"out": out, **settings}))


def distill(*, teacher: str, out: str, student: str | None = None, **settings: Any) -> dict[str, Any]:
    """``compress distill``: ``student`` is the student's model spec (as ``--student``)."""
    from .distill.trainer import DistillConfig
    from .distill.trainer import distill as run_distill

    if student is not None:
        settings["model"] = student
    return run_distill(_config(DistillConfig, "distill", {"teacher": teacher, "out": out, **settings}))


def export(checkpoint: str, *, out: str, **settings: Any) -> dict[str, Any]:
    """``compress export``: returns the ONNX model's manifest (with the parity figures)."""
    from .export import ExportConfig
    from .export import export as run_export

    return run_export(_config(ExportConfig, "export", {"checkpoint": checkpoint, "out": out, **settings}))


def prune(checkpoint: str, *, out: str, log: Log = print, **settings: Any) -> dict[str, Any]:
    """``compress prune``: returns the pruned checkpoint's manifest."""
    from .prune import PruneConfig
    from .prune import prune as run_prune

    return run_prune(_config(PruneConfig, "prune", {"checkpoint": checkpoint, "out": out, **settings}), log=log)


def quantize(model: str, *, out: str, log: Log = print, **settings: Any) -> dict[str, Any]:
    """``compress quantize``: returns the int8 model's manifest (accuracy, speed-up, settings)."""
    from .quantize import QuantizeConfig
    from .quantize import quantize as run_quantize

    return run_quantize(_config(QuantizeConfig, "quantize", {"model": model, "out": out, **settings}), log=log)


def bench(models: Iterable[str], *, report: str, log: Log = print, **settings: Any) -> dict[str, Any]:
    """``compress bench``: measures, writes the report into the folder ``report``, returns it."""
    from .bench.report import write_report
    from .bench.run import BenchConfig
    from .bench.run import bench as run_bench

    result = run_bench(_config(BenchConfig, "bench", {"models": list(models), "report": report, **settings}), log=log)
    write_report(result, report)
    return result


def run(
    recipe: str, *, data: str | None = None, out: str | None = None, force: Iterable[str] = (), log: Log = print
) -> dict[str, Any]:
    """``compress run``: runs what is not up to date; returns the run log (as in run.json)."""
    from .pipeline import build_plan
    from .pipeline import run as run_plan
    from .recipe import load_recipe

    return run_plan(build_plan(load_recipe(recipe, data=data, out=out)), set(force), log=log)
