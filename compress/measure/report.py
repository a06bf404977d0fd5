"""The bench report: report.json, report.md (for a pull request), report.html + plot.png.

The folder is written under a temporary name and renamed into place when complete, so an
interrupted run leaves the previous report as it was.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..artifacts import current_umask, staging_dir
from ..errors import CompressError
from ..tasks import CLASSIFICATION, Task, get_task
from ..typed_files import problem_line
from .report_model import FORMAT, validate_report_json

PLOT = "plot.png"
REPORT_FILES = ("report.json", "report.md", "report.html", PLOT)


def write_report(report: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write the report files; the report is checked against :class:`~.report_model.Report` first,
    and one that does not match it (a bug in compress, not the user's doing) raises ``ValueError``
    before anything is written."""
    folder = Path(folder)
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    try:
        validate_report_json(text)
    except ValidationError as exc:
        raise ValueError(
            f"compress made a bench report that does not match its format {FORMAT} "
            f"({problem_line(exc)}); this is a bug in compress"
        ) from exc
    with staging_dir(folder) as staging:
        (staging / "report.json").write_text(text)
        (staging / "report.md").write_text(markdown(report))
        png = plot_png(report)
        (staging / PLOT).write_bytes(png)
        (staging / "report.html").write_text(html_page(report, png))
        os.chmod(staging, 0o777 & ~current_umask())
        _replace_dir(staging, folder)
    return [folder / n for n in REPORT_FILES]


def _replace_dir(new: Path, final: Path) -> None:
    """Swap ``new`` in for ``final``; an existing report is removed only once the new one is in place."""
    if final.exists() and not final.is_dir():
        raise CompressError(f"{final} exists and is not a folder; choose another --report")
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fmt_speedup(row: dict) -> str:
    if row["speedup"] is None:
        return "baseline"
    low, high = row["speedup_ci"]
    text = f"{row['speedup']:.2f}x ({low:.2f}–{high:.2f})"
    return text if row["verdict"] == "faster" else f"{text} {row['verdict']}"


def report_task(report: dict) -> Task:
    """The task of the report's models (one for all; classification in reports that do not say)."""
    return get_task(next((m["task"] for m in report["models"] if m.get("task")), None))


def _fmt_fidelity(measured: dict, is_baseline: bool, task: Task = CLASSIFICATION) -> str:
    """How close a model's outputs are to the baseline's: top-1 agreement for classes, the label decisions
    kept for a multi-label model, else relative L2."""
    if is_baseline:
        return "–"
    if measured.get("agreement_with_baseline") is not None:
        if task.name == "multilabel":
            return f"labels kept {100 * measured['agreement_with_baseline']:.2f}%"
        return f"agrees {100 * measured['agreement_with_baseline']:.2f}%"
    distance = measured.get("fidelity_to_baseline")
    return "–" if distance is None else f"rel. L2 {distance['relative_l2']:.4f}"


def _fmt_count(value: int | None) -> str:
    """12_300_000 -> '12.3M': MACs at a glance."""
    if value is None:
        return "–"
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)


def _on_gpu(report: dict) -> bool:
    """Whether the report has rows of a GPU provider (its tables then show where their nodes ran)."""
    return any(r["provider"] != "cpu" for r in report["rows"])


def _fmt_placement(placement: dict[str, int] | None) -> str:
    """Nodes a GPU provider ran of the model's: '40 of 40', or '37 of 40 (3 on CPU)'; '–' on the CPU."""
    if placement is None:
        return "–"
    total = sum(placement.values())
    on_cpu = placement.get("CPUExecutionProvider", 0)
    return f"{total - on_cpu} of {total}" + (f" ({on_cpu} on CPU)" if on_cpu else "")


def _metric_value(task: Task, name: str, value: float | None) -> str:
    """A metric in a table cell: fractions in percent (the heading says %), others to 4 significant digits."""
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if name in task.percent else f"{value:#.4g}".rstrip(".")


def metric_change(task: Task, loss_points: float) -> float:
    """The change of the primary metric against the baseline's, signed as the metric moves (mAP points
    up or down; RMSE percent up or down), from ``metric_loss_points`` (positive: worse)."""
    return (-loss_points if task.higher_is_better else loss_points) + 0.0  # + 0.0: no "-0.00"


