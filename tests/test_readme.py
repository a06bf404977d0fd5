"""The README's two commands: what they are, and the main one run as written (CI runs it)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from compress.measure.report_model import validate_report

REPO = Path(__file__).resolve().parents[1]
E2E = "COMPRESS_E2E"


def readme_commands() -> list[str]:
    """The commands of the README's 'The two commands' block, without their comments."""
    text = (REPO / "README.md").read_text()
    block = text.split("## The two commands", 1)[1].split("```", 2)[1]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_the_readme_gives_the_demo_and_the_tests_and_ci_runs_the_tests():
    assert readme_commands() == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert "$(BIN)/compress run recipes/demo.toml" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.skipif(
    not os.environ.get(E2E),
    reason=f"runs the README's main command end to end "
    f"(minutes, installs if needed); set {E2E}=1 to run it, as CI does",
)
def test_the_readme_main_command_ends_with_a_report_and_a_second_run_skips_everything():
    command = readme_commands()[0]
    env = {k: v for k, v in os.environ.items() if k != E2E}
    first = subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.rstrip().splitlines()[-1].startswith("report: runs/demo/report/report.html")

    run = REPO / "runs" / "demo"
    report = json.loads((run / "report" / "report.json").read_text())
    validate_report(report)
    assert [m["name"] for m in report["models"]] == ["teacher.onnx", "student.onnx", "student.int8.onnx"]
    teacher, student, int8 = (m["providers"]["cpu"] for m in report["models"])
    assert teacher["top1"] > 0.9 and student["top1"] > 0.9 and int8["top1"] > 0.9
    assert all(m["macs"] for m in report["models"])
    batch64 = {r["model"]: r for r in report["rows"] if r["batch_size"] == 64}
    assert batch64["student.int8.onnx"]["speedup"] > 1  # the student is far smaller than the teacher
    assert (run / "report" / "report.html").stat().st_size > 10_000
    log = json.loads((run / "run.json").read_text())
    assert all(stage["status"] == "done" for stage in log["stages"].values())

    second = subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("skipped, up to date") == len(log["stages"])
