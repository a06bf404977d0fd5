"""The manifest: the typed record beside every artifact, and the only contract between stages.

``X.pt.json`` / ``X.onnx.json`` says what made ``X``, from what, how to feed it and what has
been measured of it. :class:`Manifest` is that record's schema (format ``compress-manifest/1``):
every manifest is checked against it when it is written (a failure is a bug in compress) and
when it is read (a failure is a damaged or hand-edited file: :func:`typed_files.problem_line` says
where, on one line). The JSON shape is the one compress has always written, so existing
artifacts stay readable; readers keep getting plain dicts (``artifacts.read_manifest``).

The common head and the records every stage shares (model, input/output spec, preprocessing,
data) are typed field by field; the sections whose keys vary by stage (metrics, source, onnx,
parity, quantization, pruning) type the figures they share and let the rest through.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .typed_files import IsoDatetime

MANIFEST_FORMAT = "compress-manifest/1"
MANIFEST_VERSION = 1
_FORMAT_RE = re.compile(r"compress-manifest/(\d+)")

Stage = Literal["train", "distill", "prune", "export", "quantize"]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
Dim = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Seconds = Annotated[float, Field(ge=0)]


class _Record(BaseModel):
    """A fixed-shape part of a manifest: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Open(_Record):
    """A part whose keys vary by stage: the shared ones are typed, others pass through."""

    model_config = ConfigDict(extra="allow")


class InputRecord(_Record):
    """A file a stage read, by path and hash (``artifacts.input_record``)."""

    role: str
    path: str
    sha256: Sha256


class ModelRecord(_Record):
    """What rebuilds the network: its spec and arguments, and its size."""

    spec: str
    args: dict[str, Any] = Field(default_factory=dict)
    params: Count | None = None
    macs: Count | None = None


class TensorSpec(_Record):
    """A model input or output: name, shape (``None`` for a dynamic axis) and dtype."""

    name: str = Field(min_length=1)
    shape: list[Dim | None] | None
    dtype: str


class InputSpec(TensorSpec):
    dynamic_axes: dict[str, str]


class PreprocessingRecord(_Record):
    """``(raw * scale - mean) / std`` per channel or feature (``Preprocessing.to_dict``)."""

    layout: Literal["NCHW", "NF"]
    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    mean: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=1)]
    std: Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]], Field(min_length=1)]

    @model_validator(mode="after")
    def _same_width(self) -> PreprocessingRecord:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} entries but std has {len(self.std)}")
        return self


class SplitSizes(_Record):
    train: Count
    val: Count
    test: Count


class DataRecord(_Record):
    """The data an artifact was made with (``Dataset.describe``)."""

    spec: str
    name: str
    fingerprint: str
    num_classes: Dim
    in_shape: list[Dim]
    val_fraction: Annotated[float, Field(ge=0, lt=1)]
    split_seed: int
    task: Literal["classification", "multilabel", "regression"] | None = None
    sizes: SplitSizes


class TaskRecord(_Record):
    """What the outputs mean (``tasks.Task.record``); a PyTorch regression network's outputs are standardised
    targets (``target_mean``/``target_std``), an exported model's are in the targets' units."""

    kind: Literal["classification", "multilabel", "regression"]
    metric: str
    threshold: Annotated[float, Field(gt=0, lt=1)] | None = None
    target_mean: list[Annotated[float, Field(allow_inf_nan=False)]] | None = None
    target_std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = None


class Metrics(_Open):
    """What was measured of the artifact; the figures several stages share are typed."""

    test_accuracy: Fraction | None = None
    test_metrics: dict[str, float | None] | None = None  # every metric of the task, on the test split
    val_metrics: dict[str, float | None] | None = None
    test_errors: Count | None = None
    val_accuracy: Fraction | None = None
    best_epoch: Count | None = None
    params: Count | None = None
    train_time_s: Seconds | None = None
    train_samples_per_s: Seconds | None = None
    history: list[dict[str, Any]] | None = None
    teacher_test_accuracy: Fraction | None = None
    teacher_kind: str | None = None
    teacher_outputs: Literal["logits", "probs"] | None = None  # probs: distilled from their log
    teacher_cache: str | None = None
    teacher_cache_s: Seconds | None = None
    accuracy_split: str | None = None
    float_accuracy: Fraction | None = None
    accuracy: Fraction | None = None
    accuracy_drop_points: float | None = None
    float_size_bytes: Count | None = None
    size_bytes: Count | None = None
    latency: dict[str, Any] | None = None
    warnings: list[str] | None = None
    recommendation: str | None = None


class SourceRecord(_Open):
    """Export: the checkpoint it came from."""

    stage: Stage | None = None
    artifact: str
    metrics: Metrics = Field(default_factory=Metrics)


class OnnxRecord(_Open):
    """Export and quantize: what the ONNX graph is."""

    opset: Dim
    nodes: Count
    op_types: dict[str, Count]


class ParityRecord(_Open):
    """Export: PyTorch against ONNX Runtime on real batches."""

    atol: Annotated[float, Field(ge=0)]
    rtol: Annotated[float, Field(ge=0)]
    samples: Count
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: Fraction | None  # classifiers only
    batches: list[dict[str, Any]]


class PruningSize(_Open):
    params: Count
    macs: Count | None = None
    test_accuracy: Fraction | None = None


class PruningRecord(_Open):
    """Prune: the model before and after, and every step between."""

    method: str
    before: PruningSize
    after: PruningSize
    steps: Annotated[list[dict[str, Any]], Field(min_length=1)]
    note: str | None = None


class TrainingRecord(_Record):
    """Train, distill and prune: where the training ran (``distributed.World.describe``)."""

    device: str
    world_size: Dim
    backend: str | None
    global_batch: Dim
    batch_per_process: Dim
    autocast: str | None


class Manifest(_Record):
    """A whole manifest. Keys every stage writes are required (nullable where a stage may not
    know them, e.g. quantizing an ONNX model that came without a manifest); the stage sections
    are present only for the stage that writes them."""

    format: Literal["compress-manifest/1"]
    artifact: str = Field(min_length=1)
    stage: Stage
    created: IsoDatetime
    versions: dict[str, str]
    config: dict[str, Any]
    inputs: list[InputRecord]
    model: ModelRecord | None
    input_spec: InputSpec | None
    output_spec: TensorSpec | None
    preprocessing: PreprocessingRecord | None
    labels: list[str] | None
    data: DataRecord | None
    task: TaskRecord | None = None  # None: a classifier (manifests from before tasks were recorded)
    source: SourceRecord | None = None
    onnx: OnnxRecord | None = None
    parity: ParityRecord | None = None
    quantization: dict[str, Any] | None = None
    pruning: PruningRecord | None = None
    training: TrainingRecord | None = None
    metrics: Metrics
    sha256: Sha256
    size_bytes: Count


def future_format(data: Any) -> str | None:
    """The format of a manifest from a newer compress (``compress-manifest/2`` …), else None."""
    fmt = data.get("format") if isinstance(data, dict) else None
    match = _FORMAT_RE.fullmatch(fmt) if isinstance(fmt, str) else None
    return fmt if match and int(match.group(1)) > MANIFEST_VERSION else None


def validate(data: Any) -> Manifest:
    """``data`` (parsed JSON) as a :class:`Manifest`; pydantic's ``ValidationError`` if it is not one."""
    return Manifest.model_validate(data)


def to_dict(manifest: Manifest) -> dict[str, Any]:
    """The plain JSON-able dict of a validated manifest, with exactly the keys it was given."""
    return manifest.model_dump(mode="json", exclude_unset=True)
