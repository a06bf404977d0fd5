"""The bench report's shape, as pydantic models: what ``write_report`` checks before writing and
``load_report`` checks after reading.

``report.schema.json`` next to this file is generated from :class:`Report`; after changing a model
here, regenerate it with ``python -m compress.measure.report_model``.

Validation is strict (no coercion: ``"7"`` is not a number, ``7.0`` is not a count) and numbers are
finite, so a report that passes is one compress itself could have written. Extra keys are refused
except in ``config`` (it echoes the ``compress bench`` options, which may grow without changing the
report's format) and ``machine.software`` (one entry per library version found).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from ..tasks import TASKS, TaskName, get_task
from ..typed_files import IsoDatetime

FORMAT = "compress-bench-report/1"
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
REGENERATE = "python -m compress.measure.report_model"

Provider = Literal["cpu", "cuda", "cuda-graph", "tensorrt"]
Verdict = Literal["baseline", "faster", "slower", "within noise"]
Count = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(ge=0)]
Milliseconds = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


def _ordered(interval: tuple[float, float]) -> tuple[float, float]:
    if interval[0] > interval[1]:
        raise PydanticCustomError("interval", "The low end is above the high end")
    return interval


Interval = Annotated[tuple[float, float], AfterValidator(_ordered)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ReportConfig(_Strict):
    """The compress bench options of the run; only these four are read back (by the plot)."""

    model_config = ConfigDict(extra="allow")

    models: list[str] = Field(min_length=1)
    providers: list[Provider] = Field(min_length=1)
    batch_sizes: list[Count] = Field(min_length=1)
    threads: list[Count] = Field(min_length=1)


class Cpu(_Strict):
    model: str
    architecture: str
    logical_cores: Count
    flags: list[str] = Field(description="Instruction-set flags that decide which kernels can run.")


class Gpu(_Strict):
    name: str
    driver: str
    memory: str = Field(description="Total memory as nvidia-smi gives it, e.g. '81559 MiB'.")
    compute_capability: str | None = Field(
        None, description="CUDA compute capability, e.g. '9.0'; absent where nvidia-smi does not give it."
    )


class Software(_Strict):
    """Versions; any further library found is listed too (e.g. numpy, torch)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str] = Field(init=False)

    os: str
    python: str
    onnxruntime: str
    onnx: str
    compress: str
    torch_cuda: str | None = Field(
        None, description="The CUDA version torch was built with; absent for a CPU build or without torch."
    )
    onnxruntime_cuda: str | None = Field(
        None, description="The CUDA version onnxruntime was built with (onnxruntime-gpu); absent for a CPU build."
    )


class Machine(_Strict):
    cpu: Cpu
    memory_bytes: Count | None = Field(description="Physical memory; null when unknown.")
    gpus: list[Gpu] = Field(description="Listed only when a GPU provider was measured.")
    software: Software


class Session(_Strict):
    graph_optimization: Literal["disable", "basic", "extended", "all"]
    execution_mode: Literal["sequential", "parallel"]
    inter_op_threads: Count
    io_binding: bool = Field(description="GPU inputs and outputs bound on the device.")
    include_copies: bool = Field(description="GPU timings include host-device copies.")


class Timing(_Strict):
    warmup: int = Field(ge=0)
    min_runs: Count
    min_seconds: Seconds
    rounds: Count
    confidence: float = Field(gt=0.5, lt=1, description="Confidence level of every interval.")
    method: str


class OutputDistance(_Strict):
    """How far one output moved from another's on the same inputs."""

    cosine: float = Field(description="Mean cosine similarity per sample.")
    relative_l2: Annotated[float, Field(ge=0)]
    max_abs_diff: Annotated[float, Field(ge=0)]


MetricName = Literal[tuple(dict.fromkeys(name for task in TASKS.values() for name in task.metrics))]


