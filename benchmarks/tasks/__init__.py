"""Task sections of ``benchmarks/tasks_mnist.py``: one module per section, ``run(data_dir, work, quick)``
returning the section's markdown lines; helpers shared by the sections."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def compress(args: list[str], out: Path) -> tuple[dict, str]:
    """``compress ARGS --out OUT`` in a subprocess (``python -m compress``, this repository first on the path);
    returns the manifest written beside OUT and the command as recorded in a section.

    A checkpoint finished earlier (its manifest is there) is reused as it is; one cut short (its resume state
    is there) is continued with ``--resume``, so an interrupted benchmark goes on where it stopped."""
    from compress.artifacts import manifest_path, resume_path

    out.parent.mkdir(parents=True, exist_ok=True)
    command = ["compress", *args, "--out", str(out)]
    if not manifest_path(out).exists():
        resume = ["--resume"] if resume_path(out).exists() else []
        run_command(command + resume, check=True)
    return json.loads(manifest_path(out).read_text()), shlex.join(command)


def run_command(command: list[str], **options) -> subprocess.CompletedProcess:
    """``compress ...`` (``command``) printed, then run as ``python -m compress`` with this repository first on
    the path; ``options`` go to ``subprocess.run``."""
    print("$ " + shlex.join(command), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", *command], env=env, **options)


@dataclass(frozen=True)
class Net:
    """A network of a section: its name in tables, its model spec and its KEY=VALUE model arguments."""

    label: str
    spec: str
    args: tuple[str, ...]

    def name(self) -> str:
        return "-".join([self.spec, *(arg.replace("=", "").replace(",", "-") for arg in self.args)])

    def model_args(self, flag: str = "--model-arg") -> list[str]:
        return [item for arg in self.args for item in (flag, arg)]

    def flags(self) -> list[str]:
        return ["--model", self.spec, *self.model_args()]
