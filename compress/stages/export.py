"""``compress export``: a compress checkpoint to a verified ONNX model.

The model is exported with a dynamic batch axis (unless a static batch is asked for), checked with
``onnx.checker``, optionally optimised by ONNX Runtime, and then run through ONNX Runtime on real
samples at batch sizes 1 and 7 next to PyTorch: if the logits differ beyond the tolerance, or the
batch axis silently became fixed, the export fails and nothing is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import Field

from ..artifacts import (
    current_umask,
    input_record,
    load_checkpoint,
    new_manifest,
    read_manifest,
    sha256_file,
    staging_dir,
    write_manifest,
)
from ..data import PREPROCESSING_HELP, PreprocessingChoice, load_dataset_for
from ..errors import CompressError, first_line, foreign_errors
from ..onnx_io import OnnxClassifier, max_runtime_opset, model_info, open_session, quiet
from ..tasks import TargetScaling, Task, task_of
from .base import Cli, Stage, StageConfig, output_suffix
from .train import DATA_HELP, MAX_BATCH, MAX_SAMPLES

if TYPE_CHECKING:
    import torch

# Newest opset each torch exporter writes (torch.onnx._constants, torch 2.13).
EXPORTER_MAX_OPSET = {"dynamo": 23, "torchscript": 20}
EXPORTER_MIN_OPSET = {"dynamo": 18, "torchscript": 7}
# Protobuf cannot serialise a message over 2 GiB: weights beyond this go to an external data file.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000
# onnxruntime.transformers model types that compress passes on to its optimizer.
TRANSFORMER_TYPES = ("bert", "bart", "gpt2", "t5", "vit", "clip", "unet", "vae", "phi")
PARITY_BATCHES = (1, 7)  # 7: an odd size no one exports with, so a batch axis fixed by tracing shows


class ExportConfig(StageConfig):
    checkpoint: Annotated[str, Cli(argument=True)] = Field(description="The compress checkpoint (.pt) to export.")
    out: str = Field(description="ONNX model to write (.onnx); its manifest goes beside it (.onnx.json).")
    model: str | None = Field(
        None,
        description="The checkpoint's model code when it is not a zoo model: the file.py:factory or "
        "module:factory it was trained with (compress runs code a checkpoint names only when you name it).",
    )
    trust_model_code: bool = Field(
        False,
        description="Run the model code (a file or module, not a zoo name) that the checkpoint names without "
        "naming it yourself: only for checkpoints you trust.",
    )
    data: str | None = Field(
        None, description=f"Samples for the parity check (default: the checkpoint's data): {DATA_HELP}."
    )
    preprocessing: PreprocessingChoice | None = Field(
        None,
        description=f"For a checkpoint without a manifest: {PREPROCESSING_HELP}.",
    )
    opset: int | None = Field(
        None,
        ge=7,  # the oldest onnxruntime runs; the exporter's and the runtime's range is checked when it runs
        le=99,
        description="ONNX opset (default: the newest the exporter writes and the installed onnxruntime runs).",
    )
    static_batch: Annotated[int | None, Cli(metavar="N")] = Field(
        None, ge=1, le=MAX_BATCH, description="Fix the batch axis to N (default: dynamic)."
    )
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo", description="torch.onnx.export with torch.export (dynamo) or the TorchScript tracer."
    )
    parity: bool = Field(True, description="Compare ONNX Runtime with PyTorch on real samples at batch 1 and 7.")
    atol: float = Field(1e-4, ge=0, le=1000, description="Parity: absolute tolerance, in the model's output units.")
    rtol: float = Field(1e-3, ge=0, le=1, description="Parity: relative tolerance (1: 100%).")
    parity_samples: int = Field(
        63, ge=max(PARITY_BATCHES), le=MAX_SAMPLES, description="Parity: test samples compared."
    )
    optimize: Literal["basic", "extended", "all"] | None = Field(
        None,
        description="Save ONNX Runtime's optimised graph as the artifact (all: also hardware-specific "
        "layouts, so run it on the same kind of CPU).",
    )
    transformer: Literal[TRANSFORMER_TYPES] | None = Field(
        None,
        description="Run onnxruntime.transformers' optimizer (attention/LayerNorm/GELU fusions) for this model type.",
    )
    num_heads: int = Field(0, ge=0, le=1024, description="Attention heads, for --transformer (0: detect).")
    hidden_size: int = Field(0, ge=0, le=2**20, description="Hidden size, for --transformer (0: detect).")

    _out = output_suffix(".onnx")


def choose_opset(requested: int | None, exporter: str) -> int:
    """The requested opset, checked against the exporter and onnxruntime; else the newest both take."""
    runtime_max = max_runtime_opset()
    newest = min(EXPORTER_MAX_OPSET[exporter], runtime_max)
    if requested is None:
        return newest
    if requested > runtime_max:
        raise CompressError(
            f"opset {requested} is newer than the installed onnxruntime runs "
            f"(max {runtime_max}); use --opset {newest} or lower"
        )
    if not EXPORTER_MIN_OPSET[exporter] <= requested <= EXPORTER_MAX_OPSET[exporter]:
        raise CompressError(
            f"the {exporter} exporter writes opsets {EXPORTER_MIN_OPSET[exporter]}"
            f"..{EXPORTER_MAX_OPSET[exporter]}, not {requested}; pick one in that range"
        )
    return requested


def export(config: ExportConfig) -> dict[str, Any]:
    """Export, verify and write ``config.out`` with its manifest; return the manifest."""
    from ..modelspec import count_macs, count_params, model_from_checkpoint

    checkpoint = load_checkpoint(config.checkpoint, command="export")
    source = read_manifest(config.checkpoint) or {}
    opset = choose_opset(config.opset, config.exporter)
    model = model_from_checkpoint(checkpoint, config.checkpoint, (config.model,), config.trust_model_code).eval()
    task_record = checkpoint.get("task") or source.get("task")
    task, scaling = task_of({"task": task_record}), TargetScaling.from_record(task_record)
    if scaling is not None:  # the network learnt standardised targets: the exported model gives their units
        model = in_target_units(model, scaling).eval()
    in_shape = tuple(checkpoint["in_shape"])
    input_name = (source.get("input_spec") or {}).get("name", "input")
    output_name = (source.get("output_spec") or {}).get("name", "logits")

    samples, labels, dataset_info = None, None, None
    if config.parity:
        if not source and not config.data:
            raise CompressError(
                f"{config.checkpoint} has no manifest naming its data; pass --data "
                "for the parity check (or --no-parity to skip it)"
            )
        dataset = load_dataset_for(config.checkpoint, source, config.data, config.preprocessing)
        if tuple(dataset.in_shape) != in_shape:
            raise CompressError(
                f"{config.checkpoint} takes samples of shape {list(in_shape)} but "
                f"{dataset.spec} gives {list(dataset.in_shape)}; pass the data it was "
                "trained on"
            )
        samples = dataset.x_test[: config.parity_samples]
        labels, dataset_info = dataset.labels, dataset.describe()
        if len(samples) < max(PARITY_BATCHES):
            raise CompressError(
                f"{dataset.spec} has {len(samples)} test samples; the parity check needs {max(PARITY_BATCHES)}"
            )
    example_batch = config.static_batch or 2
    example = _example_input(samples, in_shape, example_batch)

    out = Path(config.out)
    large = _param_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES
    with staging_dir(out) as staging:
        staged = staging / out.name
        _export_to(model, example, staged, config, opset, input_name, output_name, large)
        if config.transformer:
            _optimize_transformer(staged, config, large)
        if config.optimize:
            _optimize_with_runtime(staged, config.optimize, large)
        _check_onnx(staged)
        parity = _parity_check(model, staged, samples, config, task) if config.parity else None
        info = model_info(staged)
        sha = sha256_file(staged)
        _move_into_place(staging, out)

    manifest = new_manifest(out, "export", config.model_dump(mode="json"))
    manifest["inputs"] = [input_record("checkpoint", config.checkpoint)]
    manifest["model"] = source.get("model") or {
        "spec": checkpoint["model_spec"],
        "args": checkpoint["model_args"],
        "params": count_params(model),
        "macs": count_macs(model, in_shape),
    }
    batch_dim: int | None = config.static_batch
    manifest["input_spec"] = {
        "name": input_name,
        "shape": [batch_dim, *in_shape],
        "dtype": "float32",
        "dynamic_axes": {} if batch_dim else {"0": "batch"},
    }
    manifest["output_spec"] = {"name": output_name, "shape": [batch_dim, checkpoint["num_classes"]], "dtype": "float32"}
    manifest["preprocessing"] = source.get("preprocessing") or (
        dataset.preprocessing.to_dict() if config.parity else None
    )
    manifest["labels"] = source.get("labels") or labels
    manifest["data"] = source.get("data") or dataset_info
    manifest["task"] = task.record()  # outputs in the targets' units: no standardisation to undo
    manifest["source"] = {
        "stage": source.get("stage"),
        "artifact": Path(config.checkpoint).name,
        "metrics": {
            k: v
            for k, v in (source.get("metrics") or {}).items()
            if k in ("test_accuracy", "test_errors", "val_accuracy", "test_metrics", "val_metrics")
        },
    }
    manifest["onnx"] = {
        "exporter": config.exporter,
        "opset": info["opset"],
        "optimize": config.optimize,
        "transformer": config.transformer,
        "external_data": large,
        "nodes": info["nodes"],
        "op_types": info["op_types"],
    }
    manifest["parity"] = parity
    manifest["metrics"] = {"params": count_params(model)}
    manifest["sha256"] = sha
    manifest["size_bytes"] = info["size_bytes"]
    write_manifest(out, manifest)
    return manifest


def in_target_units(model: torch.nn.Module, scaling: TargetScaling) -> torch.nn.Module:
    """``model`` followed by ``outputs * std + mean``: a regression network's standardised outputs in the
    targets' units, so that the exported model predicts what users measure."""
    import torch  # here, not at the top: the CLI starts without torch

    class InTargetUnits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = model
            self.register_buffer("target_std", torch.tensor(scaling.std, dtype=torch.float32))
            self.register_buffer("target_mean", torch.tensor(scaling.mean, dtype=torch.float32))

        def forward(self, x):
            return self.network(x) * self.target_std + self.target_mean

    return InTargetUnits()


