"""The distillation objective: soft targets from a teacher mixed with the labels, FitNets hints
through learned projections, and the teacher's outputs cached across epochs."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..artifacts import cached_sha256
from ..data import Dataset, Preprocessing, load_dataset
from ..distributed import World, unwrap
from ..errors import CompressError, foreign_errors
from ..loop import evaluate
from ..modelspec import count_macs, count_params
from ..tasks import TargetScaling, get_task
from .adversarial import evaluating, input_bounds, robustness, training_attack
from .losses import hint_loss
from .teachers import Teacher, TeacherOutputs, capture_outputs, load_teacher, looks_like_probabilities

if TYPE_CHECKING:
    from ..stages.distill import DistillConfig

logger = logging.getLogger(__name__)
log = logger.info
# Training samples the teacher is first run on: to check its outputs, and to tell probabilities from logits.
PROBE_SAMPLES = 64


def make_projection(student_feature: torch.Tensor, teacher_feature: torch.Tensor, hint: str) -> torch.nn.Module:
    """A learned map from the student's feature shape to the teacher's (FitNets regressor)."""
    s, t = student_feature.shape[1:], teacher_feature.shape[1:]
    if len(t) == 3 and len(s) == 3:
        return torch.nn.Conv2d(s[0], t[0], kernel_size=1)
    if len(t) == 1:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(s).prod()), t[0]))
    raise CompressError(
        f"hint {hint}: cannot map a student feature of shape {list(s)} onto a teacher "
        f"feature of shape {list(t)}; pair conv maps (C,H,W) with conv maps, or pick a "
        "vector-shaped teacher layer"
    )


def project(projection: torch.nn.Module, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    projected = projection(student_feature)
    if projected.dim() == 4 and projected.shape[2:] != teacher_feature.shape[2:]:
        projected = F.interpolate(projected, size=teacher_feature.shape[2:], mode="bilinear", align_corners=False)
    return projected


class DistillObjective:
    """Soft targets from the teacher, mixed with the labels, plus optional FitNets hints."""

    def __init__(
        self, config: DistillConfig, teacher: Teacher, student: torch.nn.Module, dataset: Dataset, world: World
    ):
        self.config, self.teacher, self.dataset, self.world = config, teacher, dataset, world
        self.device = world.device
        self.hints = config.hint_pairs
        self.teacher_layers = tuple(t for t, _ in self.hints)
        self.student_layers = tuple(s for _, s in self.hints)
        self.projections = torch.nn.ModuleList()
        if self.hints:
            self._build_projections(student)
        self.projections.to(self.device)
        self.cache: TeacherOutputs | None = None
        self.cache_mode = "off"
        self.cache_seconds = 0.0
        self.teacher_test_metrics: dict[str, Any] | None = None
        # the network Fit trains (its best weights are loaded when metrics() measures its robustness)
        self.student = student
        self.attack = training_attack(config)  # --adversarial: None, FGSM or PGD
        self.bounds = input_bounds(dataset.preprocessing, self.device)

    def _build_projections(self, student: torch.nn.Module) -> None:
        if not self.teacher.supports_hints:
            raise CompressError(
                f"--hint needs a teacher whose layers can be reached by name; "
                f"a {self.teacher.kind} teacher gives logits only. Use a compress "
                "checkpoint (.pt) as the teacher, or drop --hint"
            )
        probe = torch.from_numpy(self.dataset.x_train[:2]).to(self.device)
        _, teacher_features = self.teacher(probe, self.teacher_layers)
        student_features: dict[str, torch.Tensor] = {}
        was_training = student.training
        student.eval()
        with torch.no_grad(), capture_outputs(student, self.student_layers, student_features):
            student(probe)
        student.train(was_training)
        for teacher_layer, student_layer in self.hints:
            self.projections.append(
                make_projection(
                    student_features[student_layer], teacher_features[teacher_layer], f"{teacher_layer}:{student_layer}"
                )
            )

    def prepare(self, x_train: torch.Tensor) -> None:
        x_test = torch.from_numpy(self.dataset.x_test)
        self.teacher_test_metrics = evaluate(
            lambda x: self.teacher(x)[0], x_test, self.dataset.y_test, self.dataset, self.world, self.device
        )
        # random augmentation changes the inputs every epoch: nothing to reuse
        mode = "off" if self.config.augment != "none" else self.config.teacher_cache
        if mode == "disk" and self.world.distributed:
            raise CompressError(
                "--teacher-cache disk is for one process; across processes each keeps the teacher's outputs in "
                "memory: use --teacher-cache memory, auto or off"
            )
        if mode == "off":
            return
        started = time.perf_counter()
        self.cache = TeacherOutputs.compute(
            self.teacher,
            x_train,
            self.teacher_layers,
            mode,
            cache_dir=self._cache_dir(),
            cache_key=self._cache_key,
            batch_size=self.config.batch_size,
            world=self.world,
        )
        if self.cache is None:
            log("teacher outputs are too large to keep in each process's memory: the teacher runs every step")
            return
        self.cache_mode = "disk" if self.cache.cache_dir else "memory"
        self.cache_seconds = time.perf_counter() - started
        log(f"teacher outputs cached in {self.cache_mode} ({self.cache_seconds:.1f}s)")

    def _cache_dir(self) -> Path:
        out = Path(self.config.out)
        return out.with_name(f".{out.stem}.teacher-cache")

    def _cache_key(self) -> str:
        """Names a disk cache by everything its content depends on."""
        facts = {
            "teacher": cached_sha256(self.teacher.path),
            "data": self.dataset.fingerprint,
            "split": [self.dataset.val_fraction, self.dataset.split_seed],
            "preprocessing": self.dataset.preprocessing.to_dict(),
            "layers": self.teacher_layers,
            "outputs": self.teacher.outputs,
            "task": self.dataset.task_record(),
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]

    def loss(self, model, x, y, indices, augmented):
        if self.cache is not None and not augmented:
            teacher_logits, teacher_features = self.cache.lookup(indices, x.device)
        else:
            teacher_logits, teacher_features = self.teacher(x, self.teacher_layers)
        student_features: dict[str, torch.Tensor] = {}
        with capture_outputs(unwrap(model), self.student_layers, student_features):
            logits = model(x)  # through the DistributedDataParallel wrapper, if any: it syncs the gradients
        config = self.config
        loss = self.dataset.task.distillation_loss(
            logits, teacher_logits, y, config.temperature, config.alpha, config.loss, config.label_smoothing
        )
        for projection, (teacher_layer, student_layer) in zip(self.projections, self.hints):
            projected = project(projection, student_features[student_layer], teacher_features[teacher_layer])
            loss = loss + self.config.beta * hint_loss(projected, teacher_features[teacher_layer])
        if self.attack is not None:
            loss = loss + self.config.adv_weight * self._adversarial_term(model, x, teacher_logits)
        return loss, logits

    def _adversarial_term(self, model, x: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The soft term on ``x`` perturbed within ε to maximise it (Goldblum et al. 2020): the attack runs on the
        network itself in eval mode (no batch-norm statistics updated, no gradient sync), the term through
        ``model`` in training mode like the clean one."""

        def divergence(logits: torch.Tensor) -> torch.Tensor:
            return self.dataset.task.soft_loss(logits, teacher_logits, self.config.temperature, self.config.loss)

        with evaluating(unwrap(model)) as student:
            x_adv = self.attack(student, x, divergence, self.bounds)
        return divergence(model(x_adv))

    def parameters(self):
        return list(self.projections.parameters())

    def state_dict(self):
        return {"projections": self.projections.state_dict()}

    def load_state_dict(self, state):
        self.projections.load_state_dict(state["projections"])

    def end_epoch(self, record, x_val, y_val) -> None:
        pass

    def inputs(self) -> list[tuple[str, Path]]:
        return [("teacher", self.teacher.path)]

    def metrics(self) -> dict[str, Any]:
        teacher = {"teacher_test_metrics": self.teacher_test_metrics}
        if self.dataset.task.name == "classification":
            teacher["teacher_test_accuracy"] = self.teacher_test_metrics["accuracy"]
        return {
            **teacher,
            "teacher_kind": self.teacher.kind,
            "teacher_outputs": self.teacher.outputs,
            "teacher_cache": self.cache_mode,
            "teacher_cache_s": round(self.cache_seconds, 3),
            **self._robustness(),
        }

    def _robustness(self) -> dict[str, Any]:
        """``robustness``: test accuracy clean and under each ``--eval-attack``, when asked for."""
        if not self.config.eval_attack:
            return {}
        started = time.perf_counter()
        records = robustness(self.config, self.student, self.teacher, self.dataset, self.world)
        log(f"robustness measured in {time.perf_counter() - started:.1f}s")
        return {"robustness": records}

    def finish(self) -> None:
        if self.cache is not None:
            self.cache.remove_files()


