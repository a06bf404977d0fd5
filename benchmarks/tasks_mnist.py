"""Task sections on real MNIST: each a module of benchmarks/tasks/, run by name.

    python benchmarks/tasks_mnist.py --data ../shared/data/mnist --tasks adversarial,mutual
    python benchmarks/tasks_mnist.py --data ../shared/data/mnist --tasks adversarial --quick   # smoke run

A section ``benchmarks/tasks/<name>.py`` defines ``run(data_dir, work, quick) -> list[str]``: it runs its
``compress`` commands (finished checkpoints in ``work`` are reused, so an interrupted benchmark continues)
and returns its markdown (a ``## `` heading, the table, what was tuned, every command). Each section is
written to benchmarks/RESULTS.md as ``tasks_mnist_<name>``, after this script's command line and the
machine. ``--quick`` runs tiny epochs to check that a section works: its checkpoints go to their own folder
and its figures to a file of their own (``--results``), never over the real ones.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import shlex
import sys
import time
from pathlib import Path

from common import RESULTS, machine, write_section

TASKS = Path(__file__).resolve().parent / "tasks"


def available() -> list[str]:
    """The section modules: those that define ``run`` (a module of shared code, such as mosaics, is none)."""
    return sorted(
        module.name
        for module in pkgutil.iter_modules([str(TASKS)])
        if "\ndef run(" in (TASKS / f"{module.name}.py").read_text()
    )


def load(name: str):
    """The section module ``tasks.<name>``, imported only now; a clear error when there is none."""
    if name not in available():
        sys.exit(f"error: no task section {name!r} (benchmarks/tasks/{name}.py); available: {', '.join(available())}")
    module = importlib.import_module(f"tasks.{name}")
    if not callable(getattr(module, "run", None)):
        sys.exit(f"error: benchmarks/tasks/{name}.py defines no run(data_dir, work, quick)")
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the folder of the four MNIST IDX files")
    parser.add_argument("--tasks", required=True, help=f"comma-separated sections to run: {', '.join(available())}")
    parser.add_argument("--work", default=None, help="checkpoints (default: runs/bench/tasks_mnist[-quick])")
    parser.add_argument("--quick", action="store_true", help="tiny epochs: check that the sections work")
    parser.add_argument(
        "--results",
        default=None,
        help="markdown file written (default: benchmarks/RESULTS.md; "
        "with --quick, RESULTS.quick.md in the work folder)",
    )
    options = parser.parse_args()
    if not Path(options.data).is_dir():
        sys.exit(f"error: MNIST folder {options.data} not found; pass --data DIR")
    names = [name.strip() for name in options.tasks.split(",") if name.strip()]
    sections = [(name, load(name)) for name in names]  # every name checked before anything runs
    work = Path(options.work or Path("runs", "bench", "tasks_mnist-quick" if options.quick else "tasks_mnist"))
    default_results = work / "RESULTS.quick.md" if options.quick else RESULTS
    results = Path(options.results) if options.results else default_results
    data = str(Path(options.data).resolve())
    command = shlex.join(["python", "benchmarks/tasks_mnist.py", *sys.argv[1:]])
    for name, module in sections:
        started = time.perf_counter()
        lines = module.run(data, work / name, options.quick)
        minutes = (time.perf_counter() - started) / 60
        heading, rest = (lines[:1], lines[1:]) if lines and lines[0].startswith("## ") else ([], lines)
        header = [
            "",
            f"Command: `{command}` ({time.strftime('%Y-%m-%d')}; {minutes:.1f} min of wall time in this "
            "invocation, where a checkpoint finished by an earlier one is reused, not made again).",
            f"Machine: {machine()}.",
        ]
        results.parent.mkdir(parents=True, exist_ok=True)
        write_section(results, f"tasks_mnist_{name}", [*heading, *header, *rest])


if __name__ == "__main__":
    main()
