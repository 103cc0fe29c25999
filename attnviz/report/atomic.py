"""Atomic writes: a file is either its old content or its complete new content, never half."""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

__all__ = ["write_atomic", "save_png", "save_npz", "save_json"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write via a temporary file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)     # mkstemp makes 0600; outputs are ordinary files
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)      # a full disk fails in write() with no path: name the file
        raise


def save_png(path: Path, image: Image.Image) -> None:
    """Save a PIL image as PNG, atomically."""
    write_atomic(path, lambda f: image.save(f, format="PNG", compress_level=3))


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays to an .npz (compressed), atomically."""
    write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


def strict(obj: Any) -> Any:
    """`obj` with every NaN and ±Inf float replaced by None: strict JSON parsers refuse bare NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def save_json(path: Path, obj: Any) -> None:
    """Save strict JSON (UTF-8, indented; no NaN), atomically."""
    text = json.dumps(strict(obj), indent=2, ensure_ascii=False, allow_nan=False)
    data = text.encode("utf-8", "backslashreplace") + b"\n"   # a stray surrogate never aborts a save
    write_atomic(path, lambda f: f.write(data))
