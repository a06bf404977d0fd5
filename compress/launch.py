"""What torchrun told this process, read from the environment alone (no torch import: the commands
that never train ask too)."""

from __future__ import annotations

import os

from .errors import CompressError

TORCHRUN_HINT = "start distributed runs with torchrun, e.g. torchrun --nproc-per-node 2 -m compress distill ..."


def launched_size() -> int:
    """How many processes torchrun started (1 without torchrun)."""
    return env_int("WORLD_SIZE", 1)


def reports() -> bool:
    """Whether this process says what a command did: always, except the ranks after the first under torchrun."""
    return launched_size() <= 1 or os.environ.get("RANK", "0") == "0"


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise CompressError(f"environment variable {name}={raw!r} is not a whole number; {TORCHRUN_HINT}") from None
    if value < 0:
        raise CompressError(f"environment variable {name}={raw!r} is negative; {TORCHRUN_HINT}")
    return value


def refuse_if_launched(command: str) -> None:
    """Stages that do not train run in one process: several copies would write the same files."""
    size = launched_size()
    if size > 1:
        raise CompressError(
            f"compress {command} runs in one process, but torchrun started {size}; "
            "run it without torchrun (only train, distill and prune train in parallel)"
        )
