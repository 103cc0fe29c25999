"""Channel attention (Squeeze-and-Excitation), derived: s = σ(ẑ_C(mean_hw F)), M_c = Σ_c s_c F[c]."""
from __future__ import annotations

import torch

from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.maps import zscore
from attnviz.types import AttentionMap

__all__ = ["channel_logits", "channel_map", "Channel"]


def channel_logits(f: torch.Tensor) -> torch.Tensor:
    """Pre-sigmoid channel gate ẑ_C(z), z = global average pool: (B, C, H, W) -> (B, C)."""
    return zscore(f.mean(dim=(2, 3)), dims=(1,))


def channel_map(f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """M_c = Σ_c s_c F[c]: (B, C, H, W), (B, C) -> (B, H, W)."""
    return torch.einsum("bchw,bc->bhw", f, s)


@register_kind
class Channel(Kind):
    name = "channel"
    order = 0

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        f = batch.features()                       # (B, C, H, W)
        s = torch.sigmoid(channel_logits(f))       # (B, C)
        m = channel_map(f, s)                      # (B, H, W)
        return [[AttentionMap("channel", "channel", "derived", batch.layer, m[i].cpu().numpy(),
                              weights=s[i].cpu().numpy())] for i in range(len(m))]