def _example_input(samples: np.ndarray | None, in_shape: tuple, batch: int) -> torch.Tensor:
    """Real samples when there are some (tracing follows real data paths), zeros otherwise."""
    import torch

    if samples is not None and len(samples) >= batch:
        return torch.from_numpy(np.ascontiguousarray(samples[:batch]))
    return torch.zeros((batch, *in_shape))


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _move_into_place(staging: Path, out: Path) -> None:
    """External data first, the .onnx last: a reader never sees a model without its weights."""
    files = sorted(staging.iterdir(), key=lambda p: p.name == out.name)
    umask = current_umask()
    for path in files:
        os.chmod(path, 0o666 & ~umask)
        os.replace(path, out.parent / path.name)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception: torch.onnx wraps the useful message in generic ones."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _export_to(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    config: ExportConfig,
    opset: int,
    input_name: str,
    output_name: str,
    large: bool,
) -> None:
    import torch

    dynamic = config.static_batch is None
    try:
        with quiet(), torch.no_grad():
            if config.exporter == "dynamo":
                program = torch.onnx.export(
                    model,
                    (example,),
                    dynamo=True,
                    verbose=False,
                    opset_version=opset,
                    input_names=[input_name],
                    output_names=[output_name],
                    dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic else None,
                )
                program.save(str(path), external_data=large)
            else:
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[input_name],
                    output_names=[output_name],
                    dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic else None,
                )
                if large:
                    _resave(path, external=True)
    except CompressError:
        raise
    except Exception as exc:  # the exporters raise many types for models they cannot handle
        other = "torchscript" if config.exporter == "dynamo" else "dynamo"
        raise CompressError(
            f"torch.onnx ({config.exporter}) cannot export {config.checkpoint}: "
            f"{first_line(_root_cause(exc))}; try --exporter {other}"
        ) from None


