"""Helpers shared by the benchmark scripts: the machine line and the RESULTS.md sections."""

from __future__ import annotations

import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"


def machine() -> str:
    """CPU, cores and the versions that shape the figures."""
    import numpy
    import onnxruntime
    import torch

    from compress.hardware import cpu_info

    cpu = cpu_info()
    flags = ", ".join(cpu.describe()["flags"]) or "flags unknown"
    return (
        f"{cpu.model} ({flags}), {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {numpy.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}"
    )


def commands_block(commands: list[str]) -> list[str]:
    """A folded list of the commands that made a table."""
    return [
        "<details><summary>Every command the table is made of</summary>",
        "",
        *[f"    {c}" for c in commands],
        "",
        "</details>",
    ]


def write_section(path: Path, section: str, body: list[str]) -> None:
    """Replace the part of ``path`` between ``<!-- section:begin/end -->`` (or append it)."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = "\n".join([begin, *body, end])
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    print(block)
    print(f"wrote {path}")