def load_matching_teacher(config: DistillConfig, device: torch.device) -> tuple[Teacher, Dataset]:
    """The teacher and the data, checked against each other; whether the teacher outputs
    probabilities is settled here (``config.teacher_outputs``).

    A teacher with a manifest brings its preprocessing, which the student then shares, so
    both see exactly the inputs the teacher was trained on; for one without, the user says
    (``config.preprocessing``).
    """
    teacher = load_teacher(config.teacher, device, (config.teacher_model, config.model), config.trust_model_code)
    recorded = (teacher.manifest or {}).get("task") if teacher.kind != "onnx" else None
    # a compress checkpoint's regression outputs are standardised targets: the student learns the same ones
    dataset = load_dataset(
        config.data,
        config.val_fraction,
        config.split_seed,
        _teacher_preprocessing(teacher, config),
        task=config.task or (recorded or {}).get("kind"),
        target_scaling=TargetScaling.from_record(recorded),
    )
    _check_task(teacher, dataset, config)
    if teacher.in_shape is not None and tuple(teacher.in_shape) != tuple(dataset.in_shape):
        raise CompressError(
            f"teacher {teacher.path} takes inputs of shape {list(teacher.in_shape)} but "
            f"{config.data} gives {list(dataset.in_shape)}; distil on the data the "
            "teacher was trained on"
        )
    labels = (teacher.manifest or {}).get("labels")
    what = {"classification": "classes", "multilabel": "labels", "regression": "targets"}[dataset.task.name]
    if labels is not None and list(labels) != list(dataset.labels):
        raise CompressError(
            f"teacher {teacher.path} knows {len(labels)} {what} {labels[:5]}... but "
            f"{config.data} has {dataset.num_classes} {dataset.labels[:5]}...; "
            "use the teacher's dataset"
        )
    probe = torch.from_numpy(dataset.x_train[:PROBE_SAMPLES]).to(device)
    # a foreign model may fail in any way on the wrong input
    with foreign_errors(
        f"teacher {teacher.path} fails on inputs of shape {list(dataset.in_shape)}", "check --data", limit=160
    ):
        outputs, _ = teacher(probe)
    if outputs.dim() != 2 or outputs.shape[1] != dataset.num_classes:
        one = {"classes": "one logit per class", "labels": "one logit per label", "targets": "one value per target"}
        raise CompressError(
            f"teacher {teacher.path} outputs shape {list(outputs.shape[1:])} per sample but "
            f"{config.data} has {dataset.num_classes} {what}; it must output {one[what]}"
        )
    if dataset.task.name == "classification":
        teacher.outputs = _teacher_outputs(teacher, outputs, config)
    elif config.teacher_outputs == "probs":
        if dataset.task.name == "regression":
            raise CompressError("--teacher-outputs probs is for classifiers; a regression teacher outputs its targets")
        teacher.outputs, teacher.multilabel = "probs", True
        log(f"teacher {teacher.path} outputs per-label probabilities: distilling from their log-odds, as logits")
    return teacher, dataset