def change_unit(task: Task) -> str:
    """What :func:`metric_change` counts: points of a fraction, else percent of the baseline's value."""
    return "pts" if task.metric in task.percent else "%"


WORSE = "worse than baseline"


def _fmt_change(task: Task, loss_points: float) -> str:
    """``(-1.30, worse than baseline)``: the primary metric's change, and whether that is worse."""
    change = f"{metric_change(task, loss_points):+.2f}" + ("%" if change_unit(task) == "%" else "")
    return f"({change}, {WORSE})" if loss_points > 0 else f"({change})"


def _metric_cells(task: Task, m: dict, measured: dict) -> list[str]:
    """The quality columns of one model x provider: top-1 (with its change) for a classifier; else each of
    the task's metrics, the primary with its change against the baseline."""
    if task is CLASSIFICATION:
        delta = measured["accuracy_delta_points"]
        top1 = "–" if measured["top1"] is None else f"{100 * measured['top1']:.2f}"
        if not m["baseline"] and delta is not None:
            top1 += f" ({delta:+.2f})"
        return [top1]
    metrics = measured.get("metrics") or {}
    cells = [_metric_value(task, name, metrics.get(name)) for name in task.metrics]
    loss = measured.get("metric_loss_points")
    if not m["baseline"] and loss is not None:
        cells[0] += f" {_fmt_change(task, loss)}"
    return cells


def _metric_headings(task: Task) -> list[str]:
    """``top-1 % (Δ pts)``; ``mAP % (Δ pts)``, ``micro-F1 %``...; ``RMSE (Δ %)``, ``MAE``, ``R²``."""
    if task is CLASSIFICATION:
        return ["top-1 % (Δ pts)"]
    names = [task.metric_title(n) + (" %" if n in task.percent else "") for n in task.metrics]
    names[0] += f" (Δ {change_unit(task)})"
    return names


def table_rows(report: dict) -> list[list[str]]:
    """One row per model x provider x batch size x threads, for the terminal, Markdown and HTML; with GPU
    providers, the nodes each ran on the GPU beside the provider."""
    models = {m["name"]: m for m in report["models"]}
    gpu = _on_gpu(report)
    task = report_task(report)
    rows = []
    for r in report["rows"]:
        m = models[r["model"]]
        acc = m["providers"][r["provider"]]
        paired = r.get("baseline_p50_ms")
        rows.append(
            [
                r["model"],
                r["provider"],
                *([_fmt_placement(acc["placement"])] if gpu else []),
                str(r["batch_size"]),
                str(r["threads"]),
                f"{m['params']:,}" if m["params"] else "–",
                _fmt_count(m["macs"]),
                f"{m['size_bytes'] / 1024:.0f}",
                *_metric_cells(task, m, acc),
                _fmt_fidelity(acc, m["baseline"], task),
                f"{r['p50_ms']:.3f}",
                f"{r['p90_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                f"{r['throughput']:.0f}",
                "–" if paired is None else f"{paired:.3f}",
                _fmt_speedup(r),
            ]
        )
    return rows


def percent(confidence: float) -> str:
    """0.95 -> '95%', 0.995 -> '99.5%'."""
    return f"{round(100 * confidence, 6):g}%"


def header(report: dict) -> list[str]:
    """The table's column names; the speed-up's names the report's confidence level."""
    return [
        "model",
        "provider",
        *(["nodes on GPU"] if _on_gpu(report) else []),
        "batch",
        "threads",
        "params",
        "MACs",
        "KiB",
        *_metric_headings(report_task(report)),
        "vs baseline",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "samples/s",
        "baseline p50 ms",
        f"speed-up ({percent(report['timing']['confidence'])} CI)",
    ]


PAIRING_NOTE = (
    'Each model is timed in rounds alternating with the baseline; "baseline p50 ms" is the baseline\'s '
    "median in those same rounds, the pairing the model's speed-up comes from (the baseline's own row "
    "pools all its rounds)."
)


def terminal_table(report: dict) -> str:
    names = header(report)
    rows = [names] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(names))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
    return f"{table}\n{PAIRING_NOTE}"


