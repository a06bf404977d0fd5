"""Model specs: which factory builds a model, with which arguments, and what it looks like.

A spec is a zoo name (``resnet8``), a file (``path/to/file.py:factory``) or a module
(``package.module:factory``). A factory is called as ``factory(in_shape, num_classes, **args)``
and returns an ``nn.Module`` mapping (N, *in_shape) floats to (N, num_classes) logits.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from .errors import CompressError, first_line, foreign_errors
from .models import ZOO

ZOO_HELP = (
    f"A model is a zoo name ({', '.join(ZOO)}), a file 'path/to/file.py:factory' or a "
    "module 'package.module:factory'; the factory is called as "
    "factory(in_shape, num_classes, **model_args) and returns a torch.nn.Module that "
    "maps (N, *in_shape) inputs to (N, num_classes) logits."
)

_WORDS = {"true": True, "false": False, "none": None}


def parse_model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``["hidden=1200,1200", "dropout=0.5"]`` -> ``{"hidden": [1200, 1200], "dropout": 0.5}``.

    Values are Python literals (tuples become lists; true/false/none in any case are accepted);
    anything else is kept as a string.
    """
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise CompressError(
                f"model argument {pair!r} is not KEY=VALUE; write it like hidden=1200,1200 or dropout=0.5"
            )
        args[key.strip()] = _parse_value(text.strip())
    return args


def _parse_value(text: str) -> Any:
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    try:
        return json.loads(json.dumps(ast.literal_eval(text)))  # tuples -> lists, JSON-able only
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def resolve_factory(spec: str) -> Callable[..., Any]:
    """The factory a spec names (see the module docstring for the forms)."""
    kind, target, name = _split(spec)
    if kind == "zoo":
        return ZOO[spec]
    module = _load_file(Path(target)) if kind == "file" else _load_module(target)
    where = f"{kind} {target}"
    if not hasattr(module, name):
        raise CompressError(f"{where} has no attribute '{name}'; check the factory name after ':' in the model spec")
    factory = getattr(module, name)
    if not callable(factory):
        raise CompressError(
            f"'{name}' in {where} is a {type(factory).__name__}, not callable; "
            "name a function or class that builds a torch.nn.Module"
        )
    return factory


def canonical_spec(spec: str) -> str:
    """The spec to store in checkpoints: file paths made absolute, other forms unchanged."""
    kind, target, name = _split(spec)
    return f"{Path(target).expanduser().resolve()}:{name}" if kind == "file" else spec


def _split(spec: str) -> tuple[str, str, str]:
    """(kind, target, factory name), kind being "zoo", "file" or "module"."""
    if spec in ZOO:
        return "zoo", spec, spec
    target, sep, name = spec.rpartition(":")
    if not sep:
        raise CompressError(
            f"unknown model '{spec}'; use a zoo name ({', '.join(ZOO)}), "
            "'path/to/file.py:factory' or 'package.module:factory'"
        )
    if not target or not name.isidentifier():
        raise CompressError(
            f"model spec '{spec}' does not name a file or module and a factory; "
            "write it as 'path/to/file.py:factory' or 'package.module:factory'"
        )
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    return ("file" if is_file else "module"), target, name


def _load_file(path: Path) -> ModuleType:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise CompressError(
            f"model file {path} not found; check the path "
            f"(relative paths are taken from the current directory {Path.cwd()})"
        )
    name = "compress_user_model_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CompressError(f"model file {path} cannot be loaded as Python; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # lets dataclasses and pickling in the file find their module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise CompressError(
            f"model file {path} failed to import ({first_line(exc, typed=True)}); fix the error in that file"
        ) from exc
    return module


def _load_module(name: str) -> ModuleType:
    with foreign_errors(
        f"module '{name}' failed to import",
        "install it or put it on PYTHONPATH, or use the form path/to/file.py:factory",
        typed=True,
    ):
        return importlib.import_module(name)