def _resave(path: Path, external: bool) -> None:
    """Rewrite ``path`` (weights in one external ``.data`` file beside it when ``external``)."""
    import onnx

    model = onnx.load(str(path))
    for stale in path.parent.iterdir():
        if stale != path:
            stale.unlink()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data" if external else None,
    )


def _optimize_transformer(path: Path, config: ExportConfig, large: bool) -> None:
    """Attention/LayerNorm/GELU fusions from onnxruntime.transformers (onnxruntime-tools' successor)."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:
        raise CompressError(
            f"onnxruntime.transformers is not importable ({first_line(exc)}); reinstall onnxruntime"
        ) from None
    with (
        foreign_errors(
            f"the {config.transformer} transformer optimizer failed on this model", "export without --transformer"
        ),
        quiet(),
    ):
        optimized = optimize_model(
            str(path), model_type=config.transformer, num_heads=config.num_heads, hidden_size=config.hidden_size
        )
        optimized.save_model_to_file(str(path), use_external_data_format=large)


def _optimize_with_runtime(path: Path, level: str, large: bool) -> None:
    """Let ONNX Runtime optimise the graph at ``level`` and keep the optimised graph as the artifact."""
    optimized = path.with_name(f"optimized.{path.name}")
    open_session(
        path,
        role="exported model",
        optimization=level,
        optimized_model_path=optimized,
        external_initializers=f"{path.name}.data" if large else None,
    )
    os.replace(optimized, path)


def _check_onnx(path: Path) -> None:
    import onnx

    with foreign_errors("the exported model fails the ONNX checker", "try the other --exporter or another --opset"):
        onnx.checker.check_model(str(path), full_check=False)


def _parity_check(
    model: torch.nn.Module, path: Path, samples: np.ndarray, config: ExportConfig, task: Task
) -> dict[str, Any]:
    """PyTorch and ONNX Runtime on the same real batches, of size 1 and 7 (or the static batch).

    Both see identical batches, so a model whose output depends on the batch's composition is
    compared fairly, and a batch size the graph baked in fails loudly.
    """
    import torch

    runner = OnnxClassifier(open_session(path, role="exported model"), "the exported model")
    results = []
    for batch in (config.static_batch,) if config.static_batch else PARITY_BATCHES:
        if batch == 1:
            count = max(PARITY_BATCHES)  # one at a time is slow for large models: a few suffice
        elif config.static_batch:
            count = len(samples)  # the last chunk is padded to the fixed size
        else:
            count = len(samples) // batch * batch
        expected, got = [], []
        for start in range(0, count, batch):
            chunk = samples[start : start + batch]
            if len(chunk) < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), np.float32)])
            keep = min(batch, count - start)
            with torch.no_grad():
                expected.append(model(torch.from_numpy(chunk)).float().numpy()[:keep])
            try:
                got.append(runner.run(chunk)[:keep])
            except Exception as exc:  # onnxruntime rejects a batch size the graph baked in
                raise CompressError(
                    f"parity check: the exported model fails at batch size {batch} "
                    f"({first_line(exc, 120)}); its batch axis was fixed during export (does the "
                    "model read the batch size as a Python int?) — keep it a tensor size in the "
                    "model, or pass --static-batch N if a fixed batch is intended"
                ) from None
        results.append(_compare(np.concatenate(expected), np.concatenate(got), batch, config, task))
    report = {
        "atol": config.atol,
        "rtol": config.rtol,
        "samples": int(len(samples)),
        "max_abs_diff": max(r["max_abs_diff"] for r in results),
        "max_rel_diff": max(r["max_rel_diff"] for r in results),
        "top1_agreement": min(r["top1_agreement"] for r in results) if task.name == "classification" else None,
        "batches": results,
    }
    failed = [r for r in results if not r["passed"]]
    if failed:
        r = failed[0]
        raise CompressError(
            f"parity check failed at batch size {r['batch_size']}: ONNX Runtime's logits differ from "
            f"PyTorch's by up to {r['max_abs_diff']:.3g} (relative {r['max_rel_diff']:.3g}; allowed "
            f"atol {config.atol:g} + rtol {config.rtol:g}){_agreement(r)}; "
            "the model likely has data-dependent control flow or an op exported wrongly — fix the "
            "model, or loosen --atol/--rtol if the difference is expected"
        )
    return report


def _compare(expected: np.ndarray, got: np.ndarray, batch: int, config: ExportConfig, task: Task) -> dict[str, Any]:
    diff = np.abs(got.astype(np.float64) - expected)
    big = np.abs(expected) > max(config.atol, 1e-6)  # relative error only where it means something
    rel = float((diff[big] / np.abs(expected[big])).max()) if big.any() else 0.0
    finite = bool(np.isfinite(got).all())
    classifier = task.name == "classification"
    return {
        "batch_size": batch,
        "samples": int(len(got)),
        "max_abs_diff": float(diff.max()) if finite else float("inf"),
        "max_rel_diff": rel,
        "top1_agreement": float((got.argmax(1) == expected.argmax(1)).mean()) if classifier else None,
        "passed": finite and bool(np.allclose(got, expected, atol=config.atol, rtol=config.rtol)),
    }


def _agreement(parity: dict[str, Any]) -> str:
    """ ", top-1 agreement 99.9%" for a classifier's parity figures, else nothing."""
    agreement = parity.get("top1_agreement")
    return "" if agreement is None else f", top-1 agreement {100 * agreement:.1f}%"


def summary(manifest: dict[str, Any]) -> list[str]:
    parity, onnx_info = manifest["parity"], manifest["onnx"]
    if parity:
        batches = ", ".join(str(b["batch_size"]) for b in parity["batches"])
        checked = (
            f"parity: max |diff| {parity['max_abs_diff']:.2g}{_agreement(parity)} on {parity['samples']} samples "
            f"at batch {batches}"
        )
    else:
        checked = "parity: not checked (--no-parity)"
    return [
        checked,
        f"onnx: opset {onnx_info['opset']}, {onnx_info['nodes']} nodes, "
        f"{manifest['size_bytes'] / 1024:.1f} KiB, batch axis "
        f"{'dynamic' if manifest['input_spec']['dynamic_axes'] else 'fixed'}",
    ]


STAGE = Stage(
    name="export",
    config=ExportConfig,
    run=export,
    summary=summary,
    reads=("checkpoint",),
    help="""Export a checkpoint to ONNX and check that ONNX Runtime computes what PyTorch does.

    \b
    Examples:
      compress export runs/mnist/student.pt --out runs/mnist/student.onnx
      compress export runs/mnist/teacher.pt --out runs/mnist/teacher.onnx --optimize extended
    """,
)
