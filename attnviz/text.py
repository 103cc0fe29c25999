"""Words and file-safe names for prompts (shared by every kind that takes text)."""
from __future__ import annotations

import re

__all__ = ["words", "slug", "unique"]


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words ("Jack-o'-lantern" -> jack, o, lantern)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe name for a prompt ("a tabby cat!" -> "a-tabby-cat")."""
    return "-".join(words(text))[:limit].strip("-")


def unique(name: str, used: set[str]) -> str:
    """`name`, or `name-2`, `name-3` … if already in `used`; records the result in `used`."""
    base, k = name, 2
    while name in used:
        name, k = f"{base}-{k}", k + 1
    used.add(name)
    return name
