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
from attnviz.backbones.clip_core import (WORD_TEMPLATE, CrossOut, PatchTokens, clip_cross, contrast, encode_prompts,
                                         encode_variants, per_word, prompt_words)
from attnviz.backbones.clip_slide import Slide, check_slide, parse_slide, slide_tokens
from attnviz.backbones.clip_variants import PARAMS, variants_of
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
    variants: tuple[str, ...] = ("value",)      # the maps drawn per prompt (--clip-variant; `all`: every one)
    slide: Slide | None = None                  # --slide: crops of a larger view instead of the squashed input
    images: list[Any] = field(default_factory=list, repr=False)   # the batch's decoded images (--slide)

    def prepare(self, options: Options) -> None:
        """Check and encode the prompts once; they become the classes predictions rank."""
        self.options = options
        self.variants = variants_of(options.variant)
        self.slide = parse_slide(options.slide)
        if self.slide is not None:
            check_slide(self.slide, self.bundle.grid, self.bundle.arch)
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

    def set_images(self, images: list[Any]) -> None:
        """Keep the batch's images: --slide reads them at its own, larger size."""
        self.images = list(images) if self.slide is not None else []

    def forward(self, x: torch.Tensor, prompts: list[list[str]] | None = None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        """One pass through the image tower, shared by every variant; logits rank the prompts (CLIP's own scale)."""
        tokens = encode_variants(self.bundle, x, self.variants)               # variant -> (B, N, E) patches
        if not self.categories:
            return torch.zeros(x.shape[0], 0), {"clip_tokens": tokens}
        out = clip_cross(self.bundle, tokens[self.variants[0]], self.categories)
        logits = torch.from_numpy(out.scores) * out.logit_scale                    # (B, P)
        return logits, {"clip_tokens": tokens, "clip_cross": out}

    def _tokens(self, i: int, tokens: dict[str, PatchTokens]) -> tuple[dict[str, PatchTokens], dict[str, Any]]:
        """Image i's patch tokens per variant: a slice of the batch's, or its --slide crops averaged."""
        first = tokens[self.variants[0]]
        if self.slide is None:
            return {v: PatchTokens(t.patches[i:i + 1], t.image[i:i + 1], t.grid, v) for v, t in tokens.items()}, {}
        if len(self.images) != first.patches.shape[0]:
            raise AttnvizError("--slide needs the batch's images (Backbone.set_images) before the forward pass")
        out, record = slide_tokens(self.bundle, self.images[i], self.slide, self.variants, first.image[i:i + 1])
        return out, {"slide": record}

    def cross_maps(self, batch: Any) -> list[list[AttentionMap]]:
        """A map per prompt and variant (and per word, and contrast, on request) for every image."""
        layer = f"transformer.resblocks.{len(self.bundle.model.visual.transformer.resblocks) - 1}"
        prompts, many = list(self.categories), len(self.variants) > 1
        result = []
        for i in range(batch.aux["clip_tokens"][self.variants[0]].patches.shape[0]):
            tokens, extra_meta = self._tokens(i, batch.aux["clip_tokens"])
            outs = {v: clip_cross(self.bundle, t, prompts) for v, t in tokens.items()}   # texts are cached
            maps, used = [], set()
            for j, prompt in enumerate(prompts):
                stem = f"cross-{slug(prompt) or f'prompt-{j + 1}'}"
                for v in self.variants:
                    name = unique(f"{stem}-{v}" if many else stem, used)   # one variant: today's names
                    meta = {"variant": v, "variant_params": PARAMS[v], **extra_meta,
                            **({"variants": list(self.variants)} if many else {})}
                    maps += self._prompt_maps(tokens[v], outs[v], j, name, layer, meta, used)
            result.append(maps)
        self.images = []
        return result

    def _prompt_maps(self, tokens: PatchTokens, out: CrossOut, j: int, name: str, layer: str,
                     meta: dict[str, Any], used: set[str]) -> list[AttentionMap]:
        """Prompt j's map on one image's tokens, with its contrast and per-word maps on request."""
        prompt = out.prompts[j]
        base = {"prompt": prompt, "words": prompt_words(self.bundle, prompt),
                "clip_score": round(float(out.scores[0, j]), 6), **meta, "truncated": out.truncated[j]}
        maps = [AttentionMap("cross", name, "native", layer, out.attn[0, j], meta=base,
                             extras={"similarity": out.sims[0, j]})]
        if self.options.contrast:
            maps.append(AttentionMap("cross", unique(f"{name}-contrast", used), "native", layer,
                                     contrast(out.sims)[0, j], meta={**base, "contrast": True}))
        if self.options.per_word:
            w = per_word(self.bundle, tokens, prompt, tokens.variant)
            for k, word in enumerate(w.words):
                maps.append(AttentionMap(
                    "cross", unique(f"{name}-word-{slug(word) or k + 1}", used), "native", layer,
                    w.attn[0, k], extras={"similarity": w.sims[0, k]},
                    meta={"prompt": prompt, "word": word, "template": WORD_TEMPLATE,
                          "clip_score": round(float(w.scores[0, k]), 6), **meta}))
        return maps


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
                        bundle=bundle, interpolation=bundle.interpolation)
