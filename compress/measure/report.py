"""The bench report: report.json, report.md (for a pull request), report.html + plot.png.

The folder is written under a temporary name and renamed into place when complete, so an
interrupted run leaves the previous report as it was.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..artifacts import current_umask, staging_dir
from ..errors import CompressError
from ..typed_files import problem_line
from .report_model import FORMAT, validate_report_json

PLOT = "plot.png"


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
    return [folder / n for n in ("report.json", "report.md", "report.html", PLOT)]


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


def table_rows(report: dict) -> list[list[str]]:
    """One row per model x provider x batch size x threads, for the terminal and Markdown."""
    models = {m["name"]: m for m in report["models"]}
    rows = []
    for r in report["rows"]:
        m = models[r["model"]]
        acc = m["providers"][r["provider"]]
        delta = "" if m["baseline"] else f" ({acc['accuracy_delta_points']:+.2f})"
        rows.append(
            [
                r["model"],
                r["provider"],
                str(r["batch_size"]),
                str(r["threads"]),
                f"{m['params']:,}" if m["params"] else "–",
                f"{m['size_bytes'] / 1024:.0f}",
                f"{100 * acc['top1']:.2f}{delta}",
                f"{r['p50_ms']:.3f}",
                f"{r['p90_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                f"{r['throughput']:.0f}",
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
        "batch",
        "threads",
        "params",
        "KiB",
        "top-1 % (Δ pts)",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "samples/s",
        f"speed-up ({percent(report['timing']['confidence'])} CI)",
    ]


def terminal_table(report: dict) -> str:
    names = header(report)
    rows = [names] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(names))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


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
        lines.append(f"- GPU: {gpu['name']}, driver {gpu['driver']}, {gpu['memory']}")
    software = machine["software"]
    lines.append("- Software: " + ", ".join(f"{k} {v}" for k, v in software.items()))
    s, t = report["session"], report["timing"]
    lines.append(
        f"- Sessions: graph optimisation {s['graph_optimization']}, {s['execution_mode']} "
        f"execution, intra-op threads as in the table, inter-op threads {s['inter_op_threads']}"
        + (", GPU inputs/outputs bound on the device (IOBinding)" if s["io_binding"] else "")
        + (", GPU timings include host↔device copies" if s["include_copies"] else "")
    )
    lines.append(
        f"- Timing: {t['warmup']} warm-up runs, then at least {t['min_runs']} runs and "
        f"{t['min_seconds']} s per model and configuration in {t['rounds']} rounds "
        f"alternating with the baseline; {percent(t['confidence'])} intervals."
    )
    return lines


def markdown(report: dict) -> str:
    rows, names = table_rows(report), header(report)
    lines = [
        f"## Latency and accuracy against `{report['baseline']}`",
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
        "A speed-up whose interval contains 1 is marked *within noise*: no difference was shown.",
        "",
        *_model_notes(report),
        "",
    ]
    return "\n".join(lines)


def _model_notes(report: dict) -> list[str]:
    lines = []
    for m in report["models"]:
        for provider, p in m["providers"].items():
            extra = []
            if p["top5"] is not None:
                extra.append(f"top-5 {100 * p['top5']:.2f}%")
            if p.get("agreement_with_baseline") is not None and not m["baseline"]:
                extra.append(f"agrees with the baseline on {100 * p['agreement_with_baseline']:.2f}%")
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


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and accuracy (higher)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_png(report: dict) -> bytes:
    """Accuracy against p50 latency, one point per model and provider, at the first batch size and
    thread count; the baseline ringed, the Pareto front drawn."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch, threads = report["config"]["batch_sizes"][0], report["config"]["threads"][0]
    models = {m["name"]: m for m in report["models"]}
    points, labels, is_base = [], [], []
    for r in report["rows"]:
        if r["batch_size"] == batch and r["threads"] == threads:
            m = models[r["model"]]
            points.append((r["p50_ms"], 100 * m["providers"][r["provider"]]["top1"]))
            labels.append(f"{r['model']} ({r['provider']})")
            is_base.append(m["baseline"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for (lat, acc), label, base in zip(points, labels, is_base):
        ax.scatter(
            [lat],
            [acc],
            s=90 if base else 40,
            facecolors="none" if base else "C0",
            edgecolors="C3" if base else "C0",
            linewidths=2 if base else 1,
            zorder=3,
        )
        ax.annotate(
            label + (" — baseline" if base else ""), (lat, acc), textcoords="offset points", xytext=(6, 4), fontsize=8
        )
    front = pareto_front(points)
    ax.plot(
        [points[i][0] for i in front], [points[i][1] for i in front], "--", color="C2", label="Pareto front", zorder=2
    )
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency, ms (batch {batch}, {threads} thread{'s' if threads > 1 else ''}, log scale)")
    ax.set_ylabel("top-1 accuracy, %")
    ax.set_title("Accuracy against latency")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")  # keep labels that run past the axes
    plt.close(fig)
    return buffer.getvalue()


def html_page(report: dict, png: bytes) -> str:
    """One self-contained file: inline CSS, the plot as a data URI, no network needed."""

    def cells(row, tag):
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row) + "</tr>"

    machine = "".join(f"<li>{html.escape(line[2:])}</li>" for line in _machine_lines(report))
    notes = "".join(f"<li>{html.escape(line[2:])}</li>" for line in _model_notes(report))
    table = cells(header(report), "th") + "".join(cells(r, "td") for r in table_rows(report))
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>compress bench: {html.escape(report["baseline"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}
table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th{{background:#f3f3f3}}td:first-child,td:nth-child(2){{text-align:left}}</style></head>
<body><h1>Latency and accuracy against {html.escape(report["baseline"])}</h1>
<p>Created {html.escape(report["created"])}.</p><ul>{machine}</ul>
<table>{table}</table>
<p>A speed-up whose interval contains 1 is marked <em>within noise</em>: no difference was shown.</p>
<ul>{notes}</ul>
<img id="plot" alt="accuracy against p50 latency" src="data:image/png;base64,{image}">
</body></html>
"""


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