def _machine_lines(report: dict) -> list[str]:
    machine = report["machine"]
    cpu = machine["cpu"]
    memory = machine.get("memory_bytes")
    lines = [
        f"- CPU: {cpu['model']}, {cpu['logical_cores']} logical cores, "
        f"{cpu['architecture']}, flags: {', '.join(cpu['flags']) or 'unknown'}"
        + (f"; memory {memory / 2**30:.1f} GiB" if memory else "")
    ]
    for gpu in machine.get("gpus") or []:
        capability = f", compute capability {gpu['compute_capability']}" if gpu.get("compute_capability") else ""
        lines.append(f"- GPU: {gpu['name']}{capability}, driver {gpu['driver']}, {gpu['memory']}")
    software = machine["software"]
    lines.append(
        "- Software: "
        + ", ".join(
            f"{k} {v}" + (f" (CUDA {software[k + '_cuda']})" if software.get(k + "_cuda") else "")
            for k, v in software.items()
            if not k.endswith("_cuda")
        )
    )
    s, t = report["session"], report["timing"]
    lines.append(
        f"- Sessions: graph optimisation {s['graph_optimization']}, {s['execution_mode']} "
        f"execution, intra-op threads as in the table, inter-op threads {s['inter_op_threads']}"
        + (", GPU inputs/outputs bound on the device (IOBinding)" if s["io_binding"] else "")
        + (", GPU timings include host↔device copies" if s["include_copies"] else "")
        + (
            "; cuda-graph: one CUDA graph per session and batch size, captured on its first run and replayed on "
            "inputs and outputs bound once"
            if "cuda-graph" in report["config"]["providers"]
            else ""
        )
    )
    lines.append(
        f"- Timing: {t['warmup']} warm-up runs, then at least {t['min_runs']} runs and "
        f"{t['min_seconds']} s per model and configuration in {t['rounds']} rounds "
        f"alternating with the baseline; {percent(t['confidence'])} intervals."
    )
    return lines


def _title(report: dict) -> str:
    """``Latency and accuracy`` for classifiers; ``Latency and mAP``, ``Latency and RMSE`` for others."""
    task = report_task(report)
    return "Latency and accuracy" if task is CLASSIFICATION else f"Latency and {task.metric_title(task.metric)}"


