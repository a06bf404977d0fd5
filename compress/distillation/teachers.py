"""Teachers: anything that turns a batch of preprocessed inputs into logits (or probabilities).

* a checkpoint written by compress (rebuilt from its model spec; intermediate layers reachable
  by name, so it can give FitNets hints),
* a TorchScript file (``torch.jit.save``) or a ``torch.export`` program (``.pt2``),
* an ONNX model run through ONNX Runtime: a black box that gives logits only.

A teacher whose last op is a softmax outputs probabilities; distillation takes their log instead
(``Teacher.outputs == "probs"``): log-probabilities are logits up to a per-row constant, which the
temperature-scaled softmax of the soft targets ignores. ``looks_like_probabilities`` tells them apart.

``TeacherOutputs`` caches what the teacher says about every training sample, so that
distillation without random augmentation runs the teacher once instead of once per epoch.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..artifacts import load_checkpoint, model_file_kind, read_manifest
from ..distributed import SINGLE, World
from ..errors import CompressError, foreign_errors
from ..modelspec import count_macs, count_params, model_from_checkpoint
from ..onnx_io import OnnxClassifier, open_session
from ..tasks import TargetScaling

# Caches larger than this go to a memory-mapped file on disk instead of RAM (``cache="auto"``).
MEMORY_CACHE_LIMIT_BYTES = 1 << 30
# Outputs are probabilities when every row is non-negative and sums to 1 within this: float32 softmax
# rows sum to 1 within ~1e-6, while logits that happen to do so on every row of a batch do not occur.
PROB_TOLERANCE = 1e-3
PROB_FLOOR = 1e-12  # probabilities are clamped to this before their log (a softmax may underflow to 0)


@dataclass
class Teacher:
    """A frozen model in eval mode plus what its manifest says about its inputs."""

    path: Path
    kind: str  # "checkpoint" | "torchscript" | "exported" | "onnx"
    module: torch.nn.Module | None = None  # None for ONNX teachers
    onnx_session: OnnxClassifier | None = None
    in_shape: tuple | None = None  # per-sample shape, when known
    num_classes: int | None = None
    manifest: dict | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    outputs: str = "logits"  # "logits" | "probs": probabilities, whose log is given as logits
    # a regression teacher whose outputs are in the targets' units: standardised as the student learns them
    standardise: TargetScaling | None = None
    multilabel: bool = False  # probabilities are per label (sigmoid), not one distribution (softmax)

    @property
    def preprocessing(self) -> dict | None:
        return (self.manifest or {}).get("preprocessing")

    @property
    def supports_hints(self) -> bool:
        return self.kind == "checkpoint"

    def __call__(
        self, x: torch.Tensor, hint_layers: tuple[str, ...] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits for ``x`` and the outputs of ``hint_layers``, all float32 on ``x.device``."""
        with torch.inference_mode():
            logits, features = self._infer(x, hint_layers)
        # inference-mode tensors cannot be saved for the student's backward pass: plain copies leave the block
        return logits.clone(), {name: value.clone() for name, value in features.items()}

    def _infer(self, x: torch.Tensor, hint_layers: tuple[str, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.onnx_session is not None:
            return self.as_logits(self._run_onnx(x)), {}
        features: dict[str, torch.Tensor] = {}
        with capture_outputs(self.module, hint_layers, features):
            logits = self.module(x.to(self.device))
        return self.as_logits(logits.float().to(x.device)), {k: v.float().to(x.device) for k, v in features.items()}

    def as_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """The teacher's raw outputs as distillation uses them: log-probabilities when it outputs probabilities
        (per label, their log-odds), regression outputs standardised as the student's targets are."""
        if self.standardise is not None:
            std = torch.tensor(self.standardise.std, dtype=outputs.dtype, device=outputs.device)
            return (outputs - torch.tensor(self.standardise.mean, dtype=outputs.dtype, device=outputs.device)) / std
        if self.outputs != "probs":
            return outputs
        if self.multilabel:
            p = outputs.clamp(PROB_FLOOR, 1 - 1e-7)
            return torch.log(p) - torch.log1p(-p)
        log_p = torch.log(outputs.clamp_min(PROB_FLOOR))
        # the per-row constant that makes them logits is free: zero-mean rows suit --loss mse too
        return log_p - log_p.mean(dim=1, keepdim=True)

    def size(self) -> tuple[int | None, int | None]:
        """(parameters, MACs per sample) as far as known: the manifest's record, else counted."""
        recorded = (self.manifest or {}).get("model") or {}
        params, macs = recorded.get("params"), recorded.get("macs")
        if params is None:
            params = _onnx_params(self.path) if self.module is None else count_params(self.module)
        if macs is None and self.kind == "checkpoint":
            macs = count_macs(self.module, self.in_shape)
        return params, macs

    def _run_onnx(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.onnx_session.predict(x.detach().float().cpu().numpy(), batch_size=len(x))
        return torch.from_numpy(logits).to(x.device)


class capture_outputs:
    """Context manager: forward hooks that store the outputs of the named modules in ``store``."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...], store: dict):
        modules = dict(model.named_modules()) if names else {}  # runs every step: skip when unused
        missing = [n for n in names if n not in modules]
        if missing:
            raise CompressError(
                f"layer {missing[0]!r} not found in {type(model).__name__}; "
                "list the layer names with `compress distill --list-layers MODEL`"
            )
        self._targets = [(n, modules[n]) for n in names]
        self._store = store
        self._handles: list = []

    def __enter__(self):
        for name, module in self._targets:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self._store

    def _hook(self, name):
        def store_output(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise CompressError(
                    f"layer {name!r} does not return a single tensor; choose another layer for the hint"
                )
            self._store[name] = output

        return store_output

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return False


def load_teacher(
    path: str | Path, device: torch.device, named: tuple[str | None, ...] = (), trust: bool = False
) -> Teacher:
    """Load a teacher from a compress checkpoint, a TorchScript/torch.export file or ONNX.

    Code a checkpoint names runs only when it is in ``named`` (the specs the user gave) or the user
    ``trust``s the file, which a ``.pt2`` program also needs: torch.export.load unpickles it in full.
    """
    path = Path(path)
    if not path.is_file():
        raise CompressError(
            f"teacher {path} does not exist; give a .pt checkpoint, a TorchScript file or an .onnx model"
        )
    manifest = read_manifest(path)
    kind = model_file_kind(path)  # by content: a renamed file is still what it is
    if path.suffix == ".onnx" or kind == "onnx":
        return _load_onnx_teacher(path, manifest, device)
    if path.suffix == ".pt2" or kind == "torch.export":
        if not trust:
            raise CompressError(
                f"teacher {path} is a torch.export program, which torch.export.load unpickles in full (that can "
                "run code); pass --trust-model-code if you trust this file, or export the teacher to ONNX"
            )
        return _load_exported_teacher(path, manifest, device)
    if kind == "torchscript":
        with (
            foreign_errors(f"teacher {path} is not a readable TorchScript file", "re-save it with torch.jit.save"),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
        return Teacher(path, "torchscript", module=module.eval(), manifest=manifest, device=device)
    checkpoint = load_checkpoint(path)
    module = model_from_checkpoint(checkpoint, path, named, trust, flag="--teacher-model")
    return Teacher(
        path,
        "checkpoint",
        module=module.to(device).eval(),
        in_shape=tuple(checkpoint["in_shape"]),
        num_classes=checkpoint["num_classes"],
        manifest=manifest,
        device=device,
    )


def looks_like_probabilities(outputs: torch.Tensor) -> bool:
    """Every row non-negative and summing to 1 within ``PROB_TOLERANCE``: what a softmax head gives."""
    return bool((outputs >= 0).all() and ((outputs.sum(dim=1) - 1).abs() <= PROB_TOLERANCE).all())


def _onnx_params(path: Path) -> int:
    """The number of values in an ONNX model's initializers (its weights), read without external data."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(int(np.prod(tensor.dims)) for tensor in model.graph.initializer)


def _load_exported_teacher(path: Path, manifest: dict | None, device: torch.device) -> Teacher:
    with foreign_errors(f"teacher {path} is not a readable torch.export program", "re-save it with torch.export.save"):
        program = torch.export.load(str(path))
    return Teacher(path, "exported", module=program.module().to(device), manifest=manifest, device=device)


def _load_onnx_teacher(path: Path, manifest: dict | None, device: torch.device) -> Teacher:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    runner = OnnxClassifier(open_session(path, role="teacher", providers=providers), name=f"ONNX teacher {path}")
    outputs = runner.session.get_outputs()
    last = outputs[0].shape[-1] if outputs[0].shape else None
    return Teacher(
        path,
        "onnx",
        onnx_session=runner,
        in_shape=runner.sample_shape,
        num_classes=last if isinstance(last, int) else None,
        manifest=manifest,
        device=device,
    )


class TeacherOutputs:
    """What the teacher says about the training set, computed once, read by sample index.

    Kept in memory (on the GPU when training there and it takes at most a quarter of the free
    memory), or in ``.npy`` files memory-mapped from ``cache_dir`` when large. Files are written
    under a temporary name and renamed when complete, so an interrupted run reuses only finished
    caches. Across several processes each computes its block of the samples and every process
    gets the whole (``World.gather_rows``).
    """

    def __init__(self, arrays: dict[str, np.ndarray | torch.Tensor], cache_dir: Path | None):
        self.arrays = arrays
        self.cache_dir = cache_dir

    @classmethod
    def compute(
        cls,
        teacher: Teacher,
        x_train: torch.Tensor,
        hint_layers: tuple[str, ...],
        mode: str,
        cache_dir: Path,
        cache_key: Callable[[], str],
        batch_size: int,
        world: World = SINGLE,
    ) -> TeacherOutputs | None:
        """The cache; None when ``mode`` is auto and the outputs are too large for the memory of each of
        several processes (the disk cache is for one process)."""
        probe_logits, probe_features = teacher(x_train[:2], hint_layers)
        shapes = {"logits": probe_logits.shape[1:], **{n: f.shape[1:] for n, f in probe_features.items()}}
        total = sum(int(np.prod(s)) for s in shapes.values()) * 4 * len(x_train)
        if mode == "auto":
            if total <= MEMORY_CACHE_LIMIT_BYTES:
                mode = "memory"
            elif world.distributed:
                return None
            else:
                mode = "disk"
        if mode == "memory":
            block = world.block(len(x_train))
            arrays = {n: torch.empty((block.stop - block.start, *s)) for n, s in shapes.items()}
            for start, outputs in _teacher_batches(teacher, x_train, hint_layers, block, batch_size):
                for name, value in outputs.items():
                    arrays[name][start - block.start : start - block.start + len(value)] = value.cpu()
            arrays = {n: world.gather_rows(a, len(x_train)).cpu() for n, a in arrays.items()}
            if world.device.type == "cuda" and total <= torch.cuda.mem_get_info(world.device)[0] / 4:
                arrays = {n: a.to(world.device) for n, a in arrays.items()}
            return cls(arrays, None)
        directory = cache_dir / cache_key()
        if (directory / "complete").exists():
            return cls({n: np.load(directory / f"{i}.npy", mmap_mode="r") for i, n in enumerate(shapes)}, cache_dir)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        files = {
            n: np.lib.format.open_memmap(directory / f"{i}.npy", mode="w+", dtype=np.float32, shape=(len(x_train), *s))
            for i, (n, s) in enumerate(shapes.items())
        }
        for start, outputs in _teacher_batches(teacher, x_train, hint_layers, slice(0, len(x_train)), batch_size):
            for name, value in outputs.items():
                files[name][start : start + len(value)] = value.cpu().numpy()
        for array in files.values():
            array.flush()
        (directory / "complete").touch()
        return cls(files, cache_dir)

    def lookup(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        taken = {}
        for name, array in self.arrays.items():
            if isinstance(array, torch.Tensor):
                taken[name] = array[indices.to(array.device)].to(device, non_blocking=True)
            else:
                taken[name] = torch.from_numpy(np.ascontiguousarray(array[indices.cpu().numpy()])).to(device)
        return taken.pop("logits"), taken

    def remove_files(self) -> None:
        """Delete the on-disk cache (once the run that needed it has finished)."""
        if self.cache_dir is not None:
            self.arrays.clear()
            shutil.rmtree(self.cache_dir, ignore_errors=True)


def _teacher_batches(
    teacher: Teacher, x: torch.Tensor, hint_layers: tuple[str, ...], span: slice, batch_size: int
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(first sample, {"logits": ..., hint layer: ...}) for the samples of ``span``, batch by batch."""
    for start in range(span.start, span.stop, batch_size):
        logits, features = teacher(x[start : min(start + batch_size, span.stop)], hint_layers)
        yield start, {"logits": logits, **features}
