"""``compress run RECIPE.toml``: the stages chained in one run folder, skipping what is up to date.

The recipe (``recipe.py``) gives each stage's settings; this module gives each stage its files:

    runs/NAME/teacher.pt ─export─▶ teacher.onnx ──────────────────────────────┐
        └─distill─▶ student.pt ─export─▶ student.onnx ─quantize─▶ student.int8.onnx ─bench─▶ report/
                        └─prune─▶ student.pruned.pt ─export─▶ student.pruned.onnx (then quantized)

``run.json`` in the run folder records every stage: its settings, the sha256 of every file it
read, the sha256 of every file it wrote, its status and times. A stage is skipped when its
settings and inputs are what they were when it last finished and its outputs are still the
files it wrote. A stage interrupted mid-way is picked up again: training and distillation
resume from their last finished epoch; the others start over (every stage writes its outputs
atomically, so nothing half-written is ever taken for done). ``run.lock`` keeps a second run
out of a folder in use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .artifacts import sha256_file, write_json
from .errors import CompressError
from .recipe import Recipe, config_classes, data_files

RUN_FORMAT = "compress-run/1"
# Config fields that do not change what a stage computes.
UNFINGERPRINTED = {"resume"}


@dataclass
class Stage:
    name: str  # what --force takes
    table: str  # the recipe table of its settings
    config: Any  # the stage's config dataclass, paths filled in
    inputs: dict[str, Path]  # role -> a file it reads (hashed)
    outputs: list[Path]  # files it writes (hashed once it finished)
    data: str | None = None  # a data source it reads (its files hashed)
    resumable: bool = False  # train/distill: continue from the last finished epoch

    @property
    def kind(self) -> str:
        """The command it runs: export-teacher -> export."""
        return self.name.split("-")[0]

    def settings(self) -> dict[str, Any]:
        """The config that decides what the stage computes (its file paths are hashed instead)."""
        paths = {"out", "report", *self.inputs}
        config = {
            k: v for k, v in dataclasses.asdict(self.config).items() if k not in paths and k not in UNFINGERPRINTED
        }
        return json.loads(json.dumps(config, default=str))


@dataclass
class Decision:
    stage: Stage
    run: bool
    reason: str
    resume: bool = False


@dataclass
class Plan:
    recipe: Recipe
    stages: list[Stage]
    variants: list[tuple[str, Path]] = field(default_factory=list)  # (label, onnx) benched, teacher first

    @property
    def log_path(self) -> Path:
        return self.recipe.out / "run.json"

    @property
    def report_dir(self) -> Path:
        return self.recipe.out / "report"


def build_plan(recipe: Recipe) -> Plan:
    """The stages of ``recipe``, in order, each with its config and files."""
    classes = config_classes()
    out, data, tables = recipe.out, recipe.data, recipe.tables
    stages: list[Stage] = []

    def config(table: str, **paths: Any) -> Any:
        return classes[table](**paths, **tables.get(table, {}))

    if recipe.teacher_path is None:
        teacher = out / "teacher.pt"
        stages.append(
            Stage(
                "train",
                "teacher",
                config("teacher", out=str(teacher), data=data),
                {},
                [teacher],
                data=data,
                resumable=True,
            )
        )
    else:
        teacher = recipe.teacher_path
    student = out / "student.pt"
    stages.append(
        Stage(
            "distill",
            "student",
            config("student", out=str(student), data=data, teacher=str(teacher)),
            {"teacher": teacher},
            [student],
            data=data,
            resumable=True,
        )
    )
    if teacher.suffix == ".onnx":
        teacher_onnx = teacher
    else:
        teacher_onnx = out / "teacher.onnx"
        stages.append(_export("export-teacher", config, teacher, teacher_onnx))
    student_onnx = out / "student.onnx"
    stages.append(_export("export-student", config, student, student_onnx))
    variants = [("teacher", teacher_onnx), ("student", student_onnx)]
    final = student_onnx
    if recipe.has("prune"):
        pruned = out / "student.pruned.pt"
        stages.append(
            Stage(
                "prune",
                "prune",
                config("prune", checkpoint=str(student), out=str(pruned), teacher=str(teacher)),
                {"checkpoint": student, "teacher": teacher},
                [pruned],
            )
        )
        final = out / "student.pruned.onnx"
        stages.append(_export("export-pruned", config, pruned, final))
        variants.append(("student pruned", final))
    if recipe.has("quantize"):
        int8 = final.with_name(final.stem + ".int8.onnx")
        stages.append(
            Stage("quantize", "quantize", config("quantize", model=str(final), out=str(int8)), {"model": final}, [int8])
        )
        variants.append((("student pruned" if final != student_onnx else "student") + " int8", int8))
    report = out / "report"
    models = [path for _, path in variants]
    stages.append(
        Stage(
            "bench",
            "bench",
            config("bench", models=[str(p) for p in models], report=str(report), baseline=str(teacher_onnx)),
            {f"models[{i}]": p for i, p in enumerate(models)},
            [report / "report.json"],
        )
    )
    checks = _config_checks()
    for stage in stages:
        recipe.check(stage.table, checks[stage.kind], stage.config)
    return Plan(recipe, stages, variants)


def _config_checks() -> dict[str, Callable[[Any], None]]:
    """Each stage's own check of its settings, run on the whole plan before any stage starts."""
    from .bench.run import check_config as check_bench
    from .distill.trainer import check_distill_config
    from .export import check_config as check_export
    from .loop import check_config as check_training
    from .prune import check_prune_config
    from .quantize import check_config as check_quantize

    return {
        "train": check_training,
        "distill": check_distill_config,
        "prune": check_prune_config,
        "export": check_export,
        "quantize": check_quantize,
        # bench's check puts a missing baseline into the model list: give it a copy
        "bench": lambda config: check_bench(dataclasses.replace(config, models=list(config.models))),
    }


