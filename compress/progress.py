"""Progress for long work: a live bar on a terminal, silent in logs and CI (where the epoch lines
of the ``compress`` logger say the same)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


def step_bar(total: int, description: str, shown: bool = True) -> tqdm:
    """A per-step bar (shows loss, accuracy and ETA as postfix) that is silent off a terminal, and
    where not ``shown`` (processes other than the first of a distributed run)."""
    return tqdm(
        total=total,
        desc=description,
        unit="step",
        leave=False,
        file=sys.stderr,
        disable=not (shown and on_terminal()),
        dynamic_ncols=True,
    )
