"""CLIP (open_clip) maths: patch and prompt embeddings, text→image cross-attention maps (docs/attention.md §5).

Loading lives in clip_load.py; its public names are re-exported here for existing imports.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attnviz.backbones.clip_load import (EXTRA_HINT, RANDOM, ClipBundle, default_pretrained, load_clip,
                                         supported_archs)
from attnviz.backbones.clip_variants import ALL, CHOICES, VARIANTS, last_block
from attnviz.errors import AttnvizError

__all__ = ["supported_archs", "ClipBundle", "PatchTokens", "CrossOut", "load_clip", "default_pretrained", "encode_patches",
           "encode_variants", "encode_prompts", "clip_cross", "per_word", "prompt_words", "contrast", "RANDOM",
           "VARIANTS", "CHOICES", "ALL",
           "WORD_TEMPLATE", "STOP_WORDS", "EXTRA_HINT"]

WORD_TEMPLATE = "a photo of a {word}."  # per-word maps embed each content word alone in this template
STOP_WORDS = frozenset("a an the of in on at with and or to for by from is are this that some its "
                       "photo photograph picture image".split())


@dataclass
class PatchTokens:
    """One pass of the image tower: L2-normalised patch embeddings and the image embedding."""

    patches: torch.Tensor               # (B, N, E) t̂_i, N = h*w, row-major, class token excluded
                                        # (--slide: the mean of the crops' t̂_i over each cell)
    image: torch.Tensor                 # (B, E) normalised model.encode_image output
    grid: tuple[int, int]               # (h, w)
    variant: str                        # one of VARIANTS


@dataclass
class CrossOut:
    """Cross-attention maps of prompts over image patches (float32 NumPy, CPU)."""

    sims: np.ndarray                    # (B, P, h, w) raw cosine similarities c_i = q · t̂_i
    attn: np.ndarray                    # (B, P, h, w) softmax over the h*w patches of s·c
    scores: np.ndarray                  # (B, P) CLIP score: cosine of image and text embeddings
    grid: tuple[int, int]               # (h, w), tokens in row-major order
    prompts: list[str]                  # the texts actually encoded (templated words for per_word)
    variant: str
    logit_scale: float                  # s = exp(model.logit_scale)
    truncated: list[bool]               # per prompt: longer than the context, cut by the tokenizer
    warnings: list[str] = field(default_factory=list)
    words: list[str] | None = None      # per_word only: the content word of each prompt


# ----------------------------------------------------------------------------- image side

def encode_patches(bundle: ClipBundle, images: torch.Tensor, variant: str = "value") -> PatchTokens:
    """Run the image tower once; hooks on its last block give the patch embeddings t̂_i."""
    if variant not in VARIANTS:
        raise AttnvizError(f"unknown CLIP map variant {variant!r}; use one of {', '.join(VARIANTS)}")
    return encode_variants(bundle, images, (variant,))[variant]


def encode_variants(bundle: ClipBundle, images: torch.Tensor, variants: tuple[str, ...] | list[str]
                    ) -> dict[str, PatchTokens]:
    """One pass of the image tower; every variant's t̂_i from its last block's input (and output, for plain)."""
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise AttnvizError(f"unknown CLIP map variant {(bad or [''])[0]!r}; use one of {', '.join(VARIANTS)}")
    S = bundle.image_size
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, S, S):
        raise AttnvizError(f"CLIP {bundle.arch} needs images of shape (B, 3, {S}, {S}); "
                           f"got {tuple(images.shape)}")
    model, vis = bundle.model, bundle.model.visual
    block = vis.transformer.resblocks[-1]
    seen: dict[str, torch.Tensor] = {}
    handles = [
        block.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0])),
        block.register_forward_hook(lambda m, args, out: seen.__setitem__("y", out)),
    ]
    p = vis.conv1.weight
    try:   # no torch.no_grad here: the gradient kinds run this forward with autograd on
        image = model.encode_image(images.to(p.device, p.dtype), normalize=True).detach()   # (B, E)
    finally:
        for h in handles:
            h.remove()
    if "x" not in seen or "y" not in seen:
        raise AttnvizError(f"CLIP {bundle.arch}: the last image block never ran; nothing was captured")
    x, y = seen["x"], seen["y"]
    batch_first = getattr(block.attn, "batch_first", getattr(vis.transformer, "batch_first", True))
    if not batch_first:                                                   # (L, B, D) -> (B, L, D)
        x, y = x.transpose(0, 1), y.transpose(0, 1)
    h, w = bundle.grid
    if x.shape[1] != 1 + h * w:
        raise AttnvizError(f"CLIP {bundle.arch}: expected 1 + {h}x{w} tokens, got {x.shape[1]}")
    out: dict[str, PatchTokens] = {}
    with torch.no_grad():
        for variant in dict.fromkeys(variants):
            v = y if variant == "plain" else last_block(block, x, variant, (h, w))   # (B, 1+N, D)
            t = vis.ln_post(v[:, 1:])                                     # (B, N, D) class token dropped
            if vis.proj is not None:
                t = t @ vis.proj                                          # (B, N, E)
            out[variant] = PatchTokens(patches=F.normalize(t.float(), dim=-1).cpu(), image=image.float().cpu(),
                                       grid=(h, w), variant=variant)
    return out


# ----------------------------------------------------------------------------- text side

def _check_prompt(prompt: str) -> None:
    """Reject a prompt that is not a string or has no visible text."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise AttnvizError(f"empty prompt {prompt!r}: give the words to look for")