def _export(name: str, config: Callable, checkpoint: Path, onnx: Path) -> Stage:
    return Stage(
        name, "export", config("export", checkpoint=str(checkpoint), out=str(onnx)), {"checkpoint": checkpoint}, [onnx]
    )


# -- deciding what runs -------------------------------------------------------------------------


class Hashes:
    """sha256 of files, computed once per run (a file is hashed again only if it changed on disk)."""

    def __init__(self):
        self._known: dict[tuple[str, int, int], str] = {}

    def file(self, path: Path) -> str | None:
        if not path.is_file():
            return None
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._known:
            self._known[key] = sha256_file(path)
        return self._known[key]

    def data(self, spec: str) -> str:
        """One digest over the files of a data source (its name alone for the built-in digits)."""
        digest = hashlib.sha256(spec.encode())
        for path in data_files(spec):
            digest.update(f"{path.name}:{self.file(path)}".encode())
        return digest.hexdigest()

    def inputs(self, stage: Stage) -> dict[str, str | None]:
        found = {role: self.file(path) for role, path in stage.inputs.items()}
        if stage.data:
            found["data"] = self.data(stage.data)
        return found


def read_log(plan: Plan) -> dict[str, Any]:
    path = plan.log_path
    if not path.exists():
        return {"format": RUN_FORMAT, "stages": {}}
    try:
        log = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CompressError(f"{path} is damaged (not JSON); delete it to run every stage again") from None
    if not isinstance(log, dict) or log.get("format") != RUN_FORMAT:
        raise CompressError(f"{path} is not a compress run log; choose another out folder for this recipe")
    return log


def decide(stage: Stage, record: dict | None, forced: bool, rebuilt: set[Path], hashes: Hashes) -> Decision:
    """Whether ``stage`` runs, and why; ``rebuilt``: outputs of earlier stages that will run first."""
    from .loop import resume_path

    resume = (
        stage.resumable
        and record is not None
        and record.get("status") != "done"
        and resume_path(stage.config.out).exists()
    )
    if forced:
        return Decision(stage, True, "forced (--force)")
    pending = [p.name for p in stage.inputs.values() if p in rebuilt]
    if pending:
        return Decision(stage, True, f"{', '.join(pending)} {'is' if len(pending) == 1 else 'are'} made first")
    if record is None:
        return Decision(stage, True, "not run yet")
    changed = _changes(stage, record, hashes)
    if record.get("status") != "done":
        if changed:
            return Decision(stage, True, f"{record.get('status')} last time; since then {changed}")
        return Decision(
            stage,
            True,
            f"{record.get('status')} last time" + ("; resumes from its last finished epoch" if resume else ""),
            resume=resume,
        )
    if changed:
        return Decision(stage, True, changed)
    for path in stage.outputs:
        if hashes.file(path) != record.get("outputs", {}).get(str(path)):
            what = "missing" if not path.exists() else "changed since it was written"
            return Decision(stage, True, f"output {path.name} is {what}")
    return Decision(stage, False, "up to date")


def _changes(stage: Stage, record: dict, hashes: Hashes) -> str:
    """What differs from the last run of the stage: settings, then inputs ('' when nothing)."""
    before, now = record.get("settings", {}), stage.settings()
    keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if keys:
        return f"settings changed: {', '.join(keys)}"
    old_inputs, new_inputs = record.get("inputs", {}), hashes.inputs(stage)
    roles = [role for role in new_inputs if old_inputs.get(role) != new_inputs[role]]
    if roles:
        names = [stage.data if role == "data" else stage.inputs[role].name for role in roles]
        return f"input changed: {', '.join(names)}"
    return ""


