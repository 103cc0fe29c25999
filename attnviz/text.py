"""Words and file-safe names for prompts (shared by every kind that takes text)."""
from __future__ import annotations

import re

__all__ = ["words", "slug", "unique", "printable", "shown", "raw_bytes"]


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


# control characters (C0, DEL, C1) as \xNN: a file named "a\nb" or "\x1b[2J…" prints on one line, inert,
# and draws in a picture (a newline or CR makes Pillow's text layout fail)
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7f, 0xa0)]}


def shown(text: str) -> str:
    """`text` as printed and drawn: valid UTF-8 (`printable`), control characters escaped."""
    return printable(str(text)).translate(_CONTROL)


def raw_bytes(text: str) -> bytes | None:
    """The file-system bytes of a name that is not valid UTF-8 (None when it is)."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
