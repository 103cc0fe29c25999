"""What cross-gae and cross-legrad share: a CLIP backbone's prompts and its image embedding in the graph.

Definitions: docs/attention.md §6.3. The targets are the prompts' L2-normalised text embeddings;
the image side is read from the graph-kept block outputs of `probes.grad`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from attnviz.backbones import Backbone
from attnviz.backbones.clip_core import encode_prompts
from attnviz.errors import AttnvizError
from attnviz.kinds.base import Batch
from attnviz.results import Options

__all__ = ["clip_unavailable", "prompt_embeddings", "tokens_bnd", "embedding", "check_embedding"]


def clip_unavailable(backbone: Backbone, options: Options, kind: str) -> str | None:
    """Why a CLIP gradient kind cannot run, or None."""
    if getattr(backbone, "bundle", None) is None:
        return f"{kind} reads a CLIP image tower and text prompts: use a clip:ARCH backbone"
    if not options.texts:
        return f"{backbone.name}: give --text prompts (each prompt's text embedding is a target)"
    return None


def prompt_embeddings(batch: Batch) -> tuple[list[str], torch.Tensor]:
    """The prompts and their L2-normalised text embeddings (P, E)."""
    prompts = list(batch.options.texts)
    text, _, _ = encode_prompts(batch.backbone.bundle, prompts)
    return prompts, text.to(batch.logits.device)


def tokens_bnd(z: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A block's output as (B, N, D) (open_clip keeps (N, B, D) when not batch-first)."""
    return z if z.shape[0] == batch_size else z.transpose(0, 1)


def embedding(visual: torch.nn.Module, pool: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """normalise(ln_post(pool(z)) · proj): the image embedding of tokens (B, N, D)."""
    t = visual.ln_post(pool(z))
    if visual.proj is not None:
        t = t @ visual.proj
    return F.normalize(t, dim=-1)


def check_embedding(img: torch.Tensor, batch: Batch, kind: str) -> None:
    """The class-token embedding of the last block must be the model's own encode_image output."""
    tokens = batch.aux.get("clip_tokens") or {}
    ref = next(iter(tokens.values())).image.to(img.device) if tokens else None
    err = float((img.detach().float() - ref).abs().max()) if ref is not None and ref.shape == img.shape else float("inf")
    if not err <= 1e-4:
        raise AttnvizError(f"{kind}: ln_post(class token)·proj of the last block is not this model's image "
                           f"embedding (max difference {err:.3g}); its pooling is not supported")
