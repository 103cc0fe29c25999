"""Receptive-field alignment for an Analyser: each convolutional layer's measured receptive fields.

A layer laid out NCHW (a convolutional stack) is measured once per architecture, weights, layer
and input size (`probes.receptive`) and cached on disk under `cache_dir()`, keyed by the
architecture, layer, input size, grid and a hash of every weight and buffer — so random weights
with a seed are cached too, and other weights never share an entry. Token grids (NLC, NHWC:
ViT, Swin) keep the exact patch centres. Every map gets its layer's mapping in
`meta["geometry"]` — the manifest's per-layer record.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

from attnviz.backbones import Backbone
from attnviz.cache import cache_root, put
from attnviz.geometry import Geometry
from attnviz.probes.receptive import measure_geometry, weights_hash
from attnviz.results import AttentionMap

__all__ = ["Aligner", "EXACT", "CACHE_FORMAT", "cache_dir"]

EXACT = {"method": "exact", "note": "token grid: each cell at its patch's centre"}
CACHE_FORMAT = "receptive-field-2"   # part of every key: entries of an older measurement are not read


def cache_dir() -> Path:
    """The receptive-field entries of attnviz's disk cache (`attnviz.cache.cache_root()`/geometry)."""
    return cache_root() / "geometry"


class Aligner:
    """Measured geometries of one backbone's layers, made on first use (off: none, as before).

    `seconds`: time spent hashing weights and measuring; `measured`: layers measured (not cached)."""

    def __init__(self, backbone: Backbone, enabled: bool = True,
                 progress: Callable[[str], None] | None = None) -> None:
        self.backbone = backbone
        self.enabled = enabled
        self.progress = progress
        self.geometries: dict[str, Geometry | None] = {}
        self.notes: list[str] = []
        self.seconds = 0.0
        self.measured: list[str] = []
        self._hash: str | None = None

    def geometry(self, layer: str, grid: Sequence[int] | None = None) -> Geometry | None:
        """The geometry of `layer` (None: not measurable or not asked for, i.e. block centres)."""
        bb = self.backbone
        info = bb.layers.get(layer)
        if not self.enabled or info is None or info.layout.kind != "NCHW" or info.grid == (1, 1):
            return None
        if grid is not None and tuple(grid) != tuple(info.grid):
            return None
        if layer not in self.geometries:
            t0 = time.perf_counter()
            self.geometries[layer] = self._load(layer) or self._measure(layer)
            self.seconds += time.perf_counter() - t0
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
        if self._hash is None:
            self._hash = weights_hash(bb.model)
        arch = type(bb.model).__module__ + "." + type(bb.model).__qualname__
        raw = json.dumps([CACHE_FORMAT, bb.name, arch, layer, bb.input_size, list(bb.layers[layer].grid), self._hash])
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def _load(self, layer: str) -> Geometry | None:
        """The layer's geometry from the disk cache (None: not there or unreadable)."""
        try:
            g = Geometry.from_record(json.loads((cache_dir() / f"{self._key(layer)}.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return g if g is not None and g.fits(self.backbone.layers[layer].grid) and g.fields else None

    def _measure(self, layer: str) -> Geometry | None:
        bb = self.backbone
        info = bb.layers[layer]
        try:
            g = measure_geometry(bb.model, layer, info.layout, info.grid, bb.input_size,
                                 key=(bb.name, bb.weights), device=bb.device, progress=self.progress)
        except Exception as e:  # noqa: BLE001  (a model we cannot differentiate: keep block centres)
            self.notes.append(f"cells of {layer} at block centres: measuring failed ({type(e).__name__})")
            return None
        self.measured.append(layer)
        self._save(layer, g)
        return g

    def _save(self, layer: str, g: Geometry) -> None:
        put(cache_dir() / f"{self._key(layer)}.json", json.dumps(g.record()).encode())
        # (a read-only cache only costs a re-measurement next time)
