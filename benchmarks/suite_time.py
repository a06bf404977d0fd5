"""Wall time of the README's test command (`make test`) at two revisions, and of `compress --help`.

    python benchmarks/suite_time.py --before 40f702a --after HEAD --rounds 2

Each revision is cloned fresh into a temporary folder and its virtual environment made by
`make .venv/.installed` (not timed); then `make test` runs in rounds alternating between the two
clones, so that both see the same machine load, and `compress --help` is timed the same way.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, machine, write_section

SECTION = "suite_time"


def prepare(revision: str, folder: Path) -> str:
    subprocess.run(["git", "clone", "-q", str(REPO), str(folder)], check=True)
    subprocess.run(["git", "-C", str(folder), "checkout", "-q", revision], check=True)
    subprocess.run(["make", ".venv/.installed"], cwd=folder, check=True, capture_output=True)
    return subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def timed(command: list[str], folder: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {folder}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the earlier revision")
    parser.add_argument("--after", default="HEAD", help="the later revision")
    parser.add_argument("--rounds", type=int, default=2, help="make test runs per revision, alternating")
    parser.add_argument("--help-runs", type=int, default=5, help="compress --help runs per revision")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="suite_time.") as work:
        folders = {"before": Path(work) / "before", "after": Path(work) / "after"}
        names = {side: prepare(getattr(options, side), folder) for side, folder in folders.items()}
        suite: dict[str, list[float]] = {side: [] for side in folders}
        tests: dict[str, str] = {}
        for _ in range(options.rounds):
            for side, folder in folders.items():
                seconds, out = timed(["make", "test"], folder)
                suite[side].append(seconds)
                tests[side] = re.findall(r"\d+ passed(?:, \d+ skipped)?", out)[-1]
        startup: dict[str, list[float]] = {side: [] for side in folders}
        for _ in range(options.help_runs):
            for side, folder in folders.items():
                startup[side].append(timed([".venv/bin/compress", "--help"], folder)[0])

    rows = [
        "| revision | `make test` wall time, each round | tests | `compress --help`, median (min–max) |",
        "| --- | --- | --- | --- |",
    ]
    for side in folders:
        rounds = ", ".join(f"{s:.1f} s" for s in suite[side])
        help_s = startup[side]
        rows.append(
            f"| {side}: {names[side]} | {rounds} | {tests[side]} | {1e3 * statistics.median(help_s):.0f} ms "
            f"({1e3 * min(help_s):.0f}–{1e3 * max(help_s):.0f}) |"
        )
    body = [
        "## Test-suite wall time (`benchmarks/suite_time.py`)",
        "",
        f"Command: `python benchmarks/suite_time.py --before {options.before} --after {options.after} "
        f"--rounds {options.rounds}` ({time.strftime('%Y-%m-%d')}).",
        f"Machine: {machine()}.",
        "",
        "Fresh clones, virtual environments made first (not timed); `make test` and `compress --help` timed in "
        "rounds alternating between the two revisions.",
        "",
        *rows,
    ]
    write_section(RESULTS, SECTION, body)


if __name__ == "__main__":
    main()