def _check_task(teacher: Teacher, dataset: Dataset, config: DistillConfig) -> None:
    """The teacher was trained for the data's task; regression teachers without a recorded standardisation (ONNX,
    TorchScript) output the targets' units, which are standardised as the student learns them."""
    recorded = (teacher.manifest or {}).get("task")
    if recorded is not None and get_task(recorded.get("kind")) is not dataset.task:
        raise CompressError(
            f"teacher {teacher.path} was trained for {recorded.get('kind')} but {config.data} is read as "
            f"{dataset.task.name}; distil on the teacher's task (--task {recorded.get('kind')})"
        )
    if dataset.task.name == "regression" and (
        teacher.kind != "checkpoint" or TargetScaling.from_record(recorded) is None
    ):
        teacher.standardise = dataset.target_scaling
    if dataset.task.name != "classification" and (config.adversarial != "none" or config.eval_attack):
        raise CompressError(
            f"adversarial distillation and --eval-attack are for classifiers; {config.data} is {dataset.task.name}: "
            "drop --adversarial and --eval-attack"
        )


def _teacher_preprocessing(teacher: Teacher, config: DistillConfig) -> Preprocessing | str:
    """The teacher's manifest's preprocessing, else the one the user names: never a guess."""
    if teacher.preprocessing:
        if config.preprocessing is not None:
            log(
                f"teacher {teacher.path} has a manifest, whose preprocessing is used: "
                f"--preprocessing {config.preprocessing} is ignored (the manifest wins)"
            )
        return Preprocessing.from_dict(teacher.preprocessing)
    if config.preprocessing is None:
        lacks = "no manifest" if teacher.manifest is None else "a manifest that records no preprocessing"
        raise CompressError(
            f"teacher {teacher.path} has {lacks}, so how its inputs were normalised is unknown; "
            "pass --preprocessing fit (mean/std of the training split, as compress train does), "
            "scale (pixels to [0, 1]) or raw"
        )
    return config.preprocessing


