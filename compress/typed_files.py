"""What the typed files (manifests, bench reports) share: a timestamp type, and the one line that
says where a file breaks its schema."""

from __future__ import annotations

import datetime as _dt
from typing import Annotated

from pydantic import AfterValidator, ValidationError
from pydantic_core import PydanticCustomError


def _iso_datetime(text: str) -> str:
    try:
        _dt.datetime.fromisoformat(text)
    except ValueError:
        raise PydanticCustomError("datetime_format", "Input should be an ISO 8601 date and time") from None
    return text


IsoDatetime = Annotated[str, AfterValidator(_iso_datetime)]


def problem_line(exc: ValidationError) -> str:
    """The first problem, as ``field.path[0].name: message``, on one line (``and N more`` if more)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = field_path(first["loc"]) or "(top level)"
    if first["type"] in ("model_type", "dict_type"):
        message = "Input should be a JSON object"
    else:
        message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return " ".join(f"{where}: {message}{more}".split())


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("rows", 0, "p50_ms")`` -> ``rows[0].p50_ms``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            text += " (key)"
        else:
            text += f".{part}" if text else str(part)
    return text
