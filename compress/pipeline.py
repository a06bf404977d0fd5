"""``compress run RECIPE.toml``: the stages chained in one run folder, skipping what is up to date.

The recipe (``recipe.py``) gives each stage's settings; this module gives each stage its files:

    runs/NAME/teacher.pt ─export─▶ teacher.onnx ──────────────────────────────┐
        └─distill─▶ student.pt ─export─▶ student.onnx ─quantize─▶ student.int8.onnx ─bench─▶ report/
                        └─prune─▶ student.pruned.pt ─export─▶ student.pruned.onnx (then quantized)

(``student.fp16.onnx`` instead of ``student.int8.onnx`` when the recipe's quantize table says mode = "fp16".)

``run.json`` in the run folder records every stage: its settings, the sha256 of every file it
read, the sha256 of every file it wrote, its status and times. A stage is skipped when its
settings and inputs are what they were when it last finished and its outputs are still the
files it wrote. A stage interrupted mid-way is picked up again: training and distillation
resume from their last finished epoch; the others start over (every stage writes its outputs
atomically, so nothing half-written is ever taken for done). ``run.lock`` keeps a second run
out of a folder in use.

What runs is the stage registry's (``compress.stages``): each step is a stage with its config.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .artifacts import cached_sha256, resume_path, write_json
from .errors import CompressError, first_line
from .measure.report import load_report
from .recipe import Recipe, data_files
from .stages import STAGES, Stage
from .stages.base import paths_of
from .typed_files import problem_line

RUN_FORMAT = "compress-run/1"
log = logging.getLogger(__name__).info


@dataclass
class Step:
    """One stage of the run: which stage, under which name, with which config and files."""

    name: str  # what --force takes: export-teacher, quantize, ...
    stage: Stage  # the registry's record of the stage it runs
    config: Any  # the stage's config, paths filled in
    data: str | None = None  # a data source it reads (its files hashed)

    @property
    def inputs(self) -> dict[str, Path]:
        """role -> a file it reads (hashed): the stage's ``reads`` fields."""
        return paths_of(self.config, self.stage.files(self.config)[0])

    @property
    def outputs(self) -> list[Path]:
        """What it writes (hashed once it finished); a folder by the report in it."""
        writes = self.stage.files(self.config)[1]
        paths = [Path(getattr(self.config, name)) for name in writes]
        return [path / "report.json" if name == "report" else path for name, path in zip(writes, paths)]

    def settings(self) -> dict[str, Any]:
        """The config that decides what the stage computes (its file paths are hashed instead)."""
        skip = {*self.stage.reads, *self.stage.writes, "resume"}
        return self.config.model_dump(mode="json", exclude=skip & set(type(self.config).model_fields))


@dataclass
class Decision:
    step: Step
    run: bool
    reason: str
    resume: bool = False


@dataclass
class Plan:
    recipe: Recipe
    steps: list[Step]
    variants: list[tuple[str, Path]] = field(default_factory=list)  # (label, onnx) benched, teacher first

    @property
    def log_path(self) -> Path:
        return self.recipe.out / "run.json"

    @property
    def report_dir(self) -> Path:
        return self.recipe.out / "report"


