"""What a strip is made of: panels (one stage's array, its formula and provenance) in rows."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from attnviz.geometry import Geometry

__all__ = ["Panel", "Strip", "summary", "TOP_K"]

TOP_K = 5   # indices of the largest values recorded per panel in explain.json

View = Literal["image", "map", "overlay", "bars", "tiles", "text"]


@dataclass
class Panel:
    """One stage of a mechanism: the tensor of this image, how it was obtained, how to draw it."""

    step: str                        # "squeeze", "softmax" ...
    formula: str                     # as in docs/attention.md
    provenance: Literal["native", "derived"]   # native: the module's own tensor; derived: the spec's formula
    source: str                      # module or layer the tensor comes from
    data: np.ndarray                 # the array drawn (float32; an image panel: (H, W, 3) uint8)
    view: View = "map"
    marks: list[tuple[float, float]] = field(default_factory=list)  # map: (row, col) cells; image: (x, y) px
    labels: list[str] = field(default_factory=list)   # tiles: one per tile; text: the lines
    raised: list[int] = field(default_factory=list)   # bars: indices drawn (and named) as raised
    cut: list[int] = field(default_factory=list)      # bars: indices drawn (and named) as cut
    cmap: str = "viridis"
    vmax: list[float] | None = None                   # tiles: each tile's ±scale (features and scaled features)
    note: str = ""                                    # a line drawn under the panel's array
    geometry: Geometry | None = None                  # overlay: where its cells look (drawn as `run` draws)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: step, formula, provenance, source and the array's shape, min, max, top-k indices."""
        return {"step": self.step, "formula": self.formula, "provenance": self.provenance,
                "source": self.source, "view": self.view, **summary(self.data)}


def summary(a: np.ndarray, k: int = TOP_K) -> dict[str, Any]:
    """Shape, min, max and the (multi-)indices of the k largest values of `a`, largest first."""
    a = np.asarray(a, dtype=np.float64)
    flat = np.where(np.isfinite(a), a, -np.inf).ravel()
    order = np.argsort(-flat, kind="stable")[:min(k, flat.size)]
    top = [[int(v) for v in np.unravel_index(i, a.shape)] for i in order]
    finite = a[np.isfinite(a)]
    return {"shape": list(a.shape), "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None, "top_indices": top}


@dataclass
class Strip:
    """One kind, left to right: rows of panels (None leaves a cell empty), the last is the map drawn."""

    kind: str                                  # channel | spatial | mixed | self | cross
    title: str
    rows: list[list[Panel | None]]
    row_labels: list[str] = field(default_factory=list)
    finals: dict[str, Panel] = field(default_factory=dict)   # Analyser map name -> the panel that equals it
    side: Panel | None = None                  # a panel beside every row (mixed: the difference map)
    notes: list[str] = field(default_factory=list)

    def panels(self) -> list[Panel]:
        """Every panel, row by row, the side panel last."""
        return [p for row in self.rows for p in row if p is not None] + ([self.side] if self.side else [])

    def summary(self) -> dict[str, Any]:
        """JSON-ready record of the strip."""
        finals = {id(p): name for name, p in self.finals.items()}
        rows = [{"label": self.row_labels[i] if i < len(self.row_labels) else "",
                 "panels": [dict(p.summary(), final_of=finals.get(id(p))) for p in row if p is not None]}
                for i, row in enumerate(self.rows)]
        out: dict[str, Any] = {"kind": self.kind, "title": self.title, "rows": rows, "notes": self.notes}
        if self.side is not None:
            out["side"] = self.side.summary()
        return out
