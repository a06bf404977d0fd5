"""``compress distill``: train a student towards a teacher's soft targets (and hints)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ..data import PREPROCESSING_HELP, PreprocessingChoice
from ..errors import CompressError
from .base import Cli, Shortcut, Stage
from .train import MAX_SAMPLES, MODEL_ARGS, MODEL_HELP, TrainConfig, fit_summary

PGD_STEPS = 10  # --adv-steps and --eval-steps when not given


def pgd_step_size(eps: float, steps: int) -> float:
    """PGD's step when not given (Madry et al. 2018): 2.5 ε / steps, enough to cross the ε ball and back."""
    return 2.5 * eps / steps


def _attack_list(text: str) -> list[str]:
    """``--eval-attack fgsm,pgd`` -> ["fgsm", "pgd"]."""
    return [name.strip() for name in text.split(",") if name.strip()]


class DistillConfig(TrainConfig):
    """A training run whose targets come from a teacher. ``model`` is the student."""

    model: Annotated[str, Cli(flags=("--model", "--student"))] = Field(
        "mlp", description=f"Student model: {MODEL_HELP}."
    )
    teacher: str = Field(
        description="Teacher: a compress checkpoint (.pt), a TorchScript file, a torch.export "
        "program (.pt2) or an ONNX model (.onnx, logits only). With --online: the checkpoint (.pt) "
        "the teacher trained beside the student is written to."
    )
    teacher_model: str | None = Field(
        None,
        description="The model code of a teacher checkpoint that is not a zoo model: the file.py:factory or "
        "module:factory it was trained with (compress runs code a checkpoint names only when you name it). "
        f"With --online: the teacher's network, {MODEL_HELP}.",
    )
    teacher_model_args: Annotated[dict[str, Any], replace(MODEL_ARGS, flags=("--teacher-model-arg",))] = Field(
        default_factory=dict,
        description="With --online: keyword argument for the teacher's model factory (repeatable), e.g. width=16.",
    )
    online: bool = Field(
        False,
        description="No trained teacher: train --teacher-model together with the student from scratch, each "
        "learning from the labels and from the other's soft targets (deep mutual learning, Zhang et al. 2018), "
        "and write it to --teacher. --alpha is then 0.5 and --temperature 1 unless given.",
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
        4.0,
        gt=0,
        le=100,
        description="Softmax temperature of the soft targets (lower for very small students; 1 with --online "
        "unless given, as in deep mutual learning).",
    )
    alpha: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Weight of the teacher term; 1 - alpha goes to the hard labels (0.5 with --online unless "
        "given: labels and peer weighed equally, as in deep mutual learning).",
    )
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
    adversarial: Literal["none", "fgsm", "pgd"] = Field(
        "none",
        description="Adversarially robust distillation (Goldblum et al. 2020): also match the teacher on inputs "
        "perturbed within --adv-eps to make the student disagree with it the most, found each step by FGSM or PGD.",
    )
    adv_eps: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="ε of --adversarial: the largest change of any input value (L∞), in the model's input space "
        "after preprocessing (0.1 of the pixel range is 0.1 / std with fit preprocessing).",
    )
    adv_steps: int | None = Field(None, ge=1, le=1000, description="Steps of --adversarial pgd (default 10).")
    adv_step_size: float | None = Field(
        None, gt=0, le=1000, description="Step size of --adversarial pgd (default 2.5 ε / steps, Madry et al.)."
    )
    adv_weight: float | None = Field(
        None, gt=0, le=1000, description="Weight of the adversarial term of --adversarial (default 1)."
    )
    eval_attack: Annotated[list[Literal["fgsm", "pgd"]], Cli(parse=_attack_list, metavar="fgsm,pgd")] = Field(
        default_factory=list,
        description="Measure the student's (and a PyTorch teacher's) test accuracy under these attacks, "
        "comma-separated, maximising the cross-entropy with the true labels (default: the --adversarial one).",
    )
    eval_eps: float | None = Field(
        None, gt=0, le=1000, description="ε of --eval-attack, in the input space (default: --adv-eps)."
    )
    eval_steps: int | None = Field(
        None, ge=1, le=1000, description="Steps of --eval-attack pgd (default: --adv-steps, else 10)."
    )
    eval_samples: int | None = Field(
        None, ge=1, le=MAX_SAMPLES, description="Test samples --eval-attack attacks, the first ones (default: all)."
    )

    @model_validator(mode="after")
    def _adversarial_settings(self) -> DistillConfig:
        """Settings of the attacks given without the attack they set are refused; defaults filled in."""
        if self.adversarial == "none":
            for name in ("adv_eps", "adv_steps", "adv_step_size", "adv_weight"):
                if getattr(self, name) is not None:
                    raise ValueError(f"`{name}` is a setting of `adversarial` training: add `adversarial` pgd or fgsm")
        else:
            if self.adv_eps is None:
                raise ValueError(
                    f"`adversarial` {self.adversarial} needs `adv_eps`, the size of the perturbations in the model's "
                    "input space (0.1 of the pixel range is 0.1 / std with fit preprocessing)"
                )
            if self.adversarial == "fgsm" and (self.adv_steps is not None or self.adv_step_size is not None):
                name = "adv_steps" if self.adv_steps is not None else "adv_step_size"
                raise ValueError(f"`{name}` is a setting of `adversarial` pgd; FGSM takes one step of `adv_eps`")
            if self.adversarial == "pgd":
                self.adv_steps = self.adv_steps or PGD_STEPS
                self.adv_step_size = self.adv_step_size or pgd_step_size(self.adv_eps, self.adv_steps)
            self.adv_weight = self.adv_weight or 1.0
        attacks = self.eval_attack or ([self.adversarial] if self.adversarial != "none" else [])
        if not attacks:
            for name in ("eval_eps", "eval_steps", "eval_samples"):
                if getattr(self, name) is not None:
                    raise ValueError(f"`{name}` is a setting of `eval_attack`: add `eval_attack` pgd or fgsm")
            return self
        if self.eval_steps is not None and "pgd" not in attacks:
            raise ValueError("`eval_steps` is a setting of the pgd attack: add pgd to `eval_attack`")
        if self.eval_eps is None and self.adv_eps is None:
            raise ValueError("`eval_attack` needs `eval_eps`, the size of the perturbations in the model's input space")
        self.eval_attack = list(dict.fromkeys(attacks))
        self.eval_eps = self.eval_eps or self.adv_eps
        if "pgd" in attacks:
            self.eval_steps = self.eval_steps or self.adv_steps or PGD_STEPS
        return self

    @model_validator(mode="before")
    @classmethod
    def _online_defaults(cls, values: Any) -> Any:
        """With `online`, deep mutual learning's weights where none are given: T 1, alpha 0.5."""
        if isinstance(values, dict) and values.get("online") is True:
            return {"temperature": 1.0, "alpha": 0.5, **values}
        return values

    @model_validator(mode="after")
    def _online_settings(self) -> DistillConfig:
        """`online` names the teacher's network and where it goes; what only a trained teacher has is refused."""
        if not self.online:
            if self.teacher_model_args:
                raise ValueError(
                    "`teacher_model_args` are for the teacher that `online` trains beside the student; add "
                    "`online`, or remove them (a trained teacher's checkpoint records its own)"
                )
            return self
        if self.teacher_model is None:
            raise ValueError(
                "`online` trains the teacher beside the student from scratch: name its network with "
                "`teacher_model` (a zoo name such as resnet8, or file.py:factory)"
            )
        if not self.teacher.endswith(".pt"):
            raise ValueError(
                f"with `online`, `teacher` is the checkpoint the teacher is written to and must end in .pt, "
                f"got {self.teacher!r}"
            )
        pretrained = {
            "teacher_outputs": self.teacher_outputs != "auto",
            "preprocessing": self.preprocessing is not None,
            "trust_model_code": self.trust_model_code,
            "hints": bool(self.hints),
            "teacher_cache": self.teacher_cache in ("memory", "disk"),
        }
        for name, given in pretrained.items():
            if given:
                raise ValueError(
                    f"`{name}` is for distilling from a trained teacher; with `online` the teacher learns from "
                    "scratch beside the student (its logits change every step, its inputs are normalised as the "
                    "student's, its code is the `teacher_model` you name): remove it"
                )
        for name, given in (("adversarial", self.adversarial != "none"), ("eval_attack", bool(self.eval_attack))):
            if given:
                raise ValueError(
                    f"`{name}` is not available with `online`: train both networks first, then distil from the "
                    f"teacher it writes with `{name}`"
                )
        if self.alpha == 1:
            raise ValueError(
                "`alpha` 1 with `online` leaves both networks without the labels, each only copying the other; "
                "use less than 1 (0.5 by default)"
            )
        return self

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

    Returns the manifest (also written beside the checkpoint). With ``config.online`` the teacher is
    trained beside the student instead, and written to ``config.teacher`` (``distillation.mutual``).
    """
    import torch

    if config.online:
        from ..distillation.mutual import distill_online

        return distill_online(config)
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


def summary(manifest: dict[str, Any]) -> list[str]:
    """What train says of a checkpoint, then the student's and teacher's accuracy under attack (``--eval-attack``)."""
    from ..distillation.adversarial import robustness_lines

    return fit_summary(manifest) + robustness_lines(manifest["metrics"].get("robustness") or [])


def files(config: DistillConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The fields naming what ``config`` reads and writes: with ``online`` the teacher is written, not read."""
    return ((), ("out", "teacher")) if config.online else (("teacher",), ("out",))


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
    summary=summary,
    reads=("teacher",),
    writes=("out", "teacher"),
    io=files,
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
      compress distill --online --teacher-model resnet8 --teacher runs/digits/teacher.pt --model mlp \\
                       --data digits --out runs/digits/student.pt
      compress distill --teacher runs/mnist/teacher.pt --model cnn --data mnist:data/mnist \\
                       --adversarial pgd --adv-eps 0.32 --eval-attack fgsm,pgd --out runs/mnist/robust.pt
      compress distill --list-layers runs/mnist/teacher.pt
    """,
)