def _teacher_outputs(teacher: Teacher, outputs: torch.Tensor, config: DistillConfig) -> str:
    """What the teacher outputs, "logits" or "probs": ``config.teacher_outputs``, auto settled on
    ``outputs`` (the teacher's outputs on the probe batch)."""
    probabilities = looks_like_probabilities(outputs)
    seen = f"its outputs on {len(outputs)} training samples are non-negative rows summing to 1"
    if config.teacher_outputs == "probs" and (outputs < 0).any():
        raise CompressError(
            f"--teacher-outputs probs, but teacher {teacher.path} outputs negative values "
            f"(down to {outputs.min().item():.3g}), which are not probabilities; use --teacher-outputs logits or auto"
        )
    if config.teacher_outputs == "logits":
        if probabilities:
            logger.warning(
                f"teacher {teacher.path} looks like it outputs probabilities ({seen}), but --teacher-outputs "
                "logits uses them as logits: the soft targets will be nearly uniform; use --teacher-outputs auto"
            )
        return "logits"
    if config.teacher_outputs == "auto" and not probabilities:
        return "logits"
    why = seen if config.teacher_outputs == "auto" else "--teacher-outputs probs"
    log(f"teacher {teacher.path} outputs probabilities ({why}): distilling from their log, as logits")
    return "probs"


def warn_if_student_larger(teacher: Teacher, student: torch.nn.Module, in_shape: tuple[int, ...]) -> None:
    """A warning when the student has more parameters (or MACs, when both are known) than its teacher."""
    teacher_params, teacher_macs = teacher.size()
    student_params = count_params(student)
    student_macs = count_macs(student, in_shape) if teacher_macs is not None else None
    more_macs = student_macs is not None and student_macs > teacher_macs
    if not more_macs and (teacher_params is None or student_params <= teacher_params):
        return

    def size(params: int | None, macs: int | None) -> str:
        counted = "unknown params" if params is None else f"{params:,} params"
        return counted if macs is None else f"{counted}, {macs:,} MACs"

    logger.warning(
        f"the student ({size(student_params, student_macs)}) is larger than teacher {teacher.path} "
        f"({size(teacher_params, teacher_macs)}); choose a smaller --model or --model-arg for a smaller model"
    )
