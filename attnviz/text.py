"""Words and file-safe names for prompts (shared by every kind that takes text)."""
from __future__ import annotations

import re

__all__ = ["words", "slug", "unique", "printable", "raw_bytes"]


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


def printable(text: str) -> str:
    """`text` as valid UTF-8: bytes a file name could not decode (surrogate escapes) become `\\xNN`."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def raw_bytes(text: str) -> bytes | None:
    """The file-system bytes of a name that is not valid UTF-8 (None when it is)."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
