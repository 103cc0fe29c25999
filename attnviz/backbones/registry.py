"""The family registry: each family file registers its loader under a name prefix."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from attnviz.backbones.base import Backbone
from attnviz.backbones.weights import WeightsSpec

__all__ = ["Family", "register_family", "registered"]

Loader = Callable[..., Backbone]


@dataclass(frozen=True)
class Family:
    """A registered backbone family: how its names look, what it is, and what it offers."""

    prefix: str                                      # "" (the fallback: bare names), "demo", "clip" ...
    loader: Loader
    summary: str                                     # one line for `attnviz backbones` and --help
    syntax: str                                      # how a name of this family is written
    names: Callable[[], list[str]] | None = None     # the names it offers (may raise AttnvizError)


_FAMILIES: dict[str, Family] = {}


def register_family(prefix: str, *, summary: str, syntax: str,
                    names: Callable[[], list[str]] | None = None) -> Callable[[Loader], Loader]:
    """Register a loader for backbone names `prefix` or `prefix:…` ("" is the fallback)."""
    def wrap(fn: Loader) -> Loader:
        if prefix in _FAMILIES:
            raise ValueError(f"backbone family {prefix!r} is already registered")

        @functools.wraps(fn)
        def loader(name: str, weights: str | WeightsSpec = "DEFAULT", **kw) -> Backbone:
            return fn(name, WeightsSpec.parse(weights), **kw)      # every family gets a parsed spec
        _FAMILIES[prefix] = Family(prefix, loader, summary, syntax, names)
        return loader
    return wrap


def registered() -> list[Family]:
    """Every registered family, in registration order."""
    return list(_FAMILIES.values())
