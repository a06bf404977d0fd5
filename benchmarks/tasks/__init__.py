"""Task sections of ``benchmarks/tasks_mnist.py``: one module per section, ``run(data_dir, work, quick)``
returning the section's markdown lines; helpers shared by the sections."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
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
        print("$ " + shlex.join(command + resume), flush=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        subprocess.run([sys.executable, "-m", *command, *resume], check=True, env=env)
    return json.loads(manifest_path(out).read_text()), shlex.join(command)