def build_plan(recipe: Recipe) -> Plan:
    """The steps of ``recipe``, in order, each with its config (checked) and files."""
    out, data = recipe.out, recipe.data
    steps: list[Step] = []

    def add(name: str, table: str, reads_data: bool = False, **paths: Any) -> None:
        steps.append(
            Step(name, STAGES[name.split("-")[0]], recipe.build(table, **paths), data=data if reads_data else None)
        )

    # the model code of each checkpoint: named in the recipe, so the stages that rebuild it may run it
    if recipe.teacher_path is None:
        teacher = out / "teacher.pt"
        add("train", "teacher", reads_data=True, out=str(teacher), data=data)
        teacher_code = {"model": steps[-1].config.model, "trust_model_code": False}
    else:
        teacher = recipe.teacher_path
        teacher_code = recipe.teacher_code
    student = out / "student.pt"
    add(
        "distill",
        "student",
        reads_data=True,
        out=str(student),
        data=data,
        teacher=str(teacher),
        teacher_model=teacher_code["model"],
        trust_model_code=teacher_code["trust_model_code"],
        preprocessing=recipe.teacher_preprocessing,
    )
    student_code = {"model": steps[-1].config.model}
    if teacher.suffix == ".onnx":
        teacher_onnx = teacher
    else:
        teacher_onnx = out / "teacher.onnx"
        add("export-teacher", "export", checkpoint=str(teacher), out=str(teacher_onnx), **teacher_code)
    student_onnx = out / "student.onnx"
    add("export-student", "export", checkpoint=str(student), out=str(student_onnx), **student_code)
    variants = [("teacher", teacher_onnx), ("student", student_onnx)]
    final = student_onnx
    if recipe.has("prune"):
        pruned = out / "student.pruned.pt"
        add(
            "prune",
            "prune",
            checkpoint=str(student),
            out=str(pruned),
            teacher=str(teacher),
            teacher_model=teacher_code["model"],
            trust_model_code=teacher_code["trust_model_code"],
            preprocessing=recipe.teacher_preprocessing,
            **student_code,
        )
        final = out / "student.pruned.onnx"
        add("export-pruned", "export", checkpoint=str(pruned), out=str(final), **student_code)
        variants.append(("student pruned", final))
    if recipe.has("quantize"):
        precision = "fp16" if recipe.tables["quantize"].get("mode") == "fp16" else "int8"
        quantized = final.with_name(f"{final.stem}.{precision}.onnx")
        add("quantize", "quantize", model=str(final), out=str(quantized))
        variants.append((f"{'student pruned' if final != student_onnx else 'student'} {precision}", quantized))
    models = [str(path) for _, path in variants]
    # a teacher without a manifest names neither its data nor its preprocessing: the recipe does
    foreign = {"data": data, "preprocessing": recipe.teacher_preprocessing} if recipe.teacher_preprocessing else {}
    add(
        "bench",
        "bench",
        reads_data=bool(foreign),
        models=models,
        report=str(out / "report"),
        baseline=str(teacher_onnx),
        **foreign,
    )
    return Plan(recipe, steps, variants)


# -- deciding what runs -------------------------------------------------------------------------


class Hashes:
    """sha256 of files, computed once per run (a file is hashed again only if it changed on disk)."""

    def file(self, path: Path) -> str | None:
        return cached_sha256(path) if path.is_file() else None

    def data(self, spec: str) -> str:
        """One digest over the files of a data source (its name alone for the built-in digits)."""
        digest = hashlib.sha256(spec.encode())
        for path in data_files(spec):
            digest.update(f"{path.name}:{self.file(path)}".encode())
        return digest.hexdigest()

    def inputs(self, step: Step) -> dict[str, str | None]:
        found = {role: self.file(path) for role, path in step.inputs.items()}
        if step.data:
            found["data"] = self.data(step.data)
        return found


def read_log(plan: Plan) -> dict[str, Any]:
    path = plan.log_path
    if not path.exists():
        return {"format": RUN_FORMAT, "stages": {}}
    if path.is_dir():
        raise CompressError(f"cannot keep the run log {path}: a folder is in the way; remove it or choose another out")
    try:
        log = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CompressError(f"{path} is damaged (not JSON); delete it to run every stage again") from None
    except OSError as exc:
        raise CompressError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    if not isinstance(log, dict) or log.get("format") != RUN_FORMAT:
        raise CompressError(f"{path} is not a compress run log; choose another out folder for this recipe")
    try:
        RunLog.model_validate(log)
    except ValidationError as exc:
        raise CompressError(f"{path}: {problem_line(exc)}; delete it to run every stage again") from None
    return log


class _StageRecord(BaseModel):
    """What run.json keeps of a stage, as far as deciding whether it runs again reads it."""

    model_config = ConfigDict(extra="allow", strict=True)

    status: Literal["running", "done", "failed", "interrupted"]
    settings: dict[str, Any] = {}
    inputs: dict[str, str | None] = {}
    outputs: dict[str, str | None] = {}


