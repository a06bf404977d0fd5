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

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .artifacts import input_record, load_checkpoint, manifest_path, read_manifest, staging_dir, write_json
from .data import Dataset, Preprocessing, load_dataset
from .distill.teachers import Teacher
from .distill.trainer import DistillConfig, DistillObjective, check_distill_config, load_matching_teacher
from .errors import CompressError
from .loop import Fit, accuracy, resolve_device
from .modelspec import count_macs, count_params, model_from_checkpoint

IMPORTANCES = ("l1", "l2", "taylor")
TARGET_STEP = 0.2  # fraction of the remaining channels removed per step when a target is set


@dataclass
class PruneConfig(DistillConfig):
    """Recovery is a distillation run (``DistillConfig``); these fields say what to prune."""

    checkpoint: str = ""
    data: str | None = None  # default: the data in the checkpoint's manifest
    amount: float | None = None  # fraction of each prunable layer's channels to remove
    target_macs: float | None = None  # fraction of the original MACs to keep (e.g. 0.5)
    target_params: float | None = None  # fraction of the original parameters to keep
    importance: str = "l2"  # l1 | l2 (weight magnitude) | taylor (weight x gradient)
    round_to: int = 8  # remaining channel counts rounded to a multiple of this
    unstructured: bool = False
    epochs: int = 3  # recovery epochs after each pruning step
    lr: float = 1e-3  # peak learning rate of the recovery (fine-tuning, not training)


def check_prune_config(config: PruneConfig) -> None:
    targets = [t for t in (config.amount, config.target_macs, config.target_params) if t is not None]
    if len(targets) != 1:
        raise CompressError("give exactly one of --amount, --target-macs, --target-params")
    for name in ("amount", "target_macs", "target_params"):
        value = getattr(config, name)
        if value is not None and not 0 < value < 1:
            flag = "--" + name.replace("_", "-")
            meaning = "the fraction to remove" if name == "amount" else "the fraction of the original to keep"
            raise CompressError(f"{flag} is {meaning}, between 0 and 1 (exclusive); got {value}")
    if config.unstructured and config.amount is None:
        raise CompressError("--unstructured takes --amount (the fraction of weights to zero)")
    if config.importance not in IMPORTANCES:
        raise CompressError(f"unknown importance {config.importance!r}; use one of {', '.join(IMPORTANCES)}")
    if config.round_to < 1:
        raise CompressError(f"--round-to must be at least 1, got {config.round_to}")
    if config.epochs < 1:
        raise CompressError(f"--epochs (recovery epochs per step) must be at least 1, got {config.epochs}")


