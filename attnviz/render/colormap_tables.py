"""matplotlib's colormap tables on disk, so that drawing does not import matplotlib (~0.2 s).

An entry is the (N, 3) uint8 table matplotlib itself made (`render.overlay.colormap_lut`), saved
under `cache_root()/colormaps/`, keyed by the colormap's name, matplotlib's version and where it
is installed, and the size and time of its colormap data files: another matplotlib (an upgrade,
another environment) never reads this one's entries. Only built-in colormaps are written (a name
registered at run time may mean another table in another process). Entries are written whole
(`attnviz.cache.put`), so two processes at once are safe; anything unreadable is a miss.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from attnviz.cache import cache_root, put

__all__ = ["FORMAT", "folder", "matplotlib_folder", "matplotlib_identity", "read", "write"]

FORMAT = "colormap-lut-1"       # part of every key: a change of what is stored starts afresh
_DATA = ("_version.py", "_cm.py", "_cm_listed.py", "colors.py")   # what a table is made from


def folder() -> Path:
    """The colormap entries of attnviz's disk cache."""
    return cache_root() / "colormaps"


def matplotlib_folder() -> Path | None:
    """matplotlib's package folder, found without importing it (~0.2 s); None when it is not installed."""
    try:
        spec = importlib.util.find_spec("matplotlib")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def matplotlib_identity() -> list | None:
    """matplotlib's version, folder and data files' (size, mtime), found without importing it;
    None when it cannot be told (no cache is used then)."""
    root = matplotlib_folder()
    if root is None:
        return None
    try:
        version = re.search(r"""version\s*=\s*["']([^"']+)["']""", (root / "_version.py").read_text())
        if version is None:
            return None
        stats = [(f, (st.st_size, st.st_mtime_ns)) for f in _DATA for st in [os.stat(root / f)]]
    except (OSError, ImportError, ValueError):
        return None
    return [version.group(1), str(root), stats]


def _path(name: str) -> Path | None:
    ident = matplotlib_identity()
    if ident is None:
        return None
    key = hashlib.sha256(json.dumps([FORMAT, name, ident]).encode()).hexdigest()[:32]
    return folder() / f"{key}.npy"


def read(name: str) -> np.ndarray | None:
    """The cached table of colormap `name` (N, 3) uint8, or None (not there, unreadable, other matplotlib)."""
    path = _path(name)
    if path is None:
        return None
    try:
        lut = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    ok = lut.dtype == np.uint8 and lut.ndim == 2 and lut.shape[1] == 3 and lut.shape[0] >= 2
    return lut if ok else None


def write(name: str, lut: np.ndarray) -> None:
    """Save matplotlib's table of built-in colormap `name` (atomically; a read-only cache is fine)."""
    path = _path(name)
    if path is None:
        return
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(lut, dtype=np.uint8), allow_pickle=False)
    put(path, buf.getvalue())
