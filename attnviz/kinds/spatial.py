"""Spatial attention (CBAM): the model's own spatial gate (native), else the fixed-kernel gate (derived).

Definition: docs/attention.md §2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnviz.geometry import Geometry
from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.maps import gaussian_kernel, zscore
from attnviz.results import AttentionMap

__all__ = ["spatial_logits", "peak_fraction", "Spatial"]

_KERNEL = gaussian_kernel(7, 1.5)   # fixed, not learned


def spatial_logits(f: torch.Tensor) -> torch.Tensor:
    """Pre-sigmoid derived gate G ∗ ½(ẑ_HW(mean_c F) + ẑ_HW(max_c F)): (B, C, H, W) -> (B, H, W)."""
    pooled = 0.5 * (zscore(f.mean(dim=1), dims=(1, 2)) + zscore(f.amax(dim=1), dims=(1, 2)))
    kernel = _KERNEL.to(f)[None, None]                                   # (1, 1, 7, 7)
    return F.conv2d(pooled[:, None], kernel, padding=3)[:, 0]           # (B, H, W)


def peak_fraction(m: torch.Tensor, geometry: Geometry | None = None) -> list[tuple[float, float]]:
    """Peak cell centre of each (H, W) map as (x, y) fractions of the image: (B, H, W) -> B pairs.

    Where the layer's `geometry` places the cell, when given; else the centre of its block."""
    h, w = m.shape[1:]
    cells = [divmod(int(i), w) for i in m.flatten(1).argmax(dim=1)]
    if geometry is not None and geometry.fits((h, w)):
        xs, ys = geometry.centres((1, 1))
        return [(float(xs[c]), float(ys[r])) for r, c in cells]
    return [((c + 0.5) / w, (r + 0.5) / h) for r, c in cells]


@register_kind
class Spatial(Kind):
    name = "spatial"
    order = 1
    needs = frozenset({"features", "gates"})

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        gate = batch.native_gate("spatial")
        if gate is not None:
            m, layer, provenance = batch.gates[gate.key], gate.name, "native"   # (B, H, W)
            meta = {"gate": gate.type, "module": gate.activation}
        else:
            m = torch.sigmoid(spatial_logits(batch.features()))                  # (B, H, W)
            layer, provenance, meta = batch.layer, "derived", {}
        batch.cache["spatial_peak"] = peak_fraction(m, batch.geometry(layer, tuple(m.shape[1:])))
        return [[AttentionMap("spatial", "spatial", provenance, layer, g.cpu().numpy(), meta=dict(meta))]
                for g in m]
