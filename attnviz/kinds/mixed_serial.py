"""Mixed attention, serial (CBAM order): the spatial gate on channel-scaled features s ⊙ F.

Definition: docs/attention.md §3.
"""
from __future__ import annotations

import torch

from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.kinds.channel import channel_logits
from attnviz.kinds.spatial import spatial_logits
from attnviz.results import AttentionMap

__all__ = ["MixedSerial"]


@register_kind
class MixedSerial(Kind):
    name = "mixed-serial"
    order = 2
    needs = frozenset({"features", "gates"})

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        gate = batch.native_gate("spatial")
        before = batch.inventory.serial_channel_gate(gate) if gate is not None else None
        if before is not None:
            # a serial CBAM block: the model's spatial gate already sees s ⊙ F
            m, layer, provenance = batch.gates[gate.key], gate.name, "native"
            meta = {"gate": gate.type, "after": before.key}
        else:
            f = batch.features()                                              # (B, C, H, W)
            s = torch.sigmoid(channel_logits(f))                              # (B, C)
            m = torch.sigmoid(spatial_logits(f * s[:, :, None, None]))        # (B, H, W)
            layer, provenance, meta = batch.layer, "derived", {}
        return [[AttentionMap("mixed-serial", "mixed-serial", provenance, layer, g.cpu().numpy(),
                              meta=dict(meta))] for g in m]