def markdown(report: dict) -> str:
    rows, names = table_rows(report), header(report)
    task = report_task(report)
    lines = [
        f"## {_title(report)} against `{report['baseline']}`",
        "",
        f"Created {report['created']}.",
        "",
        *_machine_lines(report),
        "",
        "| " + " | ".join(names) + " |",
        "|" + " --- |" * len(names),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [
        "",
        PAIRING_NOTE,
        "",
        "A speed-up whose interval contains 1 is marked *within noise*: no difference was shown.",
        *([] if task is CLASSIFICATION else ["", _metric_note(task)]),
        "",
        *_model_notes(report),
        "",
    ]
    return "\n".join(lines)


def _metric_note(task: Task) -> str:
    """What the quality columns of a multi-label or regression report mean."""
    primary = task.metric_title(task.metric)
    better = "higher" if task.higher_is_better else "lower"
    if change_unit(task) == "pts":
        change = "its change against the baseline's in percentage points"
    else:
        change = f"its change against the baseline's in percent of the baseline's {primary}"
    note = (
        f"Task {task.name}: metrics on the test split ({', '.join(map(task.metric_title, task.metrics))}); "
        f"{primary} decides ({better} is better), in brackets {change}."
    )
    if task.name == "multilabel":
        note += " A label counts as predicted when its logit is at least 0 (sigmoid 0.5)."
    return note


def _metric_against_baseline(task: Task, loss: float, base: float | None) -> str:
    """``RMSE 6.62% higher than the baseline's 42.3: worse than the baseline``."""
    primary = task.metric_title(task.metric)
    change = metric_change(task, loss)
    if change == 0:
        return f"{primary} the same as the baseline's"
    direction = "higher" if change > 0 else "lower"
    amount = f"{abs(change):.2f} points" if change_unit(task) == "pts" else f"{abs(change):.2f}%"
    verdict = "worse than the baseline" if loss > 0 else "better than the baseline"
    return f"{primary} {amount} {direction} than the baseline's {task.format(task.metric, base)}: {verdict}"


def _model_notes(report: dict) -> list[str]:
    lines = []
    task = report_task(report)
    base_model = next(m for m in report["models"] if m["baseline"])
    for m in report["models"]:
        how = m.get("preprocessing")
        if how:
            fed = (
                "as its manifest records" if how == "manifest" else f"by `--preprocessing {how}` (no manifest says how)"
            )
            lines.append(f"- `{m['name']}`: test data `{m['data']}`, normalised {fed}.")
        elif m.get("synthetic_inputs"):
            drawn = "; ".join(f"`{i['name']}` {i['type']}: {i['values']}" for i in m["synthetic_inputs"])
            lines.append(f"- `{m['name']}`: synthetic inputs ({drawn}).")
        else:
            lines.append(f"- `{m['name']}`: test data `{m['data']}`, fed as stored.")
        if m.get("accuracy_not_measured"):
            what = "accuracy not measured" if task is CLASSIFICATION else "metrics not measured"
            lines.append(f"- `{m['name']}`: **{what}**: {m['accuracy_not_measured']}.")
        for provider, p in m["providers"].items():
            extra = []
            if p["top5"] is not None:
                extra.append(f"top-5 {100 * p['top5']:.2f}%")
            if task is not CLASSIFICATION and p.get("metrics"):
                extra.append(task.describe(p["metrics"]))
                loss = p.get("metric_loss_points")
                if loss is not None and not m["baseline"]:
                    base = ((base_model["providers"].get(provider) or {}).get("metrics") or {}).get(task.metric)
                    extra.append(_metric_against_baseline(task, loss, base))
            if p.get("agreement_with_baseline") is not None and not m["baseline"]:
                if task.name == "multilabel":
                    extra.append(f"keeps {100 * p['agreement_with_baseline']:.2f}% of the baseline's label decisions")
                else:
                    extra.append(f"agrees with the baseline on {100 * p['agreement_with_baseline']:.2f}%")
            distance = p.get("fidelity_to_baseline")
            if distance is not None:
                extra.append(
                    f"first output against the baseline's: cosine {distance['cosine']:.4f}, relative L2 "
                    f"{distance['relative_l2']:.4f}, max abs diff {distance['max_abs_diff']:.3g}"
                )
            if p.get("peak_memory_mb") is not None:
                extra.append(
                    f"peak RSS {p['peak_memory_mb']:.0f} MiB (the process held "
                    f"{p['process_memory_mb']:.0f} MiB before loading the model)"
                )
            extra.append(
                f"session created in {1e3 * p['session_create_s']:.0f} ms, first run {1e3 * p['first_run_s']:.1f} ms"
            )
            if p.get("placement"):
                placed = ", ".join(f"{n} nodes on {k}" for k, n in p["placement"].items())
                extra.append(f"placement: {placed}")
            lines.append(f"- `{m['name']}` on {provider}: " + "; ".join(extra) + ".")
    return lines


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and quality: higher, or with
    ``higher_is_better`` False (an error such as RMSE) lower."""
    if not higher_is_better:
        points = [(lat, -q) for lat, q in points]
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


MARKERS = "osD^vP*Xh<>p"


def plot_png(report: dict) -> bytes:
    """The plot (:func:`plot_figure`) as PNG bytes."""
    import io

    import matplotlib.pyplot as plt

    fig = plot_figure(report)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


@dataclass(frozen=True)
class _Quality:
    """What the plot's vertical axis shows: accuracy where every model has it, else closeness to the
    baseline, else (latency only) the models by name."""

    title: str
    label: str
    of: Callable[[dict, str, int], float]  # (model entry, provider, model index) -> value
    higher_is_better: bool = True


def _quality(report: dict) -> _Quality:
    measured = [p for m in report["models"] for p in m["providers"].values()]
    others = [p for m in report["models"] if not m["baseline"] for p in m["providers"].values()]
    task = report_task(report)
    if task is not CLASSIFICATION:
        metric, title = task.metric, task.metric_title(task.metric)
        if all((p.get("metrics") or {}).get(metric) is not None for p in measured):
            scale = 100 if metric in task.percent else 1
            unit = ", %" if metric in task.percent else " (target units)"
            return _Quality(
                title,
                f"{title}{unit}, {'higher' if task.higher_is_better else 'lower'} is better",
                lambda m, provider, i: scale * m["providers"][provider]["metrics"][metric],
                higher_is_better=task.higher_is_better,
            )
    elif all(p["top1"] is not None for p in measured):
        return _Quality("Accuracy", "top-1 accuracy, %", lambda m, provider, i: 100 * m["providers"][provider]["top1"])
    if all(p.get("agreement_with_baseline") is not None for p in measured):
        kept = "label decisions kept from" if task.name == "multilabel" else "top-1 agreement with"
        return _Quality(
            "Agreement with the baseline",
            f"{kept} the baseline, %",
            lambda m, provider, i: 100 * m["providers"][provider]["agreement_with_baseline"],
        )
    if others and all(p.get("fidelity_to_baseline") is not None for p in others):
        return _Quality(
            "Output error",
            "relative L2 error of the first output against the baseline's (lower is better)",
            lambda m, provider, i: (
                0.0 if m["baseline"] else m["providers"][provider]["fidelity_to_baseline"]["relative_l2"]
            ),
            higher_is_better=False,
        )
    return _Quality("Latency", "model", lambda m, provider, i: float(i))


def plot_figure(report: dict) -> Any:
    """Accuracy against p50 latency, one panel per provider x thread count (rows) and batch size
    (columns). Each model keeps its colour and marker in every panel, its p50 interval drawn as an
    error bar and its speed-up with its interval named in the panel's legend (no labels on the
    points, which would overlap when models sit close); the baseline hollow, the Pareto front dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = report["config"]
    models = {m["name"]: m for m in report["models"]}
    quality = _quality(report)
    lines = [(provider, threads) for provider in config["providers"] for threads in config["threads"]]
    batches = config["batch_sizes"]
    fig, axes = plt.subplots(
        len(lines), len(batches), figsize=(5.4 * len(batches), 4 * len(lines)), dpi=110, squeeze=False
    )
    for (provider, threads), row in zip(lines, axes):
        for batch, ax in zip(batches, row):
            rows = [
                r
                for r in report["rows"]
                if (r["provider"], r["threads"], r["batch_size"]) == (provider, threads, batch)
            ]
            _panel(ax, rows, models, quality)
            ax.set_title(f"{provider}, batch {batch}, {threads} thread{'s' if threads > 1 else ''}", fontsize=9)
    fig.supylabel(quality.label, fontsize=9)
    fig.suptitle(f"{quality.title} against latency")
    fig.tight_layout()
    return fig


