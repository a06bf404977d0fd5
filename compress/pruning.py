"""Pruning machinery for ``compress prune``: Torch-Pruning's dependency graph and pruner, the
sizes and widths before and after, and the distillation that recovers each step."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .artifacts import load_checkpoint
from .data import Dataset
from .distillation.objective import DistillObjective
from .distillation.teachers import Teacher
from .distributed import World
from .errors import CompressError, first_line, foreign_errors
from .loop import Fit
from .modelspec import count_macs, count_params, model_from_checkpoint

if TYPE_CHECKING:
    from .stages.prune import PruneConfig


def size_of(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    return {"params": int(count_params(model)), "macs": count_macs(model, example.shape[1:])}


def widths_of(model: nn.Module) -> dict[str, int]:
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            widths[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            widths[name] = module.out_features
    return widths


def output_layer(model: nn.Module) -> nn.Module:
    """The classifier: its outputs are the classes and must all stay."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise CompressError("the model has no Linear or Conv2d layer to prune")
    return layers[-1]


def make_pruner(model: nn.Module, example: torch.Tensor, config: PruneConfig, ratio: float):
    """A Torch-Pruning pruner that removes ``ratio`` of the channels of every prunable layer."""
    import torch_pruning as tp

    importance = {
        "l1": tp.importance.GroupMagnitudeImportance(p=1),
        "l2": tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": tp.importance.GroupTaylorImportance(),
    }[config.importance]
    # the dependency graph fails on layers it cannot trace
    with foreign_errors(
        f"Torch-Pruning cannot build the dependency graph of {config.checkpoint}", "nothing was written"
    ):
        return tp.pruner.BasePruner(
            model,
            example,
            importance=importance,
            pruning_ratio=ratio,
            ignored_layers=[output_layer(model)],
            round_to=config.round_to,
        )


def prune_step(pruner, model: nn.Module, config: PruneConfig, dataset) -> None:
    if config.importance == "taylor":  # gradients of the loss on a batch of training data
        model.zero_grad()
        x = torch.from_numpy(dataset.x_train[:256])
        y = torch.from_numpy(dataset.y_train[:256])
        dataset.task.hard_loss(model(x), y).backward()
    with foreign_errors("pruning failed", "nothing was written"):
        pruner.step()
    model.zero_grad(set_to_none=True)
    check_runs(model, torch.from_numpy(dataset.x_train[:2]))


def check_runs(model: nn.Module, example: torch.Tensor) -> None:
    """The pruned model must still run; if not, name the layer where it breaks."""
    entered: list[str] = []
    hooks = [
        module.register_forward_pre_hook(lambda _m, _i, name=name: entered.append(name))
        for name, module in model.named_modules()
        if name and not list(module.children())
    ]
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:
        where = entered[-1] if entered else "?"
        raise CompressError(
            f"after pruning, the model fails at layer {where!r} ({first_line(exc, 120)}); "
            "its forward hard-codes a width Torch-Pruning cannot follow (e.g. a reshape to a fixed "
            "channel count) — take widths from the tensors in the model code; nothing was written"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()


def target_reached(config: PruneConfig, before: dict, size: dict) -> bool:
    if config.target_macs is not None:
        return size["macs"] <= config.target_macs * before["macs"]
    if config.target_params is not None:
        return size["params"] <= config.target_params * before["params"]
    return True


def prune_unstructured(model: nn.Module, amount: float) -> float:
    """Zero the smallest ``amount`` of the weights of every Linear/Conv2d layer (L1, per layer)."""
    from torch.nn.utils import prune as torch_prune

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for layer in layers:
        torch_prune.l1_unstructured(layer, "weight", amount)
        torch_prune.remove(layer, "weight")  # make the zeros permanent: a plain weight tensor again
    total = sum(layer.weight.numel() for layer in layers)
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    return zeros / total


def recover(
    model: nn.Module, config: PruneConfig, out: Path, world: World, teacher: Teacher, dataset: Dataset
) -> nn.Module:
    """Fine-tune the pruned model as a distillation student; writes a checkpoint at ``out`` (rank 0 writes
    it, and hands what it wrote to the other processes of a distributed run)."""
    step_config = config.model_copy(update={"out": str(out), "resume": False})
    if config.unstructured:
        masks = {name: (m.weight != 0) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    torch.manual_seed(config.seed)
    objective = DistillObjective(step_config, teacher, model, dataset, world)
    fit = Fit(step_config, "prune", dataset, model, objective, world)
    if config.unstructured:  # keep the zeros at zero while fine-tuning
        modules = dict(model.named_modules())
        for name, mask in masks.items():
            modules[name].weight.register_hook(lambda grad, mask=mask.to(world.device): grad * mask)
    fit.run()
    return model_from_checkpoint(world.main_does(lambda: load_checkpoint(out)), out, (config.model,))
