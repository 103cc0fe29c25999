"""Self-attention, derived for a feature map: A = softmax_row(cos(x_i, x_j) / τ) over positions."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.kinds.spatial import spatial_logits
from attnviz.maps import cell_centre, query_cell
from attnviz.types import AttentionMap

__all__ = ["self_attention", "SelfAttention"]


def self_attention(f: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Row-stochastic attention between positions of one map: (C, H, W) -> (N, N), N = H·W."""
    x = F.normalize(f.flatten(1).T, dim=1)                # (N, C), row-major positions
    return torch.softmax(x @ x.T / tau, dim=1)            # (N, N)


@register_kind
class SelfAttention(Kind):
    name = "self"
    order = 4

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        f = batch.features()                                              # (B, C, H, W)
        grid = tuple(f.shape[2:])
        peaks = batch.cache.get("spatial")
        if peaks is None and batch.options.query is None:
            peaks = spatial_logits(f)                                     # same argmax as the gate
        out = []
        for i in range(f.shape[0]):
            if batch.options.query is not None:
                cell = query_cell(batch.options.query, batch.sizes[i], grid)
            else:
                cell = divmod(int(peaks[i].argmax()), grid[1])
            a = self_attention(f[i], batch.options.tau)                   # (N, N)
            q = cell[0] * grid[1] + cell[1]
            meta = {"query": cell_centre(cell, batch.sizes[i], grid), "query_cell": list(cell),
                    "query_source": "--query" if batch.options.query else "spatial peak",
                    "tau": batch.options.tau}
            out.append([
                AttentionMap("self", "self", "derived", batch.layer,
                             a[q].reshape(grid).cpu().numpy(), meta=meta),
                AttentionMap("self", "self-received", "derived", batch.layer,
                             a.mean(dim=0).reshape(grid).cpu().numpy(), meta={"tau": batch.options.tau}),
            ])
        return out
