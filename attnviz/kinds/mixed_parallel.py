"""Mixed attention, parallel (BAM style): A = σ(logit s + logit M_s), map = mean_c(A ⊙ F).

Definition: docs/attention.md §3.
"""
from __future__ import annotations

import torch

from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.kinds.channel import channel_logits
from attnviz.kinds.spatial import spatial_logits
from attnviz.results import AttentionMap

__all__ = ["parallel_map", "MixedParallel"]


def parallel_map(f: torch.Tensor, logit_s: torch.Tensor, logit_m: torch.Tensor) -> torch.Tensor:
    """mean_c(σ(logit_s[:, :, None, None] + logit_m[:, None]) ⊙ F): -> (B, H, W)."""
    a = torch.sigmoid(logit_s[:, :, None, None] + logit_m[:, None])     # (B, C, H, W)
    return (a * f).mean(dim=1)


@register_kind
class MixedParallel(Kind):
    name = "mixed-parallel"
    order = 3

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        f = batch.features()
        m = parallel_map(f, channel_logits(f), spatial_logits(f))       # (B, H, W)
        return [[AttentionMap("mixed-parallel", "mixed-parallel", "derived", batch.layer,
                              x.cpu().numpy())] for x in m]
