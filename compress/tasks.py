"""What a model's outputs mean, and how to train and judge them: single-label classification, multi-label
classification and regression.

A :class:`Task` holds what differs between them: the loss with the true targets, the loss with a teacher's
outputs, the metrics (computed by scikit-learn on all outputs at once) and which of them decides (the
*primary* metric: the best epoch, the fidelity budget, the report's quality axis).

* classification: targets are class indices, outputs one logit per class; cross-entropy, KL of the
  temperature-softened distributions; accuracy.
* multilabel: targets are 0/1 vectors, outputs one logit per label; binary cross-entropy, and with a teacher
  the binary cross-entropy to its per-label sigmoid probabilities at temperature T; micro and macro F1 at
  ``THRESHOLD`` and mean average precision (the primary).
* regression: targets are floats, one or several per sample; mean squared error to the targets and to the
  teacher's outputs; RMSE (the primary), MAE and R².

Regression networks learn standardised targets (``TargetScaling``: the training split's mean and standard
deviation, recorded in the checkpoint's manifest), so that targets of any scale train alike; metrics are
always in the targets' own units, and an exported ONNX model outputs those units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from .errors import CompressError

TaskName = Literal["classification", "multilabel", "regression"]
TASK_NAMES: tuple[str, ...] = get_args(TaskName)
TASK_HELP = (
    "What the targets are: classification (one class index per sample), multilabel (a 0/1 vector per sample) or "
    "regression (one or several floats per sample); default: inferred from the data (1-D whole numbers: "
    "classification, 2-D 0/1: multilabel, other floats: regression)."
)
THRESHOLD = 0.5  # multi-label: a label is predicted when its sigmoid probability reaches this
MIN_STD = 1e-12  # a target that never varies is standardised by 1, not by 0


@dataclass(frozen=True)
class TargetScaling:
    """Regression targets as networks learn them: ``(y - mean) / std`` per target."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, y: np.ndarray) -> TargetScaling:
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        std = y.std(axis=0) if len(y) else np.ones(y.shape[1])
        mean = y.mean(axis=0) if len(y) else np.zeros(y.shape[1])
        return cls(tuple(float(m) for m in mean), tuple(float(s) if s > MIN_STD else 1.0 for s in std))

    @classmethod
    def from_record(cls, record: dict | None) -> TargetScaling | None:
        if not record or record.get("target_mean") is None:
            return None
        return cls(tuple(record["target_mean"]), tuple(record["target_std"]))

    def standardise(self, y: np.ndarray) -> np.ndarray:
        return ((y - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def to_units(self, outputs):
        """Network outputs (numpy or torch) in the targets' units."""
        if isinstance(outputs, np.ndarray):
            return outputs * np.asarray(self.std, dtype=outputs.dtype) + np.asarray(self.mean, dtype=outputs.dtype)
        import torch

        std = torch.tensor(self.std, dtype=outputs.dtype, device=outputs.device)
        return outputs * std + torch.tensor(self.mean, dtype=outputs.dtype, device=outputs.device)


class Task:
    """One kind of target; see the module's description."""

    name: str
    metric: str  # the primary metric
    higher_is_better: bool
    metrics: tuple[str, ...]  # every metric ``measure`` gives, the primary first
    percent: frozenset[str]  # metrics that are fractions, shown in percent
    target_dtype: type

    def hard_loss(self, outputs, y, label_smoothing: float = 0.0):
        raise NotImplementedError

    def soft_loss(self, student, teacher, temperature: float, kind: str):
        raise NotImplementedError

    def distillation_loss(self, student, teacher, y, temperature: float, alpha: float, kind: str, label_smoothing=0.0):
        """``alpha * soft + (1 - alpha) * hard``: the teacher term mixed with the loss to the true targets."""
        soft = self.soft_loss(student, teacher, temperature, kind)
        if alpha == 1.0:
            return soft
        return alpha * soft + (1.0 - alpha) * self.hard_loss(student, y, label_smoothing)

    def measure(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Every metric of ``outputs`` (N, K), in target units, against the targets ``y``."""
        raise NotImplementedError

    def score(self, metrics: dict[str, Any]) -> float:
        """The primary metric as a figure where larger is better (NaN when not measured)."""
        value = metrics.get(self.metric)
        if value is None:
            return math.nan
        return value if self.higher_is_better else -value

    def loss_points(self, reference: dict[str, Any], candidate: dict[str, Any]) -> float:
        """How much worse ``candidate`` is than ``reference``, in points: for a fraction, percentage points
        lost; else (an error such as RMSE) its rise in percent of the reference's."""
        ref, cand = reference[self.metric], candidate[self.metric]
        if self.metric in self.percent:
            return 100 * (ref - cand) if self.higher_is_better else 100 * (cand - ref)
        if ref == 0:
            return 0.0 if cand == 0 else math.inf
        return 100 * (cand - ref) / abs(ref) if not self.higher_is_better else 100 * (ref - cand) / abs(ref)

    @property
    def loss_unit(self) -> str:
        """What ``loss_points`` counts, for messages."""
        if self.metric in self.percent:
            return f"{self.metric_title(self.metric)} points lost"
        return f"{self.metric_title(self.metric)} rise in percent"

    def format(self, name: str, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return f"{100 * value:.2f}%" if name in self.percent else f"{value:.4g}"

    def describe(self, metrics: dict[str, Any] | None) -> str:
        """``metrics`` on one line, e.g. ``mAP 91.20%, micro-F1 88.10%, macro-F1 87.50%``."""
        if not metrics:
            return "not measured"
        return ", ".join(f"{self.metric_title(n)} {self.format(n, metrics.get(n))}" for n in self.metrics)

    @staticmethod
    def metric_title(name: str) -> str:
        return METRIC_TITLES.get(name, name)

    def record(self, scaling: TargetScaling | None = None) -> dict[str, Any]:
        """The manifest's ``task`` record; ``scaling`` for a PyTorch regression network's standardised outputs."""
        found: dict[str, Any] = {"kind": self.name, "metric": self.metric}
        if self.name == "multilabel":
            found["threshold"] = THRESHOLD
        if scaling is not None:
            found["target_mean"], found["target_std"] = list(scaling.mean), list(scaling.std)
        return found


METRIC_TITLES = {
    "accuracy": "accuracy",
    "map": "mAP",
    "micro_f1": "micro-F1",
    "macro_f1": "macro-F1",
    "rmse": "RMSE",
    "mae": "MAE",
    "r2": "R²",
}


class Classification(Task):
    name, metric, higher_is_better = "classification", "accuracy", True
    metrics = ("accuracy",)
    percent = frozenset({"accuracy"})
    target_dtype = np.int64

    def hard_loss(self, outputs, y, label_smoothing=0.0):
        import torch.nn.functional as F

        return F.cross_entropy(outputs.float(), y, label_smoothing=label_smoothing)

    def soft_loss(self, student, teacher, temperature, kind):
        from .distillation.losses import soft_loss

        return soft_loss(student, teacher, temperature, kind)

    def measure(self, outputs, y):
        return {"accuracy": float((outputs.argmax(1) == y).mean()) if len(y) else math.nan}


class MultiLabel(Task):
    name, metric, higher_is_better = "multilabel", "map", True
    metrics = ("map", "micro_f1", "macro_f1")
    percent = frozenset(metrics)
    target_dtype = np.float32

    def hard_loss(self, outputs, y, label_smoothing=0.0):
        import torch.nn.functional as F

        if label_smoothing:
            y = y * (1 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(outputs.float(), y.float())

    def soft_loss(self, student, teacher, temperature, kind):
        from .distillation.losses import logit_mse, soft_sigmoid_bce

        return logit_mse(student, teacher) if kind == "mse" else soft_sigmoid_bce(student, teacher, temperature)

    def measure(self, outputs, y):
        from sklearn.metrics import average_precision_score, f1_score

        if not len(y):
            return dict.fromkeys(self.metrics, math.nan)
        truth = y >= 0.5
        predicted = outputs >= _logit(THRESHOLD)  # outputs are logits: sigmoid(z) >= t  <=>  z >= logit(t)
        # average precision is undefined for a label without positives: the mean is over those that have some
        present = truth.any(axis=0)
        mean_ap = (
            float(average_precision_score(truth[:, present], outputs[:, present], average="macro"))
            if present.any()
            else math.nan
        )
        return {
            "map": mean_ap,
            "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        }


class Regression(Task):
    name, metric, higher_is_better = "regression", "rmse", False
    metrics = ("rmse", "mae", "r2")
    percent = frozenset()
    target_dtype = np.float32

    def hard_loss(self, outputs, y, label_smoothing=0.0):
        import torch.nn.functional as F

        return F.mse_loss(outputs.float(), y.float())

    def soft_loss(self, student, teacher, temperature, kind):
        from .distillation.losses import logit_mse

        return logit_mse(student, teacher)  # a regressor's outputs are matched as they are: no temperature

    def measure(self, outputs, y):
        from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

        if not len(y):
            return dict.fromkeys(self.metrics, math.nan)
        outputs, y = outputs.astype(np.float64), y.astype(np.float64)
        return {
            "rmse": float(math.sqrt(mean_squared_error(y, outputs))),
            "mae": float(mean_absolute_error(y, outputs)),
            "r2": float(r2_score(y, outputs)) if len(y) > 1 else math.nan,
        }


TASKS: dict[str, Task] = {task.name: task for task in (Classification(), MultiLabel(), Regression())}
CLASSIFICATION = TASKS["classification"]


def get_task(name: str | None) -> Task:
    """The task called ``name``; classification for ``None`` (manifests written before tasks were recorded)."""
    if name is None:
        return CLASSIFICATION
    if name not in TASKS:
        raise CompressError(f"unknown task {name!r}; use one of {', '.join(TASK_NAMES)}")
    return TASKS[name]


def task_of(manifest: dict | None) -> Task:
    """The task a manifest records (classification for one that records none)."""
    return get_task(((manifest or {}).get("task") or {}).get("kind"))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def infer_task(y: np.ndarray, requested: str | None, where: str) -> Task:
    """The task of targets ``y`` (a whole split's): ``requested`` (``--task``) when they fit it, else inferred.

    1-D whole numbers are class indices, 2-D 0/1 values are label sets, other numbers are regression
    targets. A CompressError (naming ``where``) when the targets cannot be what was asked for.
    """
    if requested is not None:
        get_task(requested)
    if y.dtype == np.bool_:
        y = y.astype(np.uint8)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise CompressError(f"{where}: targets of dtype {y.dtype} are not numbers; store class indices or floats")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise CompressError(f"{where}: the targets hold NaN or infinite values; clean or drop those samples")
    if y.ndim not in (1, 2):
        raise CompressError(
            f"{where}: targets of shape {list(y.shape)}; expected (N,) class indices or floats, or (N, K) "
            "0/1 label sets or floats"
        )
    whole = bool((y == np.round(y)).all()) if np.issubdtype(y.dtype, np.floating) else True
    binary = bool(np.isin(y, (0, 1)).all())
    if requested == "regression":
        return TASKS["regression"]
    if y.ndim == 1:
        if requested == "multilabel":
            raise CompressError(
                f"{where}: --task multilabel needs one 0/1 vector per sample (targets of shape (N, K)), but the "
                "targets are one value per sample; give 2-D targets, or use --task classification or regression"
            )
        if not whole:
            if requested == "classification":
                raise CompressError(
                    f"{where}: the targets hold non-integer values (e.g. {_first_fraction(y)}), which are not "
                    "class indices 0..K-1; use --task regression, or fix the labels"
                )
            return TASKS["regression"]
        return CLASSIFICATION
    if requested == "classification":
        raise CompressError(
            f"{where}: --task classification needs one class index per sample, but the targets have shape "
            f"{list(y.shape)}; use --task multilabel (0/1 label sets) or regression"
        )
    if requested == "multilabel" and not binary:
        raise CompressError(
            f"{where}: --task multilabel needs 0/1 targets, but they hold other values (e.g. "
            f"{_first_other(y)}); use --task regression, or fix the targets"
        )
    return TASKS["multilabel"] if binary else TASKS["regression"]


def _first_fraction(y: np.ndarray) -> float:
    return float(y[y != np.round(y)].reshape(-1)[0])


def _first_other(y: np.ndarray) -> float:
    return float(y[~np.isin(y, (0, 1))].reshape(-1)[0])
