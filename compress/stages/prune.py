"""``compress prune``: remove channels for real (Torch-Pruning), then recover by distillation.

Structured pruning takes whole channels/neurons out of a compress checkpoint, with the layers
that depend on them (batch norms, the next layer's inputs, both sides of a residual add) kept
consistent by Torch-Pruning's dependency graph, so the exported ONNX model really is smaller and
faster. Each pruning step is followed by fine-tuning with the ``compress distill`` machinery,
from the given teacher or from the unpruned model itself.

Unstructured pruning zeroes the smallest weights instead; the report states sparsity and size,
since ONNX Runtime on CPU does not run sparse weights faster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from ..artifacts import input_record, load_checkpoint, manifest_path, read_manifest, staging_dir, write_manifest
from ..errors import CompressError
from ..tasks import TargetScaling, get_task, task_of
from .base import Cli, Stage
from .distill import DistillConfig
from .train import DATA_HELP, MAX_EPOCHS

if TYPE_CHECKING:
    from ..distributed import World

TARGET_STEP = 0.2  # fraction of the remaining channels removed per step when a target is set
log = logging.getLogger(__name__).info


class PruneConfig(DistillConfig):
    """Recovery is a distillation run (``DistillConfig``); these fields say what to prune."""

    checkpoint: Annotated[str, Cli(argument=True)] = Field(description="The compress checkpoint (.pt) to prune.")
    # the model pruned is the checkpoint's: its spec and arguments come from there
    model: str | None = Field(
        None,
        description="The checkpoint's model code when it is not a zoo model: the file.py:factory or "
        "module:factory it was trained with (compress runs code a checkpoint names only when you name it).",
    )
    model_args: Annotated[dict[str, Any], Cli(hidden=True)] = Field(default_factory=dict)
    out: str = Field(description="Pruned checkpoint to write (.pt); its manifest goes beside it (.pt.json).")
    data: str | None = Field(None, description=f"Data for the recovery (default: the checkpoint's): {DATA_HELP}.")
    teacher: str | None = Field(None, description="Teacher for the recovery (default: the unpruned model itself).")
    # the recovery distils from a trained teacher: none is trained beside it
    online: Annotated[bool, Cli(hidden=True)] = False
    teacher_model_args: Annotated[dict[str, Any], Cli(hidden=True)] = Field(default_factory=dict)
    amount: float | None = Field(
        None, gt=0, lt=1, description="Fraction of each prunable layer's channels to remove (0-1)."
    )
    target_macs: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Prune in steps, recovering after each, until the MACs are at most this fraction of the original.",
    )
    target_params: float | None = Field(None, gt=0, lt=1, description="As --target-macs, for the parameter count.")
    importance: Literal["l1", "l2", "taylor"] = Field(
        "l2", description="Which channels go: smallest weight norm (l1/l2) or smallest weight x gradient (taylor)."
    )
    round_to: int = Field(
        8,
        ge=1,
        le=1024,
        description="Keep channel counts a multiple of this (odd widths can be slower than unpruned ones).",
    )
    unstructured: bool = Field(
        False,
        description="Zero the smallest weights instead of removing channels "
        "(sparsity only: no faster on ONNX Runtime's CPU provider).",
    )
    epochs: int = Field(3, ge=1, le=MAX_EPOCHS, description="Recovery epochs after each pruning step.")
    lr: float = Field(1e-3, gt=0, le=10, description="Peak learning rate of the recovery.")

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfig:
        targets = [t for t in (self.amount, self.target_macs, self.target_params) if t is not None]
        if len(targets) != 1:
            raise ValueError("give exactly one of `amount`, `target_macs`, `target_params`")
        if self.unstructured and self.amount is None:
            raise ValueError("`unstructured` takes `amount` (the fraction of weights to zero)")
        return self


def prune(config: PruneConfig) -> dict[str, Any]:
    """Prune ``config.checkpoint``, recover, write ``config.out`` and its manifest; return the manifest."""
    import torch

    from ..data import Preprocessing, load_dataset
    from ..distillation.objective import load_matching_teacher
    from ..loop import evaluate, place
    from ..modelspec import model_from_checkpoint
    from ..pruning import make_pruner, prune_step, prune_unstructured, recover, size_of, target_reached, widths_of

    source = load_checkpoint(config.checkpoint, command="prune")
    model = model_from_checkpoint(source, config.checkpoint, (config.model,), config.trust_model_code).eval()
    source_manifest = read_manifest(config.checkpoint) or {}
    data = config.data or (source_manifest.get("data") or {}).get("spec")
    if not data:
        raise CompressError(f"{config.checkpoint} has no manifest naming its data; pass --data")
    config = config.model_copy(
        update={
            "model": source["model_spec"],
            "model_args": source["model_args"],
            "teacher": config.teacher or config.checkpoint,
            "data": data,
        }
    )
    world = place(config.device)
    preprocessing = source_manifest.get("preprocessing")
    task_record = source.get("task") or source_manifest.get("task")
    dataset = load_dataset(
        config.data,
        config.val_fraction,
        config.split_seed,
        Preprocessing.from_dict(preprocessing) if preprocessing else None,
        task=(task_record or {}).get("kind"),
        target_scaling=TargetScaling.from_record(task_record),
    )
    in_shape = tuple(source["in_shape"])
    if tuple(dataset.in_shape) != in_shape:
        raise CompressError(
            f"{config.checkpoint} takes samples of shape {list(in_shape)} but {config.data} "
            f"gives {list(dataset.in_shape)}; prune with the data it was trained on"
        )
    # loaded once for every recovery step; the data carries the teacher's preprocessing
    teacher, recovery_data = load_matching_teacher(config, world.device)
    example = torch.from_numpy(dataset.x_train[:2])
    x_test, task = torch.from_numpy(dataset.x_test), dataset.task
    quality = quality_key(task.name)  # test_accuracy for classifiers, else e.g. test_rmse

    def measured(network) -> float:
        """The task's primary metric on the test split."""
        return evaluate(network, x_test, dataset.y_test, dataset)[task.metric]

    before = {**size_of(model, example), quality: measured(model)}
    widths_before = widths_of(model)

    out = Path(config.out)
    steps = []
    with _staging(out, world) as staging:
        if config.unstructured:
            sparsity = prune_unstructured(model, config.amount)
            steps.append(
                {
                    "sparsity": sparsity,
                    **size_of(model, example),
                    f"{quality}_pruned": measured(model),
                }
            )
            model = recover(model, config, staging / "step1.pt", world, teacher, recovery_data)
            steps[-1][f"{quality}_recovered"] = measured(model.cpu())
        else:
            ratio = config.amount if config.amount is not None else TARGET_STEP
            while True:
                prune_step(make_pruner(model, example, config, ratio), model, config, dataset)
                size = size_of(model, example)
                if steps and size["macs"] >= steps[-1]["macs"]:
                    raise CompressError(
                        f"the target cannot be reached: pruning stalls at {size['params']:,} "
                        f"params / {size['macs']:,} MACs (every layer is down to "
                        f"--round-to {config.round_to} channels); lower --round-to or "
                        "aim higher; nothing was written"
                    )
                steps.append({**size, f"{quality}_pruned": measured(model), "widths": widths_of(model)})
                log(
                    f"step {len(steps)}: {size['params']:,} params, {size['macs']:,} MACs, test "
                    f"{task.metric_title(task.metric)} {task.format(task.metric, steps[-1][f'{quality}_pruned'])} "
                    "before recovery"
                )
                model = (
                    recover(model, config, staging / f"step{len(steps)}.pt", world, teacher, recovery_data).cpu().eval()
                )
                steps[-1][f"{quality}_recovered"] = measured(model)
                if target_reached(config, before, size):
                    break
        final = staging / f"step{len(steps)}.pt"
        pruning = {
            "method": "unstructured magnitude"
            if config.unstructured
            else f"structured, {config.importance} importance",
            "before": before,
            "after": {**size_of(model, example), quality: steps[-1][f"{quality}_recovered"]},
            "steps": steps,
            "widths_before": widths_before,
            "widths_after": widths_of(model),
            "note": (
                "zeroed weights keep the dense shape: the ONNX model is no faster and no smaller "
                "unless compressed on disk"
                if config.unstructured
                else None
            ),
        }
        return world.main_does(lambda: _publish(final, out, config, pruning))


