"""Self-attention gradients of every block's own prediction (Bousselham et al. 2024, LeGrad).

Definition: docs/attention.md §6.2. For each block l, s_l = the target's logit computed from block
l's output tokens through the model's own final norm, pooling and head; E_l = mean over heads and
query rows of (∂s_l/∂A_l)⁺ over the patch columns; the map is Σ_l E_l over EVERY block, as the
paper defines it (the released code, WalBouss/LeGrad, covers only CLIP-family models, where
`cross-legrad` follows its `layer_index=-2`). s_l depends on A_l only through block l, so each
∂s_l/∂A_l is one short backward (head + block l) on the shared graph.
"""
from __future__ import annotations

import torch

from attnviz.backbones import Backbone
from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.kinds.gradients import (check_head, map_name, parse_targets, target_meta, target_slots,
                                     token_attention, token_head)
from attnviz.kinds.self_gae import gradient_unavailable
from attnviz.results import AttentionMap, Options

__all__ = ["legrad", "SelfLegrad"]


def legrad(grads: list[torch.Tensor], prefix: int) -> torch.Tensor:
    """Σ_l mean over heads and query rows of (∂s_l/∂A_l)⁺, patch columns: (B, N - prefix), float64."""
    return sum(g.detach().double().clamp(min=0).mean(dim=(1, 2))[:, prefix:] for g in grads)


@register_kind
class SelfLegrad(Kind):
    name = "self-legrad"
    order = 11
    default = False
    needs = frozenset({"gradients", "attention", "logits", "blocks"})

    def unavailable(self, backbone: Backbone, options: Options) -> str | None:
        if token_head(backbone) is None and backbone.tokens is not None:
            return (f"{backbone.name}: attnviz does not know this family's final norm, pooling and head "
                    f"(Backbone.token_head), so a block's own prediction s_l is not defined")
        return gradient_unavailable(backbone)

    def prepare(self, backbone: Backbone, options: Options) -> list[int]:
        return parse_targets(options.targets, backbone.categories)

    def layers(self, backbone: Backbone, layer: str) -> list[str]:
        return []

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        names = [n for n in token_attention(batch) if n in batch.grads.tokens]      # every block
        head = token_head(batch.backbone)
        check_head(head, batch.grads.tokens[names[-1]], batch.logits, batch.backbone.name)
        prefix, grid = batch.backbone.tokens
        out: list[list[AttentionMap]] = [[] for _ in batch.sizes]
        used: list[set[str]] = [set() for _ in batch.sizes]
        with torch.enable_grad():
            scores = [head(batch.grads.tokens[n]) for n in names]          # s_l for every class
        for idx, source in target_slots(batch, batch.plans.get(self.name)):
            grads = []
            with torch.enable_grad():
                for n, s in zip(names, scores):
                    y = s.gather(1, idx[:, None]).sum()
                    grads.append(torch.autograd.grad(y, batch.grads.attention[n], retain_graph=True)[0])
            e = torch.stack([legrad([g], prefix) for g in grads], 1)            # E_l: (B, L, N'), float64
            maps = e.sum(1).float().reshape(-1, *grid).cpu().numpy()             # Σ_l E_l, E_l computed once
            per_block = e.float().reshape(e.shape[0], len(grads), *grid).cpu().numpy()
            for i, t in enumerate(idx.tolist()):
                meta = {**target_meta(batch, i, t, source), "blocks": names,
                        "block_outputs": [batch.grads.blocks[n] for n in names]}
                label = meta["target"]["label"]
                out[i].append(AttentionMap(self.name, map_name(self.name, label, source, used[i]), "native",
                                           names[-1], maps[i], meta=meta, extras={"stage_E": per_block[i]}))
        return out
