"""``compress distill``: train a student towards a teacher's soft targets (and hints)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ..data import PREPROCESSING_HELP, PreprocessingChoice
from ..errors import CompressError
from .base import Cli, Shortcut, Stage
from .train import MODEL_HELP, TrainConfig, fit_summary


class DistillConfig(TrainConfig):
    """A training run whose targets come from a teacher. ``model`` is the student."""

    model: Annotated[str, Cli(flags=("--model", "--student"))] = Field(
        "mlp", description=f"Student model: {MODEL_HELP}."
    )
    teacher: str = Field(
        description="Teacher: a compress checkpoint (.pt), a TorchScript file, a torch.export "
        "program (.pt2) or an ONNX model (.onnx, logits only)."
    )
    teacher_model: str | None = Field(
        None,
        description="The model code of a teacher checkpoint that is not a zoo model: the file.py:factory or "
        "module:factory it was trained with (compress runs code a checkpoint names only when you name it).",
    )
    trust_model_code: bool = Field(
        False,
        description="Run the model code (a file or module, not a zoo name) that a checkpoint names, or the pickled "
        "contents of a .pt2 program, without naming it yourself: only for files you trust.",
    )
    teacher_outputs: Literal["auto", "logits", "probs"] = Field(
        "auto",
        description="What the teacher outputs. auto: probabilities when its outputs on a sample of training inputs "
        "are non-negative rows summing to 1 (a softmax head), else logits; probs: their log is used as logits "
        "(before the temperature); logits: used as they are.",
    )
    preprocessing: PreprocessingChoice | None = Field(
        None,
        description=f"For a teacher without a manifest: {PREPROCESSING_HELP}.",
    )
    temperature: Annotated[float, Cli(flags=("--temperature", "-T"))] = Field(
        4.0, gt=0, le=100, description="Softmax temperature of the soft targets (lower for very small students)."
    )
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the teacher term; 1 - alpha goes to the hard labels.")
    loss: Literal["kl", "mse"] = Field("kl", description="kl: soft-target KL scaled by T²; mse: MSE between logits.")
    hints: Annotated[list[str], Cli(flags=("--hint",), metavar="TEACHER_LAYER:STUDENT_LAYER", repeat=True)] = Field(
        default_factory=list,
        description="FitNets hint: match an intermediate student layer to a teacher layer "
        "through a learned projection (repeatable).",
    )
    beta: float = Field(1.0, ge=0, le=1000, description="Weight of each hint loss.")
    teacher_cache: Literal["auto", "memory", "disk", "off"] = Field(
        "auto",
        description="Compute teacher outputs once and reuse them every epoch (not with --augment); "
        "auto: in memory, or memory-mapped on disk when over 1 GiB.",
    )

    @field_validator("hints")
    @classmethod
    def _hint_pairs(cls, hints: list[str]) -> list[str]:
        for hint in hints:
            teacher_layer, sep, student_layer = hint.partition(":")
            if not sep or not teacher_layer or not student_layer:
                raise ValueError(
                    f"`hints` {hint!r} must look like TEACHER_LAYER:STUDENT_LAYER "
                    "(see `compress distill --list-layers MODEL`)"
                )
        return hints

    @field_validator("teacher_cache")
    @classmethod
    def _cache_without_augmentation(cls, mode: str, info) -> str:
        if info.data.get("augment", "none") != "none" and mode in ("memory", "disk"):
            raise ValueError(
                f"`teacher_cache` {mode} needs the same inputs every epoch, but `augment` changes them; use auto or off"
            )
        return mode

    @property
    def hint_pairs(self) -> list[tuple[str, str]]:
        return [tuple(hint.split(":", 1)) for hint in self.hints]


def distill(config: DistillConfig) -> dict[str, Any]:
    """Distil ``config.teacher`` into the student ``config.model``; write its checkpoint and manifest.

    Returns the manifest (also written beside the checkpoint).
    """
    import torch

    from ..distillation.objective import DistillObjective, load_matching_teacher, warn_if_student_larger
    from ..loop import Fit, place
    from ..modelspec import build_model

    world = place(config.device)
    teacher, dataset = load_matching_teacher(config, world.device)
    torch.manual_seed(config.seed)
    student = build_model(config.model, dataset.in_shape, dataset.num_classes, config.model_args)
    warn_if_student_larger(teacher, student, dataset.in_shape)
    objective = DistillObjective(config, teacher, student, dataset, world)
    return Fit(config, "distill", dataset, student, objective, world).run()


def list_layers(model: str, options: dict[str, Any]) -> list[str]:
    """The layer names and output shapes of a checkpoint or model spec, for choosing hints."""
    from ..artifacts import load_checkpoint
    from ..data import load_dataset
    from ..modelspec import build_model, model_from_checkpoint
    from ..modelspec import list_layers as layers_of

    if model.endswith(".onnx"):
        raise CompressError(
            "an ONNX model is a black box to distillation (logits only); "
            "list the layers of its PyTorch checkpoint instead"
        )
    if Path(model).suffix == ".pt" and Path(model).is_file():
        checkpoint = load_checkpoint(model)
        in_shape = tuple(checkpoint["in_shape"])
        named = (options.get("teacher_model"), options.get("model"))
        module = model_from_checkpoint(
            checkpoint, model, named, bool(options.get("trust_model_code")), flag="--teacher-model"
        )
    else:
        dataset = load_dataset(options.get("data") or DistillConfig.model_fields["data"].default)
        in_shape = dataset.in_shape
        module = build_model(model, in_shape, dataset.num_classes, options.get("model_args") or {})
    lines = [f"{'layer':<32} {'type':<20} {'output shape':<20} params"]
    for layer in layers_of(module, in_shape):
        shape = "-" if layer["output_shape"] is None else "x".join(map(str, layer["output_shape"]))
        lines.append(f"{layer['name']:<32} {layer['type']:<20} {shape:<20} {layer['params']:,}")
    return lines


STAGE = Stage(
    name="distill",
    config=DistillConfig,
    run=distill,
    summary=fit_summary,
    reads=("teacher",),
    resumable=True,
    distributed=True,
    shortcuts=(
        Shortcut(
            "--list-layers",
            "MODEL",
            "Print the layer names and output shapes of MODEL (a "
            "checkpoint or a model spec) for choosing --hint, and exit.",
            list_layers,
        ),
    ),
    help="""Distil a teacher into a smaller student.

    \b
    Examples:
      compress distill --teacher runs/mnist/teacher.pt --model mlp --data mnist:data/mnist \\
                       --temperature 4 --alpha 0.9 --epochs 10 --out runs/mnist/student.pt
      compress distill --teacher teacher.onnx --preprocessing fit --model my_models.py:tiny_cnn \\
                       --data digits --out runs/digits/student.pt
      compress distill --list-layers runs/mnist/teacher.pt
    """,
)
