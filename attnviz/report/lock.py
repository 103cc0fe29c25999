"""One writer per output folder: OUT/.attnviz.lock names the run that holds it.

The exclusion is an `flock` held on the open lock file for the run's whole life: the kernel gives
it to one process at a time and releases it when that process ends, however it ends (SIGKILL
included). So there is nothing to "take over": a lock file left by a dead run, or a torn one, is
simply locked by the next run, atomically — no read, decide, unlink and claim with a gap between.
The file's text (pid, host, command, start) is only there to name the holder in the refusal.
Where the file system has no flock (some network file systems), the lock falls back to creating
the file exclusively and to taking over a dead holder's by a rename that only one contender wins.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from attnviz.errors import AttnvizError

try:
    import fcntl
except ImportError:                  # not on POSIX: the exclusive-create fallback only
    fcntl = None                     # type: ignore[assignment]

__all__ = ["LOCK_NAME", "locked", "check_folder"]

LOCK_NAME = ".attnviz.lock"
_READ_TRIES = 50                     # a holder writes its text just after locking: wait up to 0.5 s for it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # someone else's live process
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The holder's record, read as soon as it is complete ({} if it never is; None once the file
    is gone: the holder has finished)."""
    for _ in range(_READ_TRIES):
        try:
            other = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(other, dict) and "pid" in other:
                return other
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return {}


def _busy(out: Path, other: dict) -> AttnvizError:
    return AttnvizError(
        f"{out} is in use by another attnviz run (pid {other.get('pid', '?')} on {other.get('host', '?')}, "
        f"started {other.get('started', '?')}: {other.get('command') or '?'}); wait for it to finish, "
        f"or write to another -o")


def _flock(path: Path, me: dict, out: Path) -> int | None:
    """Open and flock the lock file; the fd held (None: this file system has no flock).

    After locking, the file must still be the one at `path` (a holder unlinks it on release, and
    a run that opened it before then would otherwise lock a file no one else sees)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = _holder(path)
            if other is None:                       # released while we looked: try again
                continue
            raise _busy(out, other) from None
        except OSError:                             # ENOLCK, EOPNOTSUPP: no flock here
            os.close(fd)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:                                # released and unlinked meanwhile: lock the new one
            os.close(fd)
            continue
        data = json.dumps(me).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        return fd


def _exclusive(path: Path, me: dict, out: Path) -> None:
    """Without flock: create the lock exclusively (written beside it, then hard-linked into place,
    so it appears whole). A dead holder's (on this host) is renamed aside under a name of our own;
    only one contender's rename finds it, and one whose rename took a live holder's puts it back."""
    tmp = path.with_name(f"{path.name}.{me['pid']}.tmp")
    try:
        tmp.write_text(json.dumps(me), encoding="utf-8")
        for _ in range(3):
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                pass
            other = _holder(path) or {}
            pid = other.get("pid") if isinstance(other.get("pid"), int) else -1
            if other.get("host", me["host"]) != me["host"] or (pid >= 0 and _alive(pid)):
                raise _busy(out, other)
            aside = path.with_name(f"{path.name}.{me['pid']}.stale.tmp")
            with contextlib.suppress(OSError):
                os.rename(path, aside)
                taken = _holder(aside)
                if taken != other:                  # a live run claimed it in between: give it back
                    os.link(aside, path)
                os.unlink(aside)
        raise AttnvizError(f"{out}: cannot take the lock {path}")
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def check_folder(out: Path) -> None:
    """OUT can be a run's folder: absent (created by `locked`) or a folder, never a file."""
    if out.exists() and not out.is_dir():
        raise AttnvizError(f"-o {out}: exists and is not a folder")


@contextlib.contextmanager
def locked(out: Path, command: str = "") -> Iterator[None]:
    """Hold OUT/.attnviz.lock for the block; a live holder is a one-line refusal, a dead one's is taken.

    Folders it creates for OUT are removed again when the block leaves them empty (a run that
    stopped before writing anything, e.g. on an unknown backbone, leaves nothing behind)."""
    created = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    fd = _flock(path, me, out) if fcntl is not None else None
    if fd is None:
        _exclusive(path, me, out)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if fd is not None:
                path.unlink()                       # while still locked: the next run locks a new file
            elif json.loads(path.read_text(encoding="utf-8")).get("pid") == me["pid"]:
                path.unlink()
        if fd is not None:
            os.close(fd)
        for folder in created:               # deepest first; rmdir refuses a folder that holds anything
            with contextlib.suppress(OSError):
                folder.rmdir()
