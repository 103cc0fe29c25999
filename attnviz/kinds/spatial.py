"""Spatial attention (CBAM gate), derived: M_s = σ(G ∗ ½(ẑ_HW(mean_c F) + ẑ_HW(max_c F)))."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.maps import gaussian_kernel, zscore
from attnviz.types import AttentionMap

__all__ = ["spatial_logits", "Spatial"]

_KERNEL = gaussian_kernel(7, 1.5)   # fixed, not learned


def spatial_logits(f: torch.Tensor) -> torch.Tensor:
    """Pre-sigmoid spatial gate: (B, C, H, W) -> (B, H, W), Gaussian 7×7, zero padding 3."""
    pooled = 0.5 * (zscore(f.mean(dim=1), dims=(1, 2)) + zscore(f.amax(dim=1), dims=(1, 2)))
    kernel = _KERNEL.to(f)[None, None]                                   # (1, 1, 7, 7)
    return F.conv2d(pooled[:, None], kernel, padding=3)[:, 0]           # (B, H, W)


@register_kind
class Spatial(Kind):
    name = "spatial"
    order = 1

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        gate = torch.sigmoid(spatial_logits(batch.features()))           # (B, H, W)
        batch.cache["spatial"] = gate
        return [[AttentionMap("spatial", "spatial", "derived", batch.layer, g.cpu().numpy())]
                for g in gate]