class ProviderResult(_Strict):
    """One model on one execution provider: start-up, the task's metrics on the test split, memory."""

    session_create_s: Seconds
    first_run_s: Seconds = Field(
        description="The first run of a fresh session; on cuda-graph, the runs that capture its graph (one that "
        "sizes the outputs, then the capture)."
    )
    top1: Fraction | None = Field(
        description="A classifier's top-1 accuracy; null when accuracy was not measured: no labels (see the "
        "model's accuracy_not_measured), or a first output that gives no classes; always null for other tasks."
    )
    top5: Fraction | None = Field(description="Null when the model has at most 5 classes, or no top-1.")
    metrics: dict[MetricName, float | None] | None = Field(
        None,
        description="Every metric of the model's task on the test split, in the targets' units, as "
        "compress.tasks gives them (classification: accuracy; multilabel: map, micro_f1, macro_f1; regression: "
        "rmse, mae, r2); a metric undefined on these targets is null; the whole is null when not measured (see "
        "the model's accuracy_not_measured), and absent in reports that do not say.",
    )
    test_samples: Count
    agreement_with_baseline: Fraction | None = Field(
        description="Classification: share of test samples with the baseline's top-1 class; multilabel: share "
        "of (sample, label) decisions (logit >= 0) the same as the baseline's; null for regression, when their "
        "inputs differ or the output gives no classes."
    )
    fidelity_to_baseline: OutputDistance | None = Field(
        None, description="The first output against the baseline's on the same inputs; null where they differ."
    )
    accuracy_delta_points: float | None = Field(
        ge=-100, le=100, description="top-1 minus the baseline's, in points; null when either is not measured."
    )
    metric_loss_points: float | None = Field(
        None,
        description="How much worse than the baseline's the task's primary metric is (positive: worse, negative: "
        "better): points lost for a fraction (accuracy, mAP: 100 x (baseline - model)), else the rise of the "
        "error in percent of the baseline's (RMSE: 100 x (model - baseline) / baseline); null when either is "
        "not measured, and absent in reports that do not say.",
    )
    placement: dict[str, Annotated[int, Field(ge=0)]] | None = Field(
        description="Nodes run by each onnxruntime provider; null on the CPU provider."
    )
    peak_memory_mb: Annotated[float, Field(ge=0)] | None = Field(
        description="Peak RSS of a fresh process running the model (MiB); null with --no-memory."
    )
    process_memory_mb: Annotated[float, Field(ge=0)] | None = Field(
        description="RSS of that process before loading the model (MiB); null with --no-memory."
    )


class SyntheticInput(_Strict):
    name: str
    type: str = Field(description="Declared type and shape, e.g. 'int32 [N, 2048]'.")
    batch_axis: Annotated[int, Field(ge=0)] | None
    values: str = Field(description="How the values were drawn, e.g. 'integers in [0, 255]'.")


class ModelEntry(_Strict):
    name: str = Field(min_length=1)
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: Count
    params: Annotated[int, Field(ge=0)] | None
    macs: Annotated[int, Field(ge=0)] | None
    stage: str | None = Field(description="The compress stage that wrote the model; null without a manifest.")
    baseline: bool
    task: TaskName | None = Field(
        None,
        description="What the model's outputs are, deciding its metrics: classification, multilabel or regression; "
        "absent in reports that do not say (classification).",
    )
    data: str = Field(description="The data spec the accuracy was measured on, or 'synthetic inputs'.")
    # optional fields: reports of earlier compress versions, of the same format, lack them
    preprocessing: Literal["manifest", "fit", "scale", "raw"] | None = Field(
        None,
        description="How its inputs were normalised: as its manifest records, or by --preprocessing (a model "
        "without a manifest); null for arrays fed as stored and synthetic inputs, and in reports that do not say.",
    )
    accuracy_not_measured: str | None = Field(
        None, description="Why, when no accuracy (the task's metrics) could be measured."
    )
    synthetic_inputs: list[SyntheticInput] | None = Field(
        None, description="Without data: each input and how its values were drawn."
    )
    providers: dict[Provider, ProviderResult] = Field(min_length=1)

    @model_validator(mode="after")
    def _metrics_of_its_task(self) -> ModelEntry:
        task = get_task(self.task)
        for provider, result in self.providers.items():
            if result.metrics is not None and set(result.metrics) != set(task.metrics):
                raise PydanticCustomError(
                    "metrics",
                    "providers.{provider}.metrics: a {task} model's metrics are {expected}",
                    {"provider": provider, "task": task.name, "expected": ", ".join(task.metrics)},
                )
            if task.name != "classification" and (result.top1 is not None or result.accuracy_delta_points is not None):
                raise PydanticCustomError(
                    "metrics",
                    "providers.{provider}: top1 and accuracy_delta_points are a classifier's; null for a {task} model",
                    {"provider": provider, "task": task.name},
                )
        return self