class RunLog(BaseModel):
    """run.json: the stages of the run folder, by name (the rest is for people to read)."""

    model_config = ConfigDict(extra="allow", strict=True)

    format: str
    stages: dict[str, _StageRecord]


def decide(step: Step, record: dict | None, forced: bool, rebuilt: set[Path], hashes: Hashes) -> Decision:
    """Whether ``step`` runs, and why; ``rebuilt``: outputs of earlier steps that will run first."""

    resume = (
        step.stage.resumable
        and record is not None
        and record.get("status") != "done"
        and resume_path(step.config.out).exists()
    )
    if forced:
        return Decision(step, True, "forced (--force)")
    pending = list(dict.fromkeys(p.name for p in step.inputs.values() if p in rebuilt))
    if pending:
        return Decision(step, True, f"{', '.join(pending)} {'is' if len(pending) == 1 else 'are'} made first")
    if record is None:
        return Decision(step, True, "not run yet")
    changed = _changes(step, record, hashes)
    if record.get("status") != "done":
        if changed:
            return Decision(step, True, f"{record.get('status')} last time; since then {changed}")
        return Decision(
            step,
            True,
            f"{record.get('status')} last time" + ("; resumes from its last finished epoch" if resume else ""),
            resume=resume,
        )
    if changed:
        return Decision(step, True, changed)
    for path in step.outputs:
        if hashes.file(path) != record.get("outputs", {}).get(str(path)):
            what = "missing" if not path.exists() else "changed since it was written"
            return Decision(step, True, f"output {path.name} is {what}")
    return Decision(step, False, "up to date")


def _changes(step: Step, record: dict, hashes: Hashes) -> str:
    """What differs from the last run of the step: settings, then inputs ('' when nothing)."""
    before, now = record.get("settings", {}), step.settings()
    keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if keys:
        return f"settings changed: {', '.join(keys)}"
    old_inputs, new_inputs = record.get("inputs", {}), hashes.inputs(step)
    roles = [role for role in new_inputs if old_inputs.get(role) != new_inputs[role]]
    if roles:
        names = [step.data if role == "data" else step.inputs[role].name for role in roles]
        return f"input changed: {', '.join(dict.fromkeys(names))}"
    return ""


def dry_run(plan: Plan, force: set[str]) -> list[Decision]:
    """What ``run`` would do now, without running anything."""
    check_steps(plan)
    run_log, hashes = read_log(plan), Hashes()
    decisions, rebuilt = [], set()
    for step in plan.steps:
        decision = decide(step, run_log["stages"].get(step.name), _forced(step, force), rebuilt, hashes)
        if decision.run:
            rebuilt.update(step.outputs)
        decisions.append(decision)
    return decisions


def _forced(step: Step, force: set[str]) -> bool:
    return "all" in force or step.name in force


def check_force(plan: Plan, force: set[str]) -> None:
    names = [s.name for s in plan.steps]
    for name in sorted(force - {"all"}):
        if name not in names:
            raise CompressError(
                f"--force {name}: this recipe has no such stage; its stages are {', '.join(names)} (or all)"
            )


# -- running ------------------------------------------------------------------------------------


def run(plan: Plan, force: set[str] = frozenset()) -> dict[str, Any]:
    """Run the steps that are not up to date; return the run log (also written to run.json).

    Each step is decided just before it would run, against the files as they are then: a step
    whose upstream ran again but wrote the same bytes (training is deterministic on CPU) is skipped.
    """
    from filelock import FileLock, Timeout

    from .launch import refuse_if_launched

    refuse_if_launched("run")

    check_force(plan, force)
    plan.recipe.out.mkdir(parents=True, exist_ok=True)
    # one run at a time per folder: two would overwrite each other's artifacts and run.json; the
    # operating system lets go of the lock when its process ends, however it ends
    try:
        lock = FileLock(plan.recipe.out / "run.lock", blocking=False).acquire()
    except Timeout:
        raise CompressError(
            f"another compress run is using {plan.recipe.out}; wait for it to finish, or "
            "give this one another folder with --out"
        ) from None
    with lock:
        check_steps(plan)
        return _run_steps(plan, force)