@contextlib.contextmanager
def _staging(out: Path, world: World) -> Iterator[Path]:
    """The folder the pruning steps are written to: rank 0's, named on every rank (only rank 0 writes)."""
    if not world.main:
        yield Path(world.from_main(None))
        return
    with staging_dir(out) as staging:
        world.from_main(str(staging))
        yield staging


def _publish(final: Path, out: Path, config: PruneConfig, pruning: dict[str, Any]) -> dict[str, Any]:
    """The last step's checkpoint under its final name, its manifest telling the whole pruning."""
    manifest = json.loads(manifest_path(final).read_text())
    manifest.update(artifact=out.name, stage="prune", config=config.model_dump(mode="json"))
    manifest["inputs"].insert(0, input_record("checkpoint", config.checkpoint))
    manifest["pruning"] = pruning
    write_manifest(final, manifest)
    os.replace(final, out)  # the checkpoint first: its manifest names its hash
    os.replace(manifest_path(final), manifest_path(out))
    return manifest


def quality_key(task_name: str) -> str:
    """The key of a pruning record's test figure: the task's primary metric on the test split."""
    metric = get_task(task_name).metric
    return "test_accuracy" if metric == "accuracy" else f"test_{metric}"


def summary(manifest: dict[str, Any]) -> list[str]:
    p, task = manifest["pruning"], task_of(manifest)
    before, after = p["before"], p["after"]
    quality = quality_key(task.name)

    def shown(value: float) -> str:
        return task.format(task.metric, value)

    lines = [
        f"pruning: {p['method']}, {len(p['steps'])} step(s)",
        f"params {before['params']:,} -> {after['params']:,}, MACs {before['macs']:,} -> {after['macs']:,}",
        f"test {task.metric_title(task.metric)} {shown(before[quality])} -> "
        f"{shown(p['steps'][-1][f'{quality}_pruned'])} pruned -> {shown(after[quality])} after recovery",
    ]
    return lines + ([f"note: {p['note']}"] if p["note"] else [])


STAGE = Stage(
    name="prune",
    config=PruneConfig,
    run=prune,
    summary=summary,
    reads=("checkpoint", "teacher"),
    distributed=True,
    help="""Remove channels for real (Torch-Pruning), then recover accuracy by distillation.

    \b
    Examples:
      compress prune runs/mnist/student.pt --amount 0.5 --teacher runs/mnist/teacher.pt \\
                     --epochs 3 --out runs/mnist/student.pruned.pt
      compress prune runs/mnist/teacher.pt --target-macs 0.3 --importance taylor --out runs/mnist/teacher.pruned.pt
    """,
)
