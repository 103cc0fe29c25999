"""Text-to-image relevance by GAE (Chefer et al. 2021) for CLIP: one map per --text prompt.

Definition: docs/attention.md §6.3. y_p = cos(image embedding, text embedding of prompt p); R as in
self-gae over every block of the image tower; the map is the class token's row over the patches.
"""
from __future__ import annotations

import torch

from attnviz.backbones import Backbone
from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.kinds.clip_grad import check_embedding, clip_unavailable, embedding, prompt_embeddings, tokens_bnd
from attnviz.kinds.gradients import token_attention
from attnviz.kinds.self_gae import gae
from attnviz.results import AttentionMap, Options
from attnviz.text import slug, unique

__all__ = ["CrossGae"]


@register_kind
class CrossGae(Kind):
    name = "cross-gae"
    order = 13
    default = False
    needs = frozenset({"gradients", "attention", "blocks"})

    def unavailable(self, backbone: Backbone, options: Options) -> str | None:
        return clip_unavailable(backbone, options, self.name)

    def layers(self, backbone: Backbone, layer: str) -> list[str]:
        return []

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        names = token_attention(batch)
        attn = [batch.grads.attention[n] for n in names]
        b = len(batch.sizes)
        visual, (prefix, grid) = batch.backbone.model, batch.backbone.tokens
        prompts, text = prompt_embeddings(batch)
        with torch.enable_grad():
            img = embedding(visual, lambda z: z[:, 0], tokens_bnd(batch.grads.tokens[names[-1]], b))
        check_embedding(img, batch, self.name)
        out: list[list[AttentionMap]] = [[] for _ in range(b)]
        used: list[set[str]] = [set() for _ in range(b)]
        for j, prompt in enumerate(prompts):
            with torch.enable_grad():
                y = (img @ text[j].to(img.dtype)).sum()
                grads = torch.autograd.grad(y, attn, retain_graph=True)
            maps = gae(attn, list(grads))[:, 0, prefix:].float().reshape(b, *grid).cpu().numpy()
            for i in range(b):
                meta = {"prompt": prompt, "target": {"prompt": prompt, "score": "cosine of image and text embeddings",
                                                     "value": round(float(img[i].detach() @ text[j]), 6)},
                        "token": "class token", "blocks": names}
                name = unique(f"{self.name}-{slug(prompt) or f'prompt-{j + 1}'}", used[i])
                out[i].append(AttentionMap(self.name, name, "native", names[-1], maps[i], meta=meta))
        return out