def check_steps(plan: Plan) -> None:
    """What every stage can know before the first one starts (its outputs can be written, the machine
    has what it needs), so that a run does not fail at its last stage for a reason known at the start."""
    for step in plan.steps:
        step.stage.check(step.config)


def _run_steps(plan: Plan, force: set[str]) -> dict[str, Any]:
    run_log, hashes = read_log(plan), Hashes()
    run_log.update(recipe=str(plan.recipe.path), name=plan.recipe.name, out=str(plan.recipe.out))
    started_run = time.perf_counter()
    for number, step in enumerate(plan.steps, start=1):
        record = run_log["stages"].get(step.name)
        decision = decide(step, record, _forced(step, force), set(), hashes)
        head = f"[{number}/{len(plan.steps)}] {step.name}"
        if not decision.run:
            log(f"{head}: skipped, {decision.reason}")
            continue
        log(f"{head}: runs ({decision.reason})")
        _clear_stale_resume_state(step, decision)
        record = {
            "status": "running",
            "settings": step.settings(),
            "inputs": hashes.inputs(step),
            "outputs": {},
            "started": _now(),
            "seconds": None,
        }
        run_log["stages"][step.name] = record
        write_json(plan.log_path, run_log)
        began = time.perf_counter()
        config = step.config.model_copy(update={"resume": decision.resume}) if step.stage.resumable else step.config
        try:
            summary = step.stage.summary(step.stage.execute(config))
        except KeyboardInterrupt:
            _finish(record, "interrupted", began)
            write_json(plan.log_path, run_log)
            raise
        except Exception as exc:
            _finish(record, "failed", began)
            record["error"] = first_line(exc, limit=1000)
            write_json(plan.log_path, run_log)
            raise
        _finish(record, "done", began)
        record["outputs"] = {str(p): hashes.file(p) for p in step.outputs}
        record["summary"] = summary
        write_json(plan.log_path, run_log)
        log(f"{head}: done in {record['seconds']:.1f} s")
        for line in summary:
            log(f"  {line}")
    run_log["last_run"] = {"finished": _now(), "seconds": round(time.perf_counter() - started_run, 1)}
    run_log["variants"] = summary_rows(plan)
    write_json(plan.log_path, run_log)
    return run_log


def _finish(record: dict, status: str, began: float) -> None:
    record.update(status=status, finished=_now(), seconds=round(time.perf_counter() - began, 2))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _clear_stale_resume_state(step: Step, decision: Decision) -> None:
    """A resume state left by an older recipe of this folder cannot be resumed: start afresh."""

    state = resume_path(step.config.out) if step.stage.resumable else None
    if state is not None and not decision.resume and state.exists():
        log(f"  {step.name}: the interrupted run in {state.name} had other settings or inputs; starting afresh")
        state.unlink()


# -- the summary --------------------------------------------------------------------------------


def summary_rows(plan: Plan) -> list[dict[str, Any]]:
    """Per variant: accuracy (or the task's metrics), size, MACs and p50/speed-up per batch size, from the
    bench report."""
    from .measure.report import report_task

    report_path = plan.report_dir / "report.json"
    if not report_path.exists():
        return []
    report = load_report(report_path)
    task = report_task(report)
    rows = []
    by_path = {Path(m["path"]).resolve(): m for m in report["models"]}
    provider = report["config"]["providers"][0]
    threads = report["config"]["threads"][0]
    for label, path in plan.variants:
        model = by_path.get(path.resolve())
        if model is None:
            continue
        measured = model["providers"][provider]
        latency = {
            str(r["batch_size"]): {
                "p50_ms": r["p50_ms"],
                "speedup": r["speedup"],
                "speedup_ci": r["speedup_ci"],
                "baseline_p50_ms": r.get("baseline_p50_ms"),
            }
            for r in report["rows"]
            if r["model"] == model["name"] and r["provider"] == provider and r["threads"] == threads
        }
        rows.append(
            {
                "variant": label,
                "file": str(path),
                "top1": measured["top1"],
                "accuracy_delta_points": measured["accuracy_delta_points"],
                "task": task.name,
                "metric": task.metric,
                "metrics": measured.get("metrics"),
                # positive: worse than the teacher, in the task's points (see the report's metric_loss_points)
                "metric_loss_points": measured.get("metric_loss_points"),
                "params": model["params"],
                "macs": model.get("macs"),
                "size_bytes": model["size_bytes"],
                "provider": provider,
                "threads": threads,
                "latency": latency,
            }
        )
    return rows


