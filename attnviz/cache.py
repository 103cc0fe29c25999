"""attnviz's disk cache: one folder for everything that is expensive to remake and safe to reuse.

`cache_root()` is $ATTNVIZ_CACHE, else $XDG_CACHE_HOME/attnviz, else ~/.cache/attnviz (read at
each call, not at import). Each user of the cache keeps its own sub-folder (receptive fields in
`geometry/`, colormap tables in `colormaps/`) and keys its entries by everything the content depends
on. Entries are written whole or not at all (`put`: a temporary file then a rename), so two
processes filling the cache at once never read a half-written entry; a cache that cannot be
written only costs the work again next time.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["cache_root", "put"]


def cache_root() -> Path:
    """$ATTNVIZ_CACHE, else $XDG_CACHE_HOME/attnviz, else ~/.cache/attnviz (read now, not at import)."""
    env = os.environ
    return Path(env.get("ATTNVIZ_CACHE") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "attnviz"))


def put(path: Path, data: bytes) -> bool:
    """Write `data` to `path` atomically (a temporary file of this process and thread, then a rename);
    False when the cache cannot be written (read-only, full): the caller just goes on."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return False
