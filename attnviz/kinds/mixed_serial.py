"""Mixed attention, serial (CBAM order): the spatial gate on channel-scaled features s ⊙ F."""
from __future__ import annotations

import torch

from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.kinds.channel import channel_logits
from attnviz.kinds.spatial import spatial_logits
from attnviz.types import AttentionMap

__all__ = ["MixedSerial"]


@register_kind
class MixedSerial(Kind):
    name = "mixed-serial"
    order = 2

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        f = batch.features()                                             # (B, C, H, W)
        s = torch.sigmoid(channel_logits(f))                             # (B, C)
        gate = torch.sigmoid(spatial_logits(f * s[:, :, None, None]))    # (B, H, W)
        return [[AttentionMap("mixed-serial", "mixed-serial", "derived", batch.layer,
                              g.cpu().numpy())] for g in gate]
