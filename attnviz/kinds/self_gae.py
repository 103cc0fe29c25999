"""Self-attention weighted by its gradient (Chefer et al. 2021, GAE): the class token's relevance row.

Definition: docs/attention.md §6.1. R = I; for every block b in order, Ā_b = mean_h[(∂y_t/∂A_b ⊙ A_b)⁺],
R ← R + Ā_b·R; the map is R's class-token row over the patches (without a class token: the mean of
the patch rows). y_t is the target's logit. One backward per target for the whole batch.
"""
from __future__ import annotations

import torch

from attnviz.backbones import Backbone
from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.kinds.gradients import target_slots, map_name, parse_targets, target_meta, token_attention
from attnviz.results import AttentionMap, Options

__all__ = ["gae", "SelfGae"]


def gae(attention: list[torch.Tensor], grads: list[torch.Tensor],
        stages: list[dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
    """Chefer's relevance R (B, N, N) from each block's A and ∂y/∂A (B, heads, N, N), in float64.

    `stages`, when given, receives per block the head means of A and ∂y/∂A, Ā and R after it
    (each (B, N, N)), for `attnviz explain`."""
    n = attention[0].shape[-1]
    r = torch.eye(n, dtype=torch.float64, device=attention[0].device).expand(attention[0].shape[0], n, n)
    for a, g in zip(attention, grads):
        abar = (g.detach().double() * a.detach().double()).clamp(min=0).mean(dim=1)   # (B, N, N)
        r = r + abar @ r
        if stages is not None:
            stages.append({"A": a.detach().mean(dim=1), "dA": g.detach().mean(dim=1), "product": abar, "R": r})
    return r


def relevance_row(r: torch.Tensor, prefix: int) -> tuple[torch.Tensor, str]:
    """The class token's row over the patches (B, N - prefix), or the mean patch row without one."""
    if prefix:
        return r[:, 0, prefix:], "class token"
    return r[:, prefix:, prefix:].mean(dim=1), "mean of patch rows (no class token)"


def gradient_unavailable(backbone: Backbone) -> str | None:
    """Why a token gradient kind cannot run (a CLIP tower, no token grid), or None."""
    if getattr(backbone, "bundle", None) is not None:
        return (f"{backbone.name} ranks text prompts, not classes: use cross-gae or cross-legrad "
                f"with --text (each prompt is a target)")
    if backbone.tokens is None:
        return (f"{backbone.name} has no token grid (a CNN or window attention): gradient-weighted "
                f"self-attention needs (B, heads, N, N) over patch tokens")
    return None


@register_kind
class SelfGae(Kind):
    name = "self-gae"
    order = 10
    default = False
    needs = frozenset({"gradients", "attention", "logits"})

    def unavailable(self, backbone: Backbone, options: Options) -> str | None:
        return gradient_unavailable(backbone)

    def prepare(self, backbone: Backbone, options: Options) -> list[int]:
        return parse_targets(options.targets, backbone.categories)

    def layers(self, backbone: Backbone, layer: str) -> list[str]:
        return []

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        names = token_attention(batch)
        attn = [batch.grads.attention[n] for n in names]
        prefix, grid = batch.backbone.tokens
        out: list[list[AttentionMap]] = [[] for _ in batch.sizes]
        used: list[set[str]] = [set() for _ in batch.sizes]
        for idx, source in target_slots(batch, batch.plans.get(self.name)):
            with torch.enable_grad():
                y = batch.logits.gather(1, idx[:, None]).sum()
                grads = torch.autograd.grad(y, attn, retain_graph=True)
            stages: list[dict[str, torch.Tensor]] = []
            row, token = relevance_row(gae(attn, list(grads), stages), prefix)
            maps = row.float().reshape(-1, *grid).cpu().numpy()
            # per block, the class-token row of each stage: (blocks, H, W) per image (explain's strip)
            extras = {k: torch.stack([relevance_row(st[k], prefix)[0] for st in stages], 1).float()
                      .reshape(-1, len(stages), *grid).cpu().numpy() for k in stages[0]}
            for i, t in enumerate(idx.tolist()):
                meta = {**target_meta(batch, i, t, source), "token": token, "blocks": names}
                label = meta["target"]["label"]
                out[i].append(AttentionMap(self.name, map_name(self.name, label, source, used[i]), "native",
                                           names[-1], maps[i], meta=meta,
                                           extras={f"stage_{k}": v[i] for k, v in extras.items()}))
        return out