def build_model(
    spec: str, in_shape: Sequence[int], num_classes: int, model_args: dict[str, Any] | None = None
) -> nn.Module:
    """Build the model a spec names and check it maps (1, *in_shape) to (1, num_classes)."""
    factory = resolve_factory(spec)
    in_shape, args = tuple(in_shape), dict(model_args or {})
    _check_args(spec, factory, args)
    _check_memory(spec, factory, in_shape, num_classes, args)
    with foreign_errors(
        f"model '{spec}' could not be built for input shape {in_shape} and {num_classes} classes with {args}",
        "check the model arguments",
        typed=True,
    ):
        model = factory(in_shape, num_classes, **args)
    if not isinstance(model, nn.Module):
        raise CompressError(
            f"model '{spec}' returned a {type(model).__name__}, not a "
            "torch.nn.Module; make the factory return the model"
        )
    out = _forward_zeros(model, in_shape, 1, f"model '{spec}'")
    expected = (1, num_classes)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != expected:
        raise CompressError(
            f"model '{spec}' outputs {got} for an input of shape {(1, *in_shape)}, "
            f"expected {expected}; make it return logits of shape (N, num_classes)"
        )
    return model


def _check_memory(
    spec: str, factory: Callable[..., Any], in_shape: tuple[int, ...], num_classes: int, args: dict[str, Any]
) -> None:
    """Refuse a model whose weights alone would not fit in this machine's memory (``hidden=10**9``),
    measured on PyTorch's meta device, where building allocates nothing."""
    from .hardware import memory_bytes

    try:
        with torch.device("meta"):
            probe = factory(in_shape, num_classes, **args)
        needed = sum(t.numel() * t.element_size() for t in [*probe.parameters(), *probe.buffers()])
    except Exception:  # code that cannot be built on the meta device is built for real, unchecked
        return
    available = memory_bytes()
    if available and needed > available:
        raise CompressError(
            f"model '{spec}' with {args} needs {needed / 2**30:,.1f} GiB for its weights, more than this machine's "
            f"{available / 2**30:,.1f} GiB of memory; check the model arguments"
        )