def _speedup_cell(latency: dict[str, Any]) -> str:
    if latency["speedup"] is None:
        return "–"
    paired = latency.get("baseline_p50_ms")
    return f"{latency['speedup']:.2f}x" + ("" if paired is None else f" ({paired:.3f})")


def _quality_cells(task, row: dict[str, Any], first: bool) -> list[str]:
    """A multi-label or regression variant's primary metric and its change against the teacher's (signed as
    the metric moves, marked when worse)."""
    from .measure.report import change_unit, metric_change

    value = (row.get("metrics") or {}).get(task.metric)
    shown = "–" if value is None else (f"{100 * value:.2f}" if task.metric in task.percent else f"{value:.4g}")
    loss = row.get("metric_loss_points")
    if first or loss is None:
        return [shown, "–"]
    change = f"{metric_change(task, loss):+.2f}" + ("%" if change_unit(task) == "%" else "")
    return [shown, f"{change} worse" if loss > 0 else change]


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The final table on the terminal: each variant against the teacher; for a multi-label or regression
    run its primary metric (mAP, RMSE) in place of top-1."""
    from .measure.report import change_unit
    from .tasks import CLASSIFICATION, get_task

    if not rows:
        return ""
    task = get_task(rows[0].get("task"))
    batches = list(rows[0]["latency"])
    if task is CLASSIFICATION:
        quality = ["top-1 %", "Δ pts"]
    else:
        title = task.metric_title(task.metric)
        quality = [title + (" %" if task.metric in task.percent else ""), f"Δ {change_unit(task)}"]
    header = ["variant", *quality, "params", "MACs", "KiB"]
    # a speed-up comes from rounds alternating with the teacher: the teacher's p50 in those rounds beside it
    header += [f"p50 ms b{b}" for b in batches] + [f"speed-up b{b} (teacher ms)" for b in batches]
    lines = [header]
    for row in rows:
        delta = row["accuracy_delta_points"]
        if task is CLASSIFICATION:
            quality = [
                "–" if row["top1"] is None else f"{100 * row['top1']:.2f}",
                "–" if row is rows[0] or delta is None else f"{delta:+.2f}",
            ]
        else:
            quality = _quality_cells(task, row, row is rows[0])
        cells = [
            row["variant"],
            *quality,
            _count(row["params"]),
            _count(row["macs"]),
            f"{row['size_bytes'] / 1024:.1f}",
        ]
        cells += [f"{row['latency'][b]['p50_ms']:.3f}" for b in batches]
        cells += [_speedup_cell(row["latency"][b]) for b in batches]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines
    )
    measured = ""
    if task is not CLASSIFICATION:
        better = "higher" if task.higher_is_better else "lower"
        of = "points" if change_unit(task) == "pts" else "percent of the teacher's"
        measured = f"{task.name}: {title} ({better} is better), Δ against the teacher's in {of}; "
    return (
        f"{text}\n({measured}{rows[0]['provider']} execution provider, {rows[0]['threads']} thread(s); "
        "speed-up against the teacher, each timed in rounds alternating with it; in brackets the teacher's p50 in "
        "those rounds)"
    )


def _count(value: int | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k"


def describe_stage(step: Step) -> str:
    """``inputs -> outputs`` of a step, for the plan."""
    reads = [str(p) for p in dict.fromkeys(step.inputs.values())] + ([f"data {step.data}"] if step.data else [])
    writes = [str(p.parent if p.name == "report.json" else p) for p in step.outputs]
    return f"{', '.join(reads)} -> {', '.join(writes)}"
