"""Progress for long work: a live bar on a terminal, one plain line per epoch in logs and CI."""

from __future__ import annotations

import sys

from tqdm import tqdm


def log(message: str) -> None:
    """A line on stderr that does not break a live progress bar."""
    tqdm.write(message, file=sys.stderr)


def on_terminal() -> bool:
    return sys.stderr.isatty()


def step_bar(total: int, description: str) -> tqdm:
    """A per-step bar (shows loss, accuracy and ETA as postfix) that is silent off a terminal."""
    return tqdm(
        total=total,
        desc=description,
        unit="step",
        leave=False,
        file=sys.stderr,
        disable=not on_terminal(),
        dynamic_ncols=True,
    )
