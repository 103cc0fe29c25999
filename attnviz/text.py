"""Words and file-safe names for prompts (shared by every kind that takes text), names shown as
data, and the small files options name (--text-file, --boxes, a manifest) read safely."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from attnviz.errors import AttnvizError

__all__ = ["words", "slug", "unique", "printable", "shown", "raw_bytes", "kind_of", "read_small", "read_prompts",
           "PROMPTS_LIMIT"]

PROMPTS_LIMIT = 1 << 20           # --text-file: 1 MiB (tens of thousands of prompts)


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


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_small(path: str | Path, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; anything else is one line naming `what`.

    Opened without blocking and checked on the open file: a FIFO never hangs the run, /dev/zero is
    refused at once, and a file that grows past `limit` while read is refused too."""
    shown_path = shown(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise AttnvizError(f"{what} {shown_path}: cannot read it ({e.strerror or e})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise AttnvizError(f"{what} {shown_path}: {kind_of(mode)}, not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            # sized by the file, not by `limit`: read(limit + 1) allocates the whole limit up front
            # (4 GiB for a manifest), which a machine without memory overcommit refuses
            parts = [f.read(min(os.fstat(fd).st_size, limit) + 1)]
            size = len(parts[0])
            while size <= limit:               # it grew while read: the rest, up to the limit
                parts.append(f.read(min(1 << 16, limit + 1 - size)))
                if not parts[-1]:
                    break
                size += len(parts[-1])
            data = b"".join(parts) if any(parts[1:]) else parts[0]
        except OSError as e:
            raise AttnvizError(f"{what} {shown_path}: cannot read it ({e.strerror or e})") from None
    if len(data) > limit:
        raise AttnvizError(f"{what} {shown_path}: larger than {limit:,} bytes; is it the right file?")
    return data


def read_prompts(path: str | Path) -> list[str]:
    """--text-file: one prompt per line, blank lines and '#' comments skipped (UTF-8, ≤ 1 MiB)."""
    try:
        lines = read_small(path, "--text-file", PROMPTS_LIMIT).decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise AttnvizError(f"--text-file {shown(str(path))}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    prompts = [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]
    if not prompts:
        raise AttnvizError(f"--text-file {shown(str(path))}: no prompts in it")
    return prompts