def _check_args(spec: str, factory: Callable[..., Any], args: dict[str, Any]) -> None:
    """Refuse arguments the factory's signature does not take, naming the ones it does."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # no signature to check against (e.g. some builtins)
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    takes = [p.name for p in params[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in args:
        if key not in takes:
            listed = f"it takes: {', '.join(takes)}" if takes else "it takes no arguments"
            raise CompressError(
                f"model '{spec}' does not accept argument '{key}' ({listed}); remove it or use one of those"
            )


def check_model_code(
    spec: str,
    source: str | Path,
    named: Sequence[str | None],
    trust: bool,
    flag: str,
    trust_flag: str = "--trust-model-code",
) -> None:
    """Refuse to run the code a file names unless the user named it too (or trusts the file).

    A checkpoint's ``model_spec`` says which factory rebuilds it; a zoo name is compress's own
    code, but a file or module could be anything (``subprocess:run``). ``named`` are the specs the
    user gave (``flag`` is how they give one); ``trust`` is their explicit trust in ``source``.
    """
    if spec in ZOO or trust:
        return
    if any(user is not None and _same_code(user, spec) for user in named):
        return
    shown = repr(spec) if len(spec) <= 200 else repr(spec[:200]) + "..."
    raise CompressError(
        f"{source} names the model code {shown}, not a zoo model; compress runs code a file names only "
        f"when you name it too: give {flag} with that spec if it is your model's code, or "
        f"{trust_flag} if you trust {source}"
    )


def _same_code(user: str, stored: str) -> bool:
    try:
        return canonical_spec(user) == stored
    except CompressError:
        return False


def model_from_checkpoint(
    checkpoint: dict[str, Any],
    source: str | Path,
    named: Sequence[str | None] = (),
    trust: bool = False,
    flag: str = "--model",
) -> nn.Module:
    """Rebuild the model a compress checkpoint (from ``source``) describes, with its weights loaded.

    Its code runs only if it is a zoo model, the user named it or trusts the file
    (``check_model_code``). A structurally pruned checkpoint has narrower layers than its factory
    builds: those layers are resized to the stored tensors first (see ``resize_to``).
    """
    spec = checkpoint["model_spec"]
    check_model_code(spec, source, named, trust, flag)
    in_shape = tuple(checkpoint["in_shape"])
    model = build_model(spec, in_shape, checkpoint["num_classes"], checkpoint["model_args"])
    state = checkpoint["state_dict"]
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        found = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        )
        raise CompressError(
            f"the weights in {source} do not fit the model {spec!r} builds ({found}); the model code changed "
            "after training: restore the code it was trained with, or train again"
        )
    with foreign_errors(
        f"the weights in {source} do not fit the model {spec!r} builds",
        "restore the code it was trained with, or train again",
    ):
        resize_to(model, state)
        model.load_state_dict(state)
    _forward_zeros(model, in_shape, 1, f"the model in {source}", "restore the code it was trained with, or train again")
    return model


# Module attributes that state a layer's width, by the weight dimension they follow.
_WIDTH_ATTRIBUTES = {
    nn.Linear: {"out_features": 0, "in_features": 1},
    nn.Conv2d: {"out_channels": 0, "in_channels": 1},
    nn.BatchNorm2d: {"num_features": 0},
    nn.BatchNorm1d: {"num_features": 0},
    nn.LayerNorm: {},
}


def resize_to(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Give every parameter and buffer of ``model`` the shape it has in ``state_dict``.

    Structured pruning removes channels for real; the factory still builds the original widths.
    Tensors are replaced by empty ones of the stored shape (``load_state_dict`` fills them) and
    the width attributes of Linear/Conv2d/BatchNorm are updated, so the module stays consistent.
    """
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for store in (module._parameters, module._buffers):
            for name, tensor in list(store.items()):
                stored = state_dict.get(prefix + name)
                if tensor is None or stored is None or stored.shape == tensor.shape:
                    continue
                new = torch.empty(stored.shape, dtype=tensor.dtype)
                store[name] = nn.Parameter(new, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else new
        weight = module._parameters.get("weight")
        for attribute, dim in _WIDTH_ATTRIBUTES.get(type(module), {}).items():
            value = weight.shape[dim] if weight is not None else None
            if isinstance(module, nn.Conv2d) and attribute == "in_channels" and value is not None:
                value *= module.groups
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.running_mean is not None:
                value = module.running_mean.shape[0]
            if value is not None:
                setattr(module, attribute, value)


def count_params(model: nn.Module) -> int:
    """The number of parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, in_shape: Sequence[int]) -> int | None:
    """Multiply-accumulates of a forward pass on one sample (Torch-Pruning's counter, which
    counts the layers it knows: convolutions, linear, norms, pooling); None when it fails on a
    model it does not understand, since the figure is informative, not required."""
    import torch
    import torch_pruning as tp

    was_training = model.training
    device = next(model.parameters(), torch.zeros(())).device
    try:
        macs, _ = tp.utils.count_ops_and_params(model.eval(), torch.zeros((1, *in_shape), device=device))
        return int(macs)
    except Exception:  # a custom model whose forward the counter cannot follow
        return None
    finally:
        model.train(was_training)


def list_layers(model: nn.Module, in_shape: Sequence[int]) -> list[dict[str, Any]]:
    """Named submodules in the order they are entered on a forward pass of zeros (2, *in_shape).

    Each is ``{"name", "type", "output_shape", "params"}``: the output shape without the batch
    dimension (None if the module did not run or returned no tensor) and its own parameter
    count. Modules that did not run come last.
    """
    modules = {name: m for name, m in model.named_modules() if name}
    entered: dict[str, int] = {}
    shapes: dict[str, list[int]] = {}
    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(lambda m, args, name=name: _record_entry(entered, name)))
        handles.append(module.register_forward_hook(lambda m, args, out, name=name: _record_shape(shapes, name, out)))
    try:
        _forward_zeros(model, tuple(in_shape), 2, "the model")
    finally:
        for handle in handles:
            handle.remove()
    names = sorted(modules, key=lambda n: entered.get(n, len(modules)))
    return [
        {
            "name": n,
            "type": type(modules[n]).__name__,
            "output_shape": shapes.get(n),
            "params": sum(p.numel() for p in modules[n].parameters(recurse=False)),
        }
        for n in names
    ]


def _record_entry(entered: dict[str, int], name: str) -> None:
    entered.setdefault(name, len(entered))


def _record_shape(shapes: dict[str, list[int]], name: str, out: Any) -> None:
    if isinstance(out, torch.Tensor) and name not in shapes:
        shapes[name] = list(out.shape[1:])


def _forward_zeros(
    model: nn.Module,
    in_shape: tuple[int, ...],
    batch: int,
    what: str,
    advice: str = "check the input shape matches the model",
) -> Any:
    """Run ``model`` in eval mode without gradients on zeros (batch, *in_shape); restore modes."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(torch.zeros(batch, *in_shape))
    except Exception as exc:
        raise CompressError(
            f"{what} fails on a zeros input of shape {(batch, *in_shape)} ({first_line(exc, typed=True)}); {advice}"
        ) from exc
    finally:
        for module, training in modes:
            module.training = training
