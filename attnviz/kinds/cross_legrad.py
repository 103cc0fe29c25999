"""Text-to-image relevance by LeGrad (Bousselham et al. 2024) for CLIP, as its released code computes it.

Definition: docs/attention.md §6.3. Where the released code (WalBouss/LeGrad, `compute_legrad_clip`)
differs from the paper, this follows the code: only the last two blocks (its default
`layer_index=-2`), and each block's image embedding pools the MEAN of all its tokens (class token
included) before ln_post and proj; s_l = cos(that embedding, the prompt's text embedding).
"""
from __future__ import annotations

import torch

from attnviz.backbones import Backbone
from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.kinds.clip_grad import clip_unavailable, embedding, prompt_embeddings, tokens_bnd
from attnviz.kinds.gradients import LAST_BLOCKS, token_attention
from attnviz.kinds.self_legrad import legrad
from attnviz.results import AttentionMap, Options
from attnviz.text import slug, unique

__all__ = ["CrossLegrad", "LAST_BLOCKS"]


@register_kind
class CrossLegrad(Kind):
    name = "cross-legrad"
    order = 14
    default = False
    needs = frozenset({"gradients", "attention", "blocks"})

    def unavailable(self, backbone: Backbone, options: Options) -> str | None:
        return clip_unavailable(backbone, options, self.name)

    def layers(self, backbone: Backbone, layer: str) -> list[str]:
        return []

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        names = [n for n in token_attention(batch) if n in batch.grads.tokens][-LAST_BLOCKS:]
        b = len(batch.sizes)
        visual, (prefix, grid) = batch.backbone.model, batch.backbone.tokens
        prompts, text = prompt_embeddings(batch)
        with torch.enable_grad():
            embs = [embedding(visual, lambda z: z.mean(dim=1), tokens_bnd(batch.grads.tokens[n], b)) for n in names]
        out: list[list[AttentionMap]] = [[] for _ in range(b)]
        used: list[set[str]] = [set() for _ in range(b)]
        for j, prompt in enumerate(prompts):
            grads = []
            with torch.enable_grad():
                for n, e in zip(names, embs):
                    y = (e @ text[j].to(e.dtype)).sum()
                    grads.append(torch.autograd.grad(y, batch.grads.attention[n], retain_graph=True)[0])
            maps = legrad(grads, prefix).float().reshape(b, *grid).cpu().numpy()
            for i in range(b):
                meta = {"prompt": prompt, "target": {"prompt": prompt, "score": "cosine of mean-token embedding "
                                                     "and text embedding, per block (released LeGrad code)"},
                        "blocks": names}
                name = unique(f"{self.name}-{slug(prompt) or f'prompt-{j + 1}'}", used[i])
                out[i].append(AttentionMap(self.name, name, "native", names[-1], maps[i], meta=meta))
        return out
