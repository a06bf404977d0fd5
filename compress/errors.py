"""The one error type a user can cause and fix, and the one place foreign errors become it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

# Library messages that tell the user to load a file with code execution allowed.
UNSAFE_ADVICE = re.compile(r"weights_only|allow_pickle|safe_globals", re.IGNORECASE)


class CompressError(Exception):
    """A problem with the user's input or environment.

    The message says what went wrong and what to do about it; the CLI prints it on one line
    and exits with status 2, without a traceback.
    """


def first_line(exc: BaseException, limit: int = 200, typed: bool = False) -> str:
    """The first line of an exception's message (its type when it has none), at most ``limit`` long;
    ``typed`` puts the type in front (``ValueError: bad size``), for errors raised by user code."""
    text = str(exc).strip()
    if UNSAFE_ADVICE.search(text):
        # torch's "re-run with weights_only=False", numpy's "allow_pickle": never pass that advice on
        text = (
            "it holds Python objects beyond tensors and plain data, which compress never unpickles: they could run code"
        )
    line = text.splitlines()[0] if text else ""
    if typed or not line:
        line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line[:limit]


@contextlib.contextmanager
def foreign_errors(what: str, advice: str, limit: int = 200, typed: bool = False) -> Iterator[None]:
    """Any exception but a ``CompressError`` raised inside becomes one:
    ``{what} ({its first line}); {advice}``. For calls into libraries that fail in many ways
    on input they cannot handle (torch.load, the exporters, onnxruntime, Torch-Pruning), or for
    the user's own code (``typed``: the exception's type is named too)."""
    try:
        yield
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"{what} ({first_line(exc, limit, typed)}); {advice}") from None
