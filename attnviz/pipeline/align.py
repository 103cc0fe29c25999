"""Receptive-field alignment for an Analyser: each convolutional layer's measured cell centres.

A layer laid out NCHW (a convolutional stack) is measured once per backbone, weights, layer and
input size (`probes.receptive`, cached in memory; pretrained weights also on disk under the
user cache). Token grids (NLC, NHWC: ViT, Swin) keep the exact patch centres. Every map gets
its layer's mapping in `meta["geometry"]` — the manifest's per-layer record.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from attnviz.backbones import Backbone
from attnviz.geometry import Geometry
from attnviz.probes.receptive import fingerprint, measure_geometry
from attnviz.results import AttentionMap

__all__ = ["Aligner", "EXACT", "cache_dir"]

EXACT = {"method": "exact", "note": "token grid: each cell at its patch's centre"}


def cache_dir() -> Path:
    """$ATTNVIZ_CACHE, else $XDG_CACHE_HOME/attnviz, else ~/.cache/attnviz (read now, not at import)."""
    env = os.environ
    root = env.get("ATTNVIZ_CACHE") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "attnviz")
    return Path(root) / "geometry"


class Aligner:
    """Measured geometries of one backbone's layers, made on first use (off: none, as before)."""

    def __init__(self, backbone: Backbone, enabled: bool = True) -> None:
        self.backbone = backbone
        self.enabled = enabled
        self.geometries: dict[str, Geometry | None] = {}
        self.notes: list[str] = []

    def geometry(self, layer: str, grid: Sequence[int] | None = None) -> Geometry | None:
        """The geometry of `layer` (None: not measurable or not asked for, i.e. block centres)."""
        bb = self.backbone
        info = bb.layers.get(layer)
        if not self.enabled or info is None or info.layout.kind != "NCHW" or info.grid == (1, 1):
            return None
        if grid is not None and tuple(grid) != tuple(info.grid):
            return None
        if layer not in self.geometries:
            self.geometries[layer] = self._load(layer) or self._measure(layer)
        return self.geometries[layer]

    def record(self, m: AttentionMap) -> dict | None:
        """The mapping used for map `m` (manifest `geometry`), or None for plain block centres."""
        g = self.geometry(m.layer, m.shape)
        if g is not None:
            return g.record()
        bb = self.backbone
        info = bb.layers.get(m.layer)
        token_grid = bb.tokens is not None and tuple(bb.tokens[1]) == m.shape
        if token_grid or (info is not None and info.layout.kind in ("NLC", "NHWC") and info.grid == m.shape):
            return dict(EXACT)
        return None

    def stamp(self, maps: Sequence[AttentionMap]) -> None:
        """Put each map's mapping in its meta (a kind's own record wins)."""
        if not self.enabled:
            return
        for m in maps:
            if "geometry" not in m.meta:
                rec = self.record(m)
                if rec is not None:
                    m.meta["geometry"] = rec

    def _key(self, layer: str) -> str:
        bb = self.backbone
        # the weights' own fingerprint too: a file path (`-w model.pt`) may hold other weights next time
        raw = json.dumps([bb.name, bb.weights, layer, bb.input_size, list(bb.layers[layer].grid),
                          fingerprint(bb.model)])
        return hashlib.sha256(raw.encode()).hexdigest()[:24]

    def _load(self, layer: str) -> Geometry | None:
        """A pretrained backbone's geometry from the disk cache (random inits are never cached there)."""
        if not self.backbone.pretrained:
            return None
        try:
            return Geometry.from_record(json.loads((cache_dir() / f"{self._key(layer)}.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _measure(self, layer: str) -> Geometry | None:
        bb = self.backbone
        info = bb.layers[layer]
        try:
            g = measure_geometry(bb.model, layer, info.layout, info.grid, bb.input_size,
                                 key=(bb.name, bb.weights), device=bb.device)
        except Exception as e:  # noqa: BLE001  (a model we cannot differentiate: keep block centres)
            self.notes.append(f"cells of {layer} at block centres: measuring failed ({type(e).__name__})")
            return None
        if bb.pretrained:
            self._save(layer, g)
        return g

    def _save(self, layer: str, g: Geometry) -> None:
        path = cache_dir() / f"{self._key(layer)}.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(g.record()))
            os.replace(tmp, path)
        except OSError:
            pass   # a read-only cache only costs a re-measurement next time
