"""CLIP backbones (`clip:ARCH`): the image tower for every kind, text prompts for native cross-attention."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from attnviz.backbones.registry import register_family
from attnviz.backbones.weights import WeightsSpec, check_input_size, warn_random
from attnviz.backbones.base import Backbone, describe_layers
from attnviz.backbones.clip_core import (WORD_TEMPLATE, CrossOut, clip_cross, contrast, encode_patches,
                                         encode_prompts, per_word, prompt_words)
from attnviz.backbones.clip_load import RANDOM, ClipBundle, load_clip, supported_archs
from attnviz.errors import AttnvizError
from attnviz.text import slug, unique
from attnviz.results import AttentionMap, Options

__all__ = ["ClipBackbone", "load_clip_backbone"]


@dataclass
class ClipBackbone(Backbone):
    """A CLIP model: `model` is its image tower; the prompts are its classes."""

    bundle: ClipBundle | None = None
    options: Options = field(default_factory=Options)
    native_cross: bool = True

    def prepare(self, options: Options) -> None:
        """Check and encode the prompts once; they become the classes predictions rank."""
        self.options = options
        prompts = list(options.texts)
        self.categories = prompts
        if not prompts:
            return
        _, truncated, warnings = encode_prompts(self.bundle, prompts)   # raises on empty prompts
        self.notes = list(dict.fromkeys([*self.notes, *warnings]))
        if options.contrast and len(prompts) < 2:
            raise AttnvizError("--contrast needs at least two prompts")
        if options.per_word:
            for p in prompts:
                if not prompt_words(self.bundle, p):
                    raise AttnvizError(f"--per-word: prompt {p!r} has no content words")

    def forward(self, x: torch.Tensor, prompts: list[list[str]] | None = None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        """One pass through the image tower; logits rank the prompts (CLIP's own scale)."""
        tokens = encode_patches(self.bundle, x, self.options.variant)            # (B, N, E) patches
        if not self.categories:
            return torch.zeros(x.shape[0], 0), {"clip_tokens": tokens}
        out = clip_cross(self.bundle, tokens, self.categories)
        logits = torch.from_numpy(out.scores) * out.logit_scale                    # (B, P)
        return logits, {"clip_tokens": tokens, "clip_cross": out}

    def cross_maps(self, batch: Any) -> list[list[AttentionMap]]:
        """A map per prompt (and per word, and contrast, on request) for every image."""
        out: CrossOut = batch.aux["clip_cross"]
        tokens = batch.aux["clip_tokens"]
        layer = f"transformer.resblocks.{len(self.bundle.model.visual.transformer.resblocks) - 1}"
        extra = [("contrast", contrast(out.sims))] if self.options.contrast else []
        words = {p: per_word(self.bundle, tokens, p, out.variant) for p in out.prompts} \
            if self.options.per_word else {}
        result = []
        for i in range(out.sims.shape[0]):
            maps, used = [], set()
            for j, prompt in enumerate(out.prompts):
                name = unique(f"cross-{slug(prompt) or f'prompt-{j + 1}'}", used)
                meta = {"prompt": prompt, "words": prompt_words(self.bundle, prompt),
                        "clip_score": round(float(out.scores[i, j]), 6), "variant": out.variant,
                        "truncated": out.truncated[j]}
                maps.append(AttentionMap("cross", name, "native", layer, out.attn[i, j], meta=meta,
                                         extras={"similarity": out.sims[i, j]}))
                for tag, data in extra:
                    maps.append(AttentionMap("cross", unique(f"{name}-{tag}", used), "native", layer,
                                             data[i, j], meta={**meta, "contrast": True}))
                if prompt in words:
                    w = words[prompt]
                    for k, word in enumerate(w.words):
                        maps.append(AttentionMap(
                            "cross", unique(f"{name}-word-{slug(word) or k + 1}", used), "native", layer,
                            w.attn[i, k], extras={"similarity": w.sims[i, k]},
                            meta={"prompt": prompt, "word": word, "template": WORD_TEMPLATE,
                                  "clip_score": round(float(w.scores[i, k]), 6), "variant": w.variant}))
            result.append(maps)
        return result


@contextmanager
def _quiet_root_logger():
    """open_clip logs "no pretrained weights" on the root logger; we warn once ourselves."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@register_family("clip", summary="an open_clip ViT: free-text prompts, native cross maps (the clip extra)",
                 syntax="clip:ARCH", names=lambda: [f"clip:{a}" for a in supported_archs()])
def load_clip_backbone(name: str, weights: WeightsSpec, *, input_size: int | None = None,
                       device: torch.device = torch.device("cpu")) -> ClipBackbone:
    """`clip:ARCH` with --weights DEFAULT (the arch's default tag), a TAG, a FILE, or none."""
    arch = name.removeprefix("clip:")
    with _quiet_root_logger():
        if weights.kind == "none":
            warn_random(name)
            bundle = load_clip(arch, RANDOM, device=str(device))
        elif weights.kind == "file":
            bundle = load_clip(arch, weights_file=str(weights.path), device=str(device))
        else:
            bundle = load_clip(arch, weights.value or None, device=str(device))
    check_input_size(name, input_size, bundle.image_size)
    visual = bundle.model.visual.to(device)
    tokens = (1, bundle.grid)
    layers, _ = describe_layers(visual, bundle.image_size, device, tokens)
    blocks = [n for n in layers if n.startswith("transformer.resblocks.") and n.count(".") == 2]
    desc = "none" if bundle.random_init else str(bundle.pretrained)
    return ClipBackbone(name=name, model=visual, weights=desc, pretrained=not bundle.random_init,
                        categories=[], mean=bundle.mean, std=bundle.std, input_size=bundle.image_size,
                        default_layer=blocks[-1], layers=layers, tokens=tokens, device=device,
                        bundle=bundle)
