"""One writer per output folder: OUT/.attnviz.lock names the run that holds it."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from attnviz.errors import AttnvizError

__all__ = ["LOCK_NAME", "locked"]

LOCK_NAME = ".attnviz.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # someone else's live process
        return True
    return True


def _claim(path: Path, me: dict) -> bool:
    """Create the lock holding `me`, complete or not at all: written beside it, then hard-linked into
    place (which fails when the name exists), so no run ever reads a lock still being written and
    takes it for a torn one. Without hard links (some network file systems): create it exclusively."""
    tmp = path.with_name(f"{path.name}.{me['pid']}.tmp")
    try:
        tmp.write_text(json.dumps(me), encoding="utf-8")
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def locked(out: Path, command: str = "") -> Iterator[None]:
    """Hold OUT/.attnviz.lock for the block; a live holder is a one-line refusal, a dead one is taken over."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(3):
        if not _claim(path, me):
            try:
                other = json.loads(path.read_text(encoding="utf-8"))
                pid, host = int(other["pid"]), str(other["host"])
            except (OSError, ValueError, KeyError, TypeError):
                other, pid, host = {}, -1, me["host"]     # a torn lock file: its writer died mid-write
            if host == me["host"] and (pid < 0 or not _alive(pid)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()                         # a stale lock of a dead run: take it over
                continue
            raise AttnvizError(
                f"{out} is in use by another attnviz run (pid {pid} on {host}, started "
                f"{other.get('started', '?')}: {other.get('command') or '?'}); wait for it to finish, "
                f"or write to another -o") from None
        break
    else:
        raise AttnvizError(f"{out}: cannot take the lock {path}")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if json.loads(path.read_text(encoding="utf-8")).get("pid") == me["pid"]:
                path.unlink()