def prune(config: PruneConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prune ``config.checkpoint``, recover, write ``config.out`` and its manifest; return the manifest."""
    check_prune_config(config)
    source = load_checkpoint(config.checkpoint)
    source_manifest = read_manifest(config.checkpoint) or {}
    data = config.data or (source_manifest.get("data") or {}).get("spec")
    if not data:
        raise CompressError(f"{config.checkpoint} has no manifest naming its data; pass --data")
    config = replace(
        config,
        model=source["model_spec"],
        model_args=source["model_args"],
        teacher=config.teacher or config.checkpoint,
        data=data,
    )
    check_distill_config(config)
    device = resolve_device(config.device)
    preprocessing = source_manifest.get("preprocessing")
    dataset = load_dataset(
        config.data,
        config.val_fraction,
        config.split_seed,
        Preprocessing.from_dict(preprocessing) if preprocessing else None,
    )
    in_shape = tuple(source["in_shape"])
    if tuple(dataset.in_shape) != in_shape:
        raise CompressError(
            f"{config.checkpoint} takes samples of shape {list(in_shape)} but {config.data} "
            f"gives {list(dataset.in_shape)}; prune with the data it was trained on"
        )
    # loaded once for every recovery step; the data carries the teacher's preprocessing
    teacher, recovery_data = load_matching_teacher(config, device)
    model = model_from_checkpoint(source).eval()
    example = torch.from_numpy(dataset.x_train[:2])
    x_test, y_test = torch.from_numpy(dataset.x_test), torch.from_numpy(dataset.y_test)
    before = {**_size(model, example), "test_accuracy": accuracy(model, x_test, y_test)}

    out = Path(config.out)
    steps = []
    with staging_dir(out) as staging:
        if config.unstructured:
            sparsity = _prune_unstructured(model, config.amount)
            steps.append(
                {"sparsity": sparsity, **_size(model, example), "test_accuracy_pruned": accuracy(model, x_test, y_test)}
            )
            model = _recover(model, config, staging / "step1.pt", device, teacher, recovery_data)
            steps[-1]["test_accuracy_recovered"] = accuracy(model.cpu(), x_test, y_test)
        else:
            ratio = config.amount if config.amount is not None else TARGET_STEP
            while True:
                _step(_make_pruner(model, example, config, ratio), model, config, dataset)
                size = _size(model, example)
                if steps and size["macs"] >= steps[-1]["macs"]:
                    raise CompressError(
                        f"the target cannot be reached: pruning stalls at {size['params']:,} "
                        f"params / {size['macs']:,} MACs (every layer is down to "
                        f"--round-to {config.round_to} channels); lower --round-to or "
                        "aim higher; nothing was written"
                    )
                steps.append(
                    {**size, "test_accuracy_pruned": accuracy(model, x_test, y_test), "widths": _widths(model)}
                )
                log(
                    f"step {len(steps)}: {size['params']:,} params, {size['macs']:,} MACs, test accuracy "
                    f"{100 * steps[-1]['test_accuracy_pruned']:.2f}% before recovery"
                )
                model = (
                    _recover(model, config, staging / f"step{len(steps)}.pt", device, teacher, recovery_data)
                    .cpu()
                    .eval()
                )
                steps[-1]["test_accuracy_recovered"] = accuracy(model, x_test, y_test)
                if _target_reached(config, before, size):
                    break
        final = staging / f"step{len(steps)}.pt"
        manifest = json.loads(manifest_path(final).read_text())
        manifest.update(artifact=out.name, stage="prune", config=asdict(config))
        manifest["inputs"].insert(0, input_record("checkpoint", config.checkpoint))
        manifest["pruning"] = {
            "method": "unstructured magnitude"
            if config.unstructured
            else f"structured, {config.importance} importance",
            "before": before,
            "after": {**_size(model, example), "test_accuracy": steps[-1]["test_accuracy_recovered"]},
            "steps": steps,
            "widths_before": _widths(model_from_checkpoint(source)),
            "widths_after": _widths(model),
            "note": (
                "zeroed weights keep the dense shape: the ONNX model is no faster and no smaller "
                "unless compressed on disk"
                if config.unstructured
                else None
            ),
        }
        write_json(manifest_path(final), manifest)
        os.replace(final, out)  # the checkpoint first: its manifest names its hash
        os.replace(manifest_path(final), manifest_path(out))
    return manifest


def _size(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    return {"params": int(count_params(model)), "macs": count_macs(model, example.shape[1:])}


def _widths(model: nn.Module) -> dict[str, int]:
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            widths[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            widths[name] = module.out_features
    return widths


def _output_layer(model: nn.Module) -> nn.Module:
    """The classifier: its outputs are the classes and must all stay."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise CompressError("the model has no Linear or Conv2d layer to prune")
    return layers[-1]


def _make_pruner(model: nn.Module, example: torch.Tensor, config: PruneConfig, ratio: float):
    """A Torch-Pruning pruner that removes ``ratio`` of the channels of every prunable layer."""
    import torch_pruning as tp

    importance = {
        "l1": tp.importance.MagnitudeImportance(p=1),
        "l2": tp.importance.MagnitudeImportance(p=2),
        "taylor": tp.importance.TaylorImportance(),
    }[config.importance]
    try:
        return tp.pruner.MetaPruner(
            model,
            example,
            importance=importance,
            pruning_ratio=ratio,
            ignored_layers=[_output_layer(model)],
            round_to=config.round_to,
        )
    except Exception as exc:  # the dependency graph fails on layers it cannot trace
        raise CompressError(
            f"Torch-Pruning cannot build the dependency graph of {config.checkpoint} "
            f"({str(exc).strip().splitlines()[0][:200]}); nothing was written"
        ) from None


def _step(pruner, model: nn.Module, config: PruneConfig, dataset) -> None:
    if config.importance == "taylor":  # gradients of the loss on a batch of training data
        model.zero_grad()
        x = torch.from_numpy(dataset.x_train[:256])
        y = torch.from_numpy(dataset.y_train[:256])
        nn.functional.cross_entropy(model(x), y).backward()
    try:
        pruner.step()
    except Exception as exc:
        raise CompressError(f"pruning failed ({str(exc).strip().splitlines()[0][:200]}); nothing was written") from None
    model.zero_grad(set_to_none=True)
    _check_runs(model, torch.from_numpy(dataset.x_train[:2]))


def _check_runs(model: nn.Module, example: torch.Tensor) -> None:
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
            f"after pruning, the model fails at layer {where!r} ({str(exc).strip().splitlines()[0][:120]}); "
            "its forward hard-codes a width Torch-Pruning cannot follow (e.g. a reshape to a fixed "
            "channel count) — take widths from the tensors in the model code; nothing was written"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()


def _target_reached(config: PruneConfig, before: dict, size: dict) -> bool:
    if config.target_macs is not None:
        return size["macs"] <= config.target_macs * before["macs"]
    if config.target_params is not None:
        return size["params"] <= config.target_params * before["params"]
    return True


def _prune_unstructured(model: nn.Module, amount: float) -> float:
    """Zero the smallest ``amount`` of the weights of every Linear/Conv2d layer (L1, per layer)."""
    from torch.nn.utils import prune as torch_prune

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for layer in layers:
        torch_prune.l1_unstructured(layer, "weight", amount)
        torch_prune.remove(layer, "weight")  # make the zeros permanent: a plain weight tensor again
    total = sum(layer.weight.numel() for layer in layers)
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    return zeros / total


def _recover(
    model: nn.Module, config: PruneConfig, out: Path, device: torch.device, teacher: Teacher, dataset: Dataset
) -> nn.Module:
    """Fine-tune the pruned model as a distillation student; writes a checkpoint at ``out``."""
    step_config = replace(config, out=str(out), resume=False)
    if config.unstructured:
        masks = {name: (m.weight != 0) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    torch.manual_seed(config.seed)
    objective = DistillObjective(step_config, teacher, model, dataset, device)
    fit = Fit(step_config, "prune", dataset, model, objective, device)
    if config.unstructured:  # keep the zeros at zero while fine-tuning
        modules = dict(model.named_modules())
        for name, mask in masks.items():
            modules[name].weight.register_hook(lambda grad, mask=mask.to(device): grad * mask)
    fit.run()
    return model_from_checkpoint(load_checkpoint(out))
