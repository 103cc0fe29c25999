"""Channel attention (SE): the model's own gate when it has one (native), else s = σ(ẑ_C(GAP F)).

Definition: docs/attention.md §1.
"""
from __future__ import annotations

import torch

from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.maps import zscore
from attnviz.results import AttentionMap

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
    needs = frozenset({"features", "gates"})

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        gate = batch.native_gate("channel")
        if gate is not None and gate.key in batch.gate_inputs:
            f, s = batch.gate_inputs[gate.key], batch.gates[gate.key]   # (B, C, H, W), (B, C)
            layer, provenance, meta = gate.name, "native", {"gate": gate.type, "module": gate.activation}
        else:
            f = batch.features()                                           # (B, C, H, W)
            s = torch.sigmoid(channel_logits(f))                           # (B, C)
            layer, provenance, meta = batch.layer, "derived", {}
        m = channel_map(f, s)                                              # (B, H, W)
        all_gates = batch.inventory.gates_of("channel") if provenance == "native" else []
        return [[AttentionMap("channel", "channel", provenance, layer, m[i].cpu().numpy(),
                              weights=s[i].cpu().numpy(), meta=dict(meta),
                              extras={f"gate:{g.key}": batch.gates[g.key][i].cpu().numpy()
                                      for g in all_gates if g.key in batch.gates})]
                for i in range(len(m))]
