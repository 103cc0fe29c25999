"""CLI options made from the settings schema (attnviz.settings): flags, default, help and limits in one place."""
from __future__ import annotations

from typing import Any, Callable

import typer

from attnviz.cli.common import colormap_option, query_option
from attnviz.settings import SCHEMA

__all__ = ["option", "CALLBACKS"]

# settings the terminal parses before the Python API sees them (their text form: "X,Y", a colormap name)
CALLBACKS: dict[str, Callable[..., Any]] = {"colormap": colormap_option, "query": query_option}

_UNSET: Any = object()


def option(name: str, *, default: Any = _UNSET, help: str | None = None) -> Any:
    """The typer.Option of setting `name`: its flags, default, help, limits and parser from the schema.

    `default=...` makes it required; `help` rewords it for another command (the limits stay)."""
    s = SCHEMA[name]
    if default is _UNSET:
        default = (not s.default) if s.invert else (None if s.many else s.default)
        if isinstance(default, tuple):
            default = None
    kw: dict[str, Any] = {}
    if s.min is not None:
        kw["min"] = s.min
    if s.max is not None:
        kw["max"] = s.max
    if name in CALLBACKS:
        kw["callback"] = CALLBACKS[name]
    return typer.Option(default, *s.flags, help=help or s.help, **kw)