def dry_run(plan: Plan, force: set[str]) -> list[Decision]:
    """What ``run`` would do now, without running anything."""
    log, hashes = read_log(plan), Hashes()
    decisions, rebuilt = [], set()
    for stage in plan.stages:
        decision = decide(stage, log["stages"].get(stage.name), _forced(stage, force), rebuilt, hashes)
        if decision.run:
            rebuilt.update(stage.outputs)
        decisions.append(decision)
    return decisions


def _forced(stage: Stage, force: set[str]) -> bool:
    return "all" in force or stage.name in force


def check_force(plan: Plan, force: set[str]) -> None:
    names = [s.name for s in plan.stages]
    for name in sorted(force - {"all"}):
        if name not in names:
            raise CompressError(
                f"--force {name}: this recipe has no such stage; its stages are {', '.join(names)} (or all)"
            )


# -- running ------------------------------------------------------------------------------------


def run(plan: Plan, force: set[str] = frozenset(), log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the stages that are not up to date; return the run log (also written to run.json).

    Each stage is decided just before it would run, against the files as they are then: a stage
    whose upstream ran again but wrote the same bytes (training is deterministic on CPU) is skipped.
    """
    check_force(plan, force)
    plan.recipe.out.mkdir(parents=True, exist_ok=True)
    with _folder_lock(plan.recipe.out):
        return _run_stages(plan, force, log)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """One run at a time per run folder: two would overwrite each other's artifacts and run.json."""
    lock = folder / "run.lock"
    # the lock appears with its process id already in it (a hard link is created atomically or not
    # at all), so a competing run never reads an empty lock and takes it for a stale one
    claim = folder / f".run.lock.{os.getpid()}"
    claim.write_text(str(os.getpid()))
    try:
        while True:
            try:
                os.link(claim, lock)
                break
            except FileExistsError:
                holder = _lock_holder(lock)
                if holder is not None:
                    raise CompressError(
                        f"another compress run (process {holder}) is using {folder}; wait "
                        "for it to finish, or give this one another folder with --out"
                    ) from None
                lock.unlink(missing_ok=True)  # left by a run that was killed: take it over
    finally:
        claim.unlink(missing_ok=True)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _lock_holder(lock: Path) -> int | None:
    """The live process holding ``lock``, or None when the lock is stale."""
    try:
        pid = int(lock.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):  # gone, unreadable, or no such process
        return None
    return pid


def _run_stages(plan: Plan, force: set[str], log: Callable[[str], None]) -> dict[str, Any]:
    run_log, hashes = read_log(plan), Hashes()
    run_log.update(recipe=str(plan.recipe.path), name=plan.recipe.name, out=str(plan.recipe.out))
    started_run = time.perf_counter()
    for number, stage in enumerate(plan.stages, start=1):
        record = run_log["stages"].get(stage.name)
        decision = decide(stage, record, _forced(stage, force), set(), hashes)
        head = f"[{number}/{len(plan.stages)}] {stage.name}"
        if not decision.run:
            log(f"{head}: skipped, {decision.reason}")
            continue
        log(f"{head}: runs ({decision.reason})")
        _clear_stale_resume_state(stage, decision, log)
        record = {
            "status": "running",
            "settings": stage.settings(),
            "inputs": hashes.inputs(stage),
            "outputs": {},
            "started": _now(),
            "seconds": None,
        }
        run_log["stages"][stage.name] = record
        write_json(plan.log_path, run_log)
        began = time.perf_counter()
        try:
            summary = _execute(stage, decision.resume, log)
        except KeyboardInterrupt:
            _finish(record, "interrupted", began)
            write_json(plan.log_path, run_log)
            raise
        except Exception as exc:
            _finish(record, "failed", began)
            record["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            write_json(plan.log_path, run_log)
            raise
        _finish(record, "done", began)
        record["outputs"] = {str(p): hashes.file(p) for p in stage.outputs}
        record["summary"] = summary
        write_json(plan.log_path, run_log)
        log(f"{head}: {summary} ({record['seconds']:.1f} s)")
    run_log["last_run"] = {"finished": _now(), "seconds": round(time.perf_counter() - started_run, 1)}
    run_log["variants"] = summary_rows(plan)
    write_json(plan.log_path, run_log)
    return run_log


def _finish(record: dict, status: str, began: float) -> None:
    record.update(status=status, finished=_now(), seconds=round(time.perf_counter() - began, 2))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _clear_stale_resume_state(stage: Stage, decision: Decision, log: Callable[[str], None]) -> None:
    """A resume state left by an older recipe of this folder cannot be resumed: start afresh."""
    from .loop import resume_path

    if stage.resumable and not decision.resume and resume_path(stage.config.out).exists():
        log(
            f"  {stage.name}: the interrupted run in {resume_path(stage.config.out).name} had other "
            "settings or inputs; starting afresh"
        )
        resume_path(stage.config.out).unlink()


def _execute(stage: Stage, resume: bool, log: Callable[[str], None]) -> str:
    """Run one stage through the function its command calls; return a one-line summary."""
    config, kind = stage.config, stage.kind
    if kind == "train":
        from .train import train

        return _fit_summary(train(dataclasses.replace(config, resume=resume)))
    if kind == "distill":
        from .distill.trainer import distill

        return _fit_summary(distill(dataclasses.replace(config, resume=resume)))
    if kind == "prune":
        from .prune import prune

        pruning = prune(config, log=lambda line: log(f"  {line}"))["pruning"]
        before, after = pruning["before"], pruning["after"]
        return (
            f"MACs {before['macs']:,} -> {after['macs']:,}, test accuracy "
            f"{100 * before['test_accuracy']:.2f}% -> {100 * after['test_accuracy']:.2f}%"
        )
    if kind == "export":
        from .export import export

        manifest = export(config)
        parity = manifest["parity"]
        return f"{Path(config.out).name}, {manifest['size_bytes'] / 1024:.1f} KiB" + (
            f", parity max |diff| {parity['max_abs_diff']:.2g}" if parity else ""
        )
    if kind == "quantize":
        from .quantize import quantize

        manifest = quantize(config, log=lambda line: log(f"  {line}"))
        metrics = manifest["metrics"]
        latency = metrics["latency"]
        warnings = "".join(f"\n  warning: {w}" for w in metrics["warnings"])
        accuracy = (
            ""
            if metrics["accuracy_drop_points"] is None
            else f", accuracy drop {metrics['accuracy_drop_points']:.2f} points"
        )
        return (
            f"{Path(config.out).name}, {latency['speedup']:.2f}x over fp32 at batch "
            f"{latency['batch_size']}{accuracy}{warnings}"
        )
    if kind == "bench":
        from .bench.report import write_report
        from .bench.run import bench

        report = bench(dataclasses.replace(config, models=list(config.models)), log=lambda line: log(f"  {line}"))
        write_report(report, config.report)
        return f"report in {config.report}"
    raise AssertionError(f"no runner for stage {stage.name}")


def _fit_summary(manifest: dict) -> str:
    metrics = manifest["metrics"]
    return f"{manifest['artifact']}, test accuracy {100 * metrics['test_accuracy']:.2f}%, {metrics['params']:,} params"


# -- the summary --------------------------------------------------------------------------------


def summary_rows(plan: Plan) -> list[dict[str, Any]]:
    """Per variant: accuracy, size, MACs and p50/speed-up per batch size, from the bench report."""
    report_path = plan.report_dir / "report.json"
    if not report_path.exists():
        return []
    report = json.loads(report_path.read_text())
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
            str(r["batch_size"]): {"p50_ms": r["p50_ms"], "speedup": r["speedup"], "speedup_ci": r["speedup_ci"]}
            for r in report["rows"]
            if r["model"] == model["name"] and r["provider"] == provider and r["threads"] == threads
        }
        rows.append(
            {
                "variant": label,
                "file": str(path),
                "top1": measured["top1"],
                "accuracy_delta_points": measured["accuracy_delta_points"],
                "params": model["params"],
                "macs": model.get("macs"),
                "size_bytes": model["size_bytes"],
                "provider": provider,
                "threads": threads,
                "latency": latency,
            }
        )
    return rows


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The final table on the terminal: each variant against the teacher."""
    if not rows:
        return ""
    batches = list(rows[0]["latency"])
    header = ["variant", "top-1 %", "Δ pts", "params", "MACs", "KiB"]
    header += [f"p50 ms b{b}" for b in batches] + [f"speed-up b{b}" for b in batches]
    lines = [header]
    for row in rows:
        delta = row["accuracy_delta_points"]
        cells = [
            row["variant"],
            f"{100 * row['top1']:.2f}",
            "–" if row is rows[0] else f"{delta:+.2f}",
            _count(row["params"]),
            _count(row["macs"]),
            f"{row['size_bytes'] / 1024:.1f}",
        ]
        cells += [f"{row['latency'][b]['p50_ms']:.3f}" for b in batches]
        cells += [
            "–" if row["latency"][b]["speedup"] is None else f"{row['latency'][b]['speedup']:.2f}x" for b in batches
        ]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines
    )
    return (
        f"{text}\n({rows[0]['provider']} execution provider, {rows[0]['threads']} thread(s); "
        "speed-up against the teacher, each timed in rounds alternating with it)"
    )


def _count(value: int | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k"


def describe_stage(stage: Stage) -> str:
    """``inputs -> outputs`` of a stage, for the plan."""
    reads = [str(p) for p in stage.inputs.values()] + ([f"data {stage.data}"] if stage.data else [])
    writes = [str(p.parent if p.name == "report.json" else p) for p in stage.outputs]
    return f"{', '.join(reads)} -> {', '.join(writes)}"