def _n_tokens(tokenizer: Any, ids_row: torch.Tensor, text: str) -> int:
    """Tokens `text` needs with its start/end tokens (from the padded row if the tokenizer can't say)."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode) and hasattr(tokenizer, "sot_token_id"):
        return len(encode(text)) + 2
    return int((ids_row != 0).sum())


def encode_prompts(bundle: ClipBundle, prompts: list[str]) -> tuple[torch.Tensor, list[bool], list[str]]:
    """L2-normalised text embeddings (P, E), per-prompt truncation flags, and warnings."""
    if isinstance(prompts, str) or not prompts:
        raise AttnvizError("give a list of one or more prompts")
    for p in prompts:
        _check_prompt(p)
    new = [p for p in dict.fromkeys(prompts) if p not in bundle.text_cache]   # each text encoded once
    if new:
        ids = bundle.tokenizer(new)                                       # (P', context_length)
        device = bundle.model.logit_scale.device
        with torch.no_grad():
            text = bundle.model.encode_text(ids.to(device), normalize=True).float().cpu()   # (P', E)
        for i, p in enumerate(new):
            bundle.text_cache[p] = (text[i], _n_tokens(bundle.tokenizer, ids[i], p))
    ctx = bundle.context_length
    counts = [bundle.text_cache[p][1] for p in prompts]
    truncated = [n > ctx for n in counts]
    warnings = [f"prompt {i + 1} is {n} tokens long; CLIP reads only the first {ctx}, the rest was cut"
                for i, n in enumerate(counts) if n > ctx]
    return torch.stack([bundle.text_cache[p][0] for p in prompts]), truncated, warnings


def prompt_words(bundle: ClipBundle, prompt: str) -> list[str]:
    """Content words of a prompt (tokenizer's split, lower case, stop words and punctuation dropped)."""
    _check_prompt(prompt)
    tok = bundle.tokenizer
    clean = getattr(tok, "clean_fn", None)
    text = (clean(prompt) if callable(clean) else " ".join(prompt.split())).lower()
    pat = getattr(tok, "pat", None)
    pieces = pat.findall(text) if pat is not None else re.findall(r"\w+|[^\w\s]+", text)
    words: list[str] = []
    for piece in pieces:
        if piece in STOP_WORDS or piece in words or piece.startswith("'") or re.fullmatch(r"<\w+>", piece):
            continue                              # stop word, repeat, "'s" contraction, special token
        if any(ch.isalpha() or unicodedata.category(ch) == "So" for ch in piece):
            words.append(piece)                   # letters or a symbol such as an emoji; not digits
    return words


# ----------------------------------------------------------------------------- maps

def clip_cross(bundle: ClipBundle, images: torch.Tensor | PatchTokens, prompts: list[str],
               variant: str = "value") -> CrossOut:
    """docs/attention.md §5 maps for each prompt; `images` (B, 3, S, S) normalised, or PatchTokens (its variant wins)."""
    tokens = images if isinstance(images, PatchTokens) else encode_patches(bundle, images, variant)
    text, truncated, warnings = encode_prompts(bundle, prompts)          # (P, E)
    s = float(bundle.model.logit_scale.detach().exp().reshape(-1)[0])   # the model's own scale
    sims = torch.einsum("bne,pe->bpn", tokens.patches, text)             # (B, P, N)
    attn = torch.softmax(s * sims, dim=-1)                               # (B, P, N), sums to 1 over N
    scores = tokens.image @ text.T                                       # (B, P)
    (B, P, _), (h, w) = sims.shape, tokens.grid
    return CrossOut(
        sims=sims.reshape(B, P, h, w).numpy().astype(np.float32),
        attn=attn.reshape(B, P, h, w).numpy().astype(np.float32),
        scores=scores.numpy().astype(np.float32), grid=(h, w), prompts=list(prompts),
        variant=tokens.variant, logit_scale=s, truncated=truncated, warnings=warnings)


def per_word(bundle: ClipBundle, images: torch.Tensor | PatchTokens, prompt: str,
             variant: str = "value", template: str = WORD_TEMPLATE) -> CrossOut:
    """One map per content word, each word embedded alone in `template` ("a photo of a {word}.")."""
    words = prompt_words(bundle, prompt)
    if not words:
        raise AttnvizError(f"prompt {prompt!r} has no content words for per-word maps")
    out = clip_cross(bundle, images, [template.format(word=w) for w in words], variant)
    out.words = words
    return out


def contrast(sims: np.ndarray | torch.Tensor) -> np.ndarray:
    """c_i minus the mean of the other prompts' c_i: (B, P, h, w) -> (B, P, h, w), P >= 2."""
    c = np.asarray(sims, dtype=np.float32)
    if c.ndim != 4:
        raise AttnvizError(f"contrast needs (B, P, h, w) similarities, got shape {c.shape}")
    P = c.shape[1]
    if P < 2:
        raise AttnvizError("--contrast needs at least two prompts")
    others = (c.sum(axis=1, keepdims=True) - c) / (P - 1)                 # (B, P, h, w)
    return c - others