def _panel(ax: Any, rows: list[dict], models: dict[str, dict], quality: _Quality) -> None:
    """One provider x threads x batch size: a point per model, the Pareto front, a legend."""
    order = list(models)  # a model's place in the report fixes its colour and marker
    points = []
    for r in rows:
        m = models[r["model"]]
        i = order.index(r["model"])
        colour = f"C{i % 10}"
        accuracy = quality.of(m, r["provider"], i)
        low, high = r["p50_ci_ms"]
        label = f"{r['model']} (baseline)" if m["baseline"] else f"{r['model']}: {_fmt_speedup(r)}"
        ax.errorbar(
            [r["p50_ms"]],
            [accuracy],
            xerr=[[r["p50_ms"] - low], [high - r["p50_ms"]]],
            fmt=MARKERS[i % len(MARKERS)],
            color=colour,
            markerfacecolor="none" if m["baseline"] else colour,
            markersize=9 if m["baseline"] else 6,
            capsize=3,
            label=label,
            zorder=3,
        )
        points.append((r["p50_ms"], accuracy))
    front = pareto_front(points, quality.higher_is_better)
    if len(front) > 1:
        ax.plot(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            "--",
            color="0.5",
            linewidth=1,
            label="Pareto front",
            zorder=2,
        )
    if quality.label == "model":
        ax.set_yticks(range(len(order)), order, fontsize=7)
        ax.set_ylim(-0.5, len(order) - 0.5)
    if rows:
        # a log axis over less than a decade has no round ticks to label: linear there
        spread = max(r["p50_ci_ms"][1] for r in rows) / min(r["p50_ci_ms"][0] for r in rows)
        log = spread > 10
        if log:
            ax.set_xscale("log")
        else:
            ax.ticklabel_format(axis="x", style="plain", useOffset=False)
            ax.locator_params(axis="x", nbins=5)
            # at least +-10% around the middle, so that a difference of a few percent looks as small as it is
            low, high = ax.get_xlim()
            middle = (low + high) / 2
            ax.set_xlim(min(low, 0.9 * middle), max(high, 1.1 * middle))
        ax.set_xlabel(f"p50 latency, ms{', log scale' if log else ''} (bars: its interval)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.legend(loc="best", fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def html_page(report: dict, png: bytes) -> str:
    """One self-contained file: inline CSS, the plot as a data URI, no network needed."""

    def cells(row, tag):
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row) + "</tr>"

    machine = "".join(f"<li>{_inline_html(line[2:])}</li>" for line in _machine_lines(report))
    notes = "".join(f"<li>{_inline_html(line[2:])}</li>" for line in _model_notes(report))
    table = cells(header(report), "th") + "".join(cells(r, "td") for r in table_rows(report))
    image = base64.b64encode(png).decode("ascii")
    task = report_task(report)
    metric_note = "" if task is CLASSIFICATION else f"\n<p>{html.escape(_metric_note(task))}</p>"
    quality = "accuracy" if task is CLASSIFICATION else _quality(report).title
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>compress bench: {html.escape(report["baseline"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}
table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th{{background:#f3f3f3}}td:first-child,td:nth-child(2){{text-align:left}}</style></head>
<body><h1>{html.escape(_title(report))} against {html.escape(report["baseline"])}</h1>
<p>Created {html.escape(report["created"])}.</p><ul>{machine}</ul>
<table>{table}</table>
<p>{html.escape(PAIRING_NOTE)}</p>
<p>A speed-up whose interval contains 1 is marked <em>within noise</em>: no difference was shown.</p>{metric_note}
<ul>{notes}</ul>
<img id="plot" alt="{html.escape(quality)} against p50 latency" src="data:image/png;base64,{image}">
</body></html>
"""


def _inline_html(text: str) -> str:
    """A Markdown line's text as HTML: escaped, with `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def load_report(path: str | Path) -> dict[str, Any]:
    """A report.json (or the folder holding one), checked against :class:`~.report_model.Report`:
    anything else is a ``CompressError`` naming the file and the first field at fault."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        text = path.read_text()
        report = json.loads(text)
    except FileNotFoundError:
        raise CompressError(f"{path} does not exist; give a report.json written by compress bench") from None
    except OSError as exc:
        raise CompressError(f"{path} could not be read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CompressError(f"{path} is not valid JSON ({exc}); give a report.json from compress bench") from None
    if not isinstance(report, dict) or "format" not in report:
        raise CompressError(
            f'{path} is not a compress bench report (it has no "format"); give a report.json written by compress bench'
        )
    written = report["format"]
    if written != FORMAT:
        if isinstance(written, str) and written.startswith(FORMAT.rsplit("/", 1)[0] + "/"):
            raise CompressError(
                f"report {path}: format: {' '.join(written.split())[:60]} is not {FORMAT}, the only report "
                f"format this compress reads; use the compress version that wrote it"
            )
        raise CompressError(
            f"report {path}: format: {str(written)[:60]!r} is not a compress bench report format ({FORMAT})"
        )
    try:
        validate_report_json(text)
    except ValidationError as exc:
        raise CompressError(f"report {path}: {problem_line(exc)}") from None
    return report


def compare_reports(old: dict, new: dict) -> list[dict[str, Any]]:
    """Rows present in both reports, matched on model x provider x batch x threads, with a verdict:
    faster/slower only when the p50 intervals do not overlap."""

    def key(r):
        return (r["model"], r["provider"], r["batch_size"], r["threads"])

    before = {key(r): r for r in old["rows"]}
    changes = []
    for r in new["rows"]:
        if key(r) not in before:
            continue
        o = before[key(r)]
        if r["p50_ci_ms"][1] < o["p50_ci_ms"][0]:
            word = "faster"
        elif r["p50_ci_ms"][0] > o["p50_ci_ms"][1]:
            word = "slower"
        else:
            word = "within noise"
        changes.append(
            {
                "model": r["model"],
                "provider": r["provider"],
                "batch_size": r["batch_size"],
                "threads": r["threads"],
                "old_p50_ms": o["p50_ms"],
                "new_p50_ms": r["p50_ms"],
                "ratio": o["p50_ms"] / r["p50_ms"],
                "verdict": word,
            }
        )
    if not changes:
        raise CompressError(
            "the two reports share no model/provider/batch/threads row; compare reports of the same models"
        )
    return changes
