"""``compress train``: a teacher from scratch, for users who do not have one yet."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from ..tasks import TASK_HELP, TaskName
from .base import Cli, Stage, StageConfig, output_suffix

DATA_HELP = (
    "digits or diabetes (built in), mnist:DIR, fashion-mnist:DIR, npz:FILE (x_train, y_train, x_test, "
    "y_test), csv:FILE or tsv:FILE (?target=COLUMN,...) or folder:DIR (train/ and test/ with one sub-folder per class)"
)
MODEL_HELP = (
    "a zoo name (mlp, mlp-1200, cnn, resnet, resnet8, resnet14, resnet20), path/to/file.py:factory or "
    "package.module:factory"
)


def _model_args(pairs: tuple[str, ...]) -> dict[str, Any]:
    from ..modelspec import parse_model_args

    return parse_model_args(pairs)


# Bounds shared by the stages' settings: what numpy and torch take as a seed, and sizes no run reaches.
MAX_SEED = 2**32 - 1
MAX_BATCH = 2**20
MAX_EPOCHS = 10**6
MAX_SAMPLES = 10**7
MAX_THREADS = 1024

MODEL_ARGS = Cli(flags=("--model-arg",), metavar="KEY=VALUE", repeat=True, parse=_model_args)


class TrainConfig(StageConfig):
    """Settings of a training run; ``compress distill`` extends them."""

    model: str = Field("resnet8", description=f"Model: {MODEL_HELP}.")
    model_args: Annotated[dict[str, Any], MODEL_ARGS] = Field(
        default_factory=dict, description="Keyword argument for the model factory (repeatable), e.g. hidden=1200,1200."
    )
    data: str = Field("digits", description=f"Dataset: {DATA_HELP}.")
    task: TaskName | None = Field(None, description=TASK_HELP)
    out: str = Field(description="Checkpoint to write (.pt); its manifest goes beside it (.pt.json).")
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS, description="Passes over the training split.")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH, description="Training samples per optimiser step.")
    lr: float = Field(3e-3, gt=0, le=10, description="Peak learning rate.")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum of --optimizer sgd.")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="Weight decay (decoupled for adamw).")
    schedule: Literal["onecycle", "cosine", "constant"] = Field(
        "onecycle", description="Learning-rate schedule, per step."
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Share of each label's probability spread evenly over all classes."
    )
    augment: Literal["none", "shift"] = Field(
        "none", description="shift: random shifts of up to 2 px (1 px on images under 21 px)."
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=0.9, description="Part of the training split held out for validation (0: none)."
    )
    split_seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the train/validation split.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of initialisation and shuffling.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="cuda trains with bf16 autocast.")
    resume: bool = Field(False, description="Continue an interrupted run of the same --out.")

    _out = output_suffix(".pt")


def train(config: TrainConfig) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data``; write the best-on-validation checkpoint and manifest.

    Returns the manifest (also written beside the checkpoint).
    """
    import torch

    from ..data import load_dataset
    from ..loop import Fit, LabelObjective, place
    from ..modelspec import build_model

    world = place(config.device)
    dataset = load_dataset(config.data, config.val_fraction, config.split_seed, task=config.task)
    torch.manual_seed(config.seed)
    model = build_model(config.model, dataset.in_shape, dataset.num_classes, config.model_args)
    objective = LabelObjective(config.label_smoothing, dataset.task)
    return Fit(config, "train", dataset, model, objective, world).run()


def fit_summary(manifest: dict[str, Any]) -> list[str]:
    """What train and distill say of the checkpoint they wrote."""
    from ..tasks import task_of

    metrics, task = manifest["metrics"], task_of(manifest)
    role = "model" if manifest["stage"] == "train" else "student"
    size = (
        f"{metrics['params']:,} params, {manifest['size_bytes'] / 1024:.1f} KiB, trained in "
        f"{metrics['train_time_s']:.1f}s"
    )
    if metrics.get("test_accuracy") is not None:
        measured = (
            f"test accuracy {100 * metrics['test_accuracy']:.2f}% ({metrics['test_errors']} errors of "
            f"{manifest['data']['sizes']['test']})"
        )
    else:
        measured = f"test {task.describe(metrics.get('test_metrics'))}"
    lines = [f"{role}: {measured}, {size}"]
    online = " (trained beside the student)" if metrics.get("teacher_kind") == "online" else ""
    if metrics.get("teacher_test_accuracy") is not None:
        lines.append(f"teacher{online}: test accuracy {100 * metrics['teacher_test_accuracy']:.2f}%")
    elif metrics.get("teacher_test_metrics"):
        lines.append(f"teacher{online}: test {task.describe(metrics['teacher_test_metrics'])}")
    return lines


STAGE = Stage(
    name="train",
    config=TrainConfig,
    run=train,
    summary=fit_summary,
    resumable=True,
    distributed=True,
    help="""Train a model (a teacher) on labelled data.

    Keeps the weights that did best on the validation split and writes them with a manifest.

    \b
    Example:
      compress train --model resnet8 --data mnist:data/mnist --epochs 10 --out runs/mnist/teacher.pt
    """,
)