class Row(_Strict):
    """One model x provider x threads x batch size: latency per call, in milliseconds."""

    model: str
    provider: Provider
    threads: Count
    batch_size: Count
    runs: Count
    mean_ms: Milliseconds
    p50_ms: float = Field(gt=0)
    p90_ms: Milliseconds
    p99_ms: Milliseconds
    min_ms: Milliseconds
    max_ms: Milliseconds
    std_ms: Milliseconds
    cv: float = Field(ge=0, description="Coefficient of variation, std / mean.")
    throughput: float = Field(gt=0, description="Samples per second at the median latency.")
    p50_ci_ms: Interval = Field(description="Interval holding the median latency, low and high.")
    baseline_p50_ms: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description="The baseline's p50 in the rounds this model alternated with (the pairing its speed-up "
        "comes from); null for the baseline, whose own row pools all its pairings, and in reports that do not say.",
    )
    speedup: Annotated[float, Field(gt=0)] | None = Field(
        description="Median over rounds of baseline p50 / this p50; null for the baseline."
    )
    speedup_ci: Interval | None = Field(description="Interval of the speed-up; null for the baseline.")
    verdict: Verdict

    @model_validator(mode="after")
    def _consistent(self) -> Row:
        if (self.verdict == "baseline") != (self.speedup is None) or (self.speedup is None) != (
            self.speedup_ci is None
        ):
            raise PydanticCustomError(
                "verdict", "speedup and speedup_ci are null exactly when the verdict is 'baseline'"
            )
        if self.verdict == "baseline" and self.baseline_p50_ms is not None:
            raise PydanticCustomError("verdict", "baseline_p50_ms is null in the baseline's own rows")
        return self


class Report(_Strict):
    """A compress bench report (report.json)."""

    model_config = ConfigDict(title="compress bench report")

    format: Literal["compress-bench-report/1"]
    created: IsoDatetime = Field(
        json_schema_extra={"format": "date-time"}, description="When the report was made, ISO 8601."
    )
    config: ReportConfig
    machine: Machine
    session: Session
    timing: Timing
    baseline: str = Field(description="The name of the model the others are compared with.")
    models: list[ModelEntry] = Field(min_length=1)
    rows: list[Row] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> Report:
        """Names used elsewhere in the report are those of its models, and each is measured once."""

        def problem(message: str) -> PydanticCustomError:
            return PydanticCustomError("reference", message)  # no context: braces stay as they are

        models: dict[str, ModelEntry] = {}
        for i, m in enumerate(self.models):
            if m.name in models:
                raise problem(f"models[{i}].name: {m.name!r} is listed twice")
            models[m.name] = m
        if self.baseline not in models:
            raise problem(f"baseline: {self.baseline!r} is not one of the models")
        tasks = [get_task(m.task).name for m in self.models]
        for i, task in enumerate(tasks):
            if task != tasks[0]:
                raise problem(
                    f"models[{i}].task: {task!r}, but models[0] is {tasks[0]!r}; a report holds models of one task"
                )
        for i, m in enumerate(self.models):
            if m.baseline != (m.name == self.baseline):
                raise problem(
                    f"models[{i}].baseline: should be {str(not m.baseline).lower()} (the baseline is {self.baseline!r})"
                )
        seen = set()
        for i, r in enumerate(self.rows):
            if r.model not in models:
                raise problem(f"rows[{i}].model: {r.model!r} is not one of the models")
            if r.provider not in models[r.model].providers:
                raise problem(f"rows[{i}].provider: {r.provider!r} was not measured for {r.model!r}")
            key = (r.model, r.provider, r.batch_size, r.threads)
            if key in seen:
                raise problem(
                    f"rows[{i}]: a second row for {r.model!r} on {r.provider}, batch "
                    f"{r.batch_size}, {r.threads} thread(s)"
                )
            seen.add(key)
        return self


def report_schema() -> dict[str, Any]:
    """The JSON schema of report.json, as committed in ``report.schema.json``."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Report.model_json_schema()}


def schema_text() -> str:
    return json.dumps(report_schema(), indent=2, ensure_ascii=False) + "\n"


def validate_report_json(text: str | bytes) -> Report:
    """Parse and validate report.json's text; raises ``pydantic.ValidationError``."""
    return Report.model_validate_json(text)


def validate_report(report: dict[str, Any]) -> Report:
    """Validate a report dict exactly as it would be read back from report.json."""
    return validate_report_json(json.dumps(report))


if __name__ == "__main__":  # regenerate report.schema.json
    SCHEMA_PATH.write_text(schema_text())
    print(f"wrote {SCHEMA_PATH}")
