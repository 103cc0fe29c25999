"""A video's completed batches on disk (OUT/<video>/.parts/part-NNNNN.npz), so that a rerun after an
interruption continues from the last complete batch instead of the first frame.

Each part holds the raw maps and channel weights of one batch of frames and their records (time,
top-1, peaks, each map's kind/provenance/layer/meta), written atomically; `key` ties the parts to
the run's settings and the video's content: parts of another run or another file are never used.
The parts go once the video's record is written.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from attnviz.report.atomic import save_npz

__all__ = ["PARTS", "save_part", "load_parts", "remove_parts"]

PARTS = ".parts"


def _path(folder: Path, k: int) -> Path:
    return folder / PARTS / f"part-{k:05d}.npz"


def save_part(folder: Path, k: int, key: str, records: list[dict[str, Any]],
              raws: dict[str, list[np.ndarray]], weights: dict[str, list[np.ndarray]]) -> None:
    """Write part `k`: one batch's frame records and, per map name, its raw maps and weights."""
    arrays: dict[str, np.ndarray] = {f"raw__{n}": np.stack(v).astype(np.float32) for n, v in raws.items()}
    arrays.update({f"weights__{n}": np.stack(v).astype(np.float32) for n, v in weights.items()})
    text = json.dumps({"key": key, "records": records}, allow_nan=True)
    arrays["record"] = np.frombuffer(text.encode("utf-8"), np.uint8)
    save_npz(_path(folder, k), arrays)


def load_parts(folder: Path, key: str) -> list[dict[str, Any]]:
    """The consecutive parts from the first whose key is `key`: {records, raws, weights} each; stops
    at the first missing, damaged or foreign one (its frames are computed again)."""
    parts = []
    for k in range(1 << 30):
        path = _path(folder, k)
        if not path.is_file():
            break
        try:
            with np.load(path) as z:
                head = json.loads(bytes(z["record"]).decode("utf-8"))
                if head.get("key") != key:
                    break
                raws = {f[5:]: z[f] for f in z.files if f.startswith("raw__")}
                weights = {f[9:]: z[f] for f in z.files if f.startswith("weights__")}
        except Exception:  # noqa: BLE001  (a part cut by a crash: redo from here)
            break
        n = len(head["records"])
        if not n or any(len(v) != n for v in (*raws.values(), *weights.values())):
            break
        parts.append({"records": head["records"], "raws": raws, "weights": weights})
    return parts


def remove_parts(folder: Path) -> None:
    """Delete the parts (the video's files and record are complete)."""
    with contextlib.suppress(OSError):
        shutil.rmtree(folder / PARTS)
