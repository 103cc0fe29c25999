"""CLIP (open_clip) backbone: offline-safe loading and text→image cross-attention maps (spec §5)."""
from __future__ import annotations

import difflib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attnviz.errors import AttnvizError

__all__ = ["supported_archs", "ClipBundle", "PatchTokens", "CrossOut", "load_clip", "default_pretrained", "encode_patches",
           "encode_prompts", "clip_cross", "per_word", "prompt_words", "contrast", "RANDOM", "VARIANTS",
           "WORD_TEMPLATE", "STOP_WORDS"]

EXTRA_HINT = 'CLIP backbones need the optional extra: pip install -e ".[clip]"'
RANDOM = "random"                     # pretrained=RANDOM: random init (tests, smoke runs), flagged
VARIANTS = ("value", "plain")         # value: MaskCLIP value path of the last block; plain: its output
WORD_TEMPLATE = "a photo of a {word}."  # per-word maps embed each content word alone in this template
STOP_WORDS = frozenset("a an the of in on at with and or to for by from is are this that some its "
                       "photo photograph picture image".split())


def _open_clip() -> Any:
    """Import open_clip lazily; a missing extra is a one-line AttnvizError."""
    try:
        import open_clip
    except ImportError:
        raise AttnvizError(EXTRA_HINT) from None
    return open_clip


def _one_line(e: BaseException) -> str:
    """First line of an exception's message, with its type when the message is empty."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@dataclass
class ClipBundle:
    """A loaded CLIP model with everything needed to feed it and read its maps."""

    model: Any                          # open_clip CLIP / CustomTextCLIP, in eval mode
    tokenizer: Any                      # open_clip tokenizer: list[str] -> (P, context_length) ids
    arch: str                           # open_clip architecture name ("ViT-B-16")
    pretrained: str | None              # tag ("openai"), weights file path, or None for random init
    mean: tuple[float, float, float]    # normalisation the images must already have
    std: tuple[float, float, float]
    image_size: int                     # S: images are (B, 3, S, S)
    grid: tuple[int, int]               # (h, w) patch grid, from model.visual.grid_size
    context_length: int                 # text tokens the model reads (77 for CLIP)
    random_init: bool = False           # True: no trained weights were loaded
    text_cache: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict, repr=False)  # prompt -> (E,), tokens


@dataclass
class PatchTokens:
    """One pass of the image tower: L2-normalised patch embeddings and the image embedding."""

    patches: torch.Tensor               # (B, N, E) t̂_i, N = h*w, row-major, class token excluded
    image: torch.Tensor                 # (B, E) normalised model.encode_image output
    grid: tuple[int, int]               # (h, w)
    variant: str                        # "value" or "plain"


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


# ----------------------------------------------------------------------------- loading

def default_pretrained(arch: str) -> str | None:
    """The tag load_clip uses when none is given: openai, else a laion2b tag, else the first."""
    tags = _open_clip().list_pretrained_tags_by_model(arch)
    if not tags:
        return None
    if "openai" in tags:
        return "openai"
    return next((t for t in tags if t.startswith("laion2b")), tags[0])


def _hf_cache_dir() -> str:
    """huggingface_hub's cache folder, read from the environment now (not at import time)."""
    env = os.environ
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not hub:
        home = env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
        hub = os.path.join(home, "hub")
    return os.path.expanduser(os.path.expandvars(hub))


def _hf_cached(repo: str, names: list[str], cache_dir: str | None) -> tuple[str | None, str]:
    """First of `names` in the local HF cache of `repo` (no network), and the repo's cache folder."""
    from huggingface_hub import try_to_load_from_cache
    folder = cache_dir or _hf_cache_dir()
    for n in names:
        path = try_to_load_from_cache(repo, n, cache_dir=folder)
        if isinstance(path, str) and os.path.isfile(path):
            return path, folder
    return None, os.path.join(folder, "models--" + repo.replace("/", "--"))


def _cached_weights(arch: str, tag: str, cache_dir: str | None) -> str:
    """Path of the weight file open_clip would download for (arch, tag) if already cached; else raise."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    cfg = _open_clip().get_pretrained_cfg(arch, tag)
    if cfg.get("file"):
        return cfg["file"]
    hf, url, where = cfg.get("hf_hub", ""), cfg.get("url", ""), []
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        hf = ""                                   # open_clip itself falls back to the URL then
    if hf:                                        # same names and order as download_pretrained_from_hf
        repo, name = os.path.split(hf)            # "org/model/" -> ("org/model", "")
        name = name or HF_WEIGHTS_NAME
        names = [HF_SAFE_WEIGHTS_NAME] if name == HF_WEIGHTS_NAME else []
        names += [name[:-4] + ".safetensors"] if name.endswith((".bin", ".pth")) and not names else []
        path, folder = _hf_cached(repo, names + [name], cache_dir)
        if path:
            return path
        where.append(folder)
    if url:                                       # download_pretrained_from_url's target (+ torch hub)
        for folder in (cache_dir or os.path.expanduser("~/.cache/clip"),
                       os.path.join(torch.hub.get_dir(), "checkpoints")):
            path = os.path.join(folder, os.path.basename(url))
            if os.path.isfile(path):
                return path
        where.append(cache_dir or os.path.expanduser("~/.cache/clip"))
    if not where:
        raise AttnvizError(f"open_clip knows no download source for CLIP weights {arch}:{tag}")
    raise AttnvizError(
        f"CLIP weights {arch}:{tag} are not in the local cache ({where[0]}) and attnviz does not download: "
        f"download them once with network, or pass --weights FILE, "
        f"or set HF_HOME (or the cache folder) to a folder that has them")


def _tower_kind(oc: Any, arch: str) -> str:
    """'' for open_clip's own ViT image tower, else what the arch uses instead."""
    vcfg = (oc.get_model_config(arch) or {}).get("vision_cfg", {})
    return ("a timm image model" if "timm_model_name" in vcfg else "a ResNet" if not isinstance(
        vcfg.get("layers", 0), int) else "an attentional pooler" if vcfg.get("attentional_pool") else "")


def supported_archs() -> list[str]:
    """The open_clip architectures whose image tower attnviz can read (open_clip's own ViTs)."""
    oc = _open_clip()
    return [a for a in oc.list_models() if not _tower_kind(oc, a)]


def _check_arch(arch: str) -> None:
    """Raise AttnvizError for an unknown arch (naming close ones) or one without a ViT image tower."""
    oc = _open_clip()
    models = oc.list_models()
    if arch not in models:
        lower = {m.lower(): m for m in models}
        close = difflib.get_close_matches(arch.lower(), list(lower), n=5, cutoff=0.6)
        hint = ", ".join(lower[c] for c in close) if close else "see open_clip.list_models()"
        raise AttnvizError(f"unknown CLIP architecture {arch!r}; close names: {hint}")
    kind = _tower_kind(oc, arch)
    if kind:
        raise AttnvizError(f"CLIP {arch}: cross maps need open_clip's own ViT image tower with a class "
                           f"token, but {arch} uses {kind}; try ViT-B-16")


def load_clip(arch: str, pretrained: str | None = None, weights_file: str | None = None,
              device: str = "cpu", cache_dir: str | None = None) -> ClipBundle:
    """Load an open_clip model without touching the network: cached tag, weights file, or random init."""
    oc = _open_clip()
    _check_arch(arch)
    tags = oc.list_pretrained_tags_by_model(arch)
    random_init = pretrained == RANDOM or (pretrained is None and not tags and weights_file is None)
    tag = None if random_init else (pretrained or (None if weights_file else default_pretrained(arch)))
    if tag is not None and not oc.is_pretrained_cfg(arch, tag):
        valid = ", ".join(tags) if tags else f"none (use --weights FILE or pretrained={RANDOM!r})"
        raise AttnvizError(f"unknown pretrained tag {tag!r} for CLIP {arch}; valid tags: {valid}")
    kwargs: dict[str, Any] = {"device": device}
    if tag is not None:                           # the tag's activation and preprocessing
        cfg = oc.get_pretrained_cfg(arch, tag)
        kwargs["force_quick_gelu"] = bool(cfg.get("quick_gelu", False))
        kwargs["force_preprocess_cfg"] = {
            k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    hf_tok = (oc.get_model_config(arch) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
    if hf_tok and not _hf_cached(hf_tok, ["tokenizer.json", "tokenizer_config.json"], cache_dir)[0]:
        raise AttnvizError(f"the tokenizer {hf_tok} of CLIP {arch} is not in the local cache "
                           f"({_hf_cached(hf_tok, [], cache_dir)[1]}); download it once with network")
    source = None
    if weights_file is not None:
        if not os.path.isfile(weights_file):
            raise AttnvizError(f"CLIP weights file not found: {weights_file}")
        source = weights_file
    elif tag is not None:
        source = _cached_weights(arch, tag, cache_dir)   # raises at once when not cached
    try:
        # an absolute path is never taken for a tag; open_clip loads it strictly with weights_only=True
        path = os.path.abspath(source) if source is not None else None
        model = oc.create_model(arch, pretrained=path, weights_only=True, **kwargs)
    except AttnvizError:
        raise
    except Exception as e:
        raise AttnvizError(f"could not load CLIP {arch} weights from {source}: {_one_line(e)}") from None
    model.eval()
    vis = model.visual
    side_h, side_w = (vis.image_size,) * 2 if isinstance(vis.image_size, int) else vis.image_size
    if not hasattr(vis, "grid_size") or getattr(vis, "attn_pool", None) is not None or side_h != side_w:
        raise AttnvizError(f"CLIP {arch}: cross maps need a square open_clip ViT image tower "
                           f"with a class token; this one is {type(vis).__name__} {side_h}x{side_w}")
    try:
        tokenizer = oc.get_tokenizer(arch)
    except Exception as e:
        raise AttnvizError(f"could not build the tokenizer of CLIP {arch}: {_one_line(e)}") from None
    pp = oc.get_model_preprocess_cfg(model)
    return ClipBundle(
        model=model, tokenizer=tokenizer, arch=arch, pretrained=source if weights_file else tag,
        mean=tuple(float(m) for m in pp["mean"]), std=tuple(float(s) for s in pp["std"]),
        image_size=int(side_h), grid=(int(vis.grid_size[0]), int(vis.grid_size[1])),
        context_length=int(getattr(tokenizer, "context_length", None) or model.context_length),
        random_init=random_init)


# ----------------------------------------------------------------------------- image side

def _value_path(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP value path: v = x + out_proj(W_v·ln_1(x) + b_v), then v + mlp(ln_2(v)); (B, L, D)."""
    attn = block.attn
    B, L, D = x.shape
    w = attn.in_proj_weight                                               # (3D, D), None if split
    w_v = w[2 * D:] if w is not None else attn.v_proj_weight              # (D, D)
    b_v = attn.in_proj_bias[2 * D:] if attn.in_proj_bias is not None else None
    v = F.linear(block.ln_1(x), w_v, b_v)                                 # (B, L, D)
    head_scale = getattr(attn, "head_scale", None)                        # custom blocks only
    if head_scale is not None:
        v = (v.view(B, L, attn.num_heads, -1) * head_scale.view(1, 1, -1, 1)).reshape(B, L, D)
    if hasattr(attn, "ln_inner"):
        v = attn.ln_inner(v)
    v = attn.out_proj(v)
    if hasattr(block, "ln_attn"):
        v = block.ln_attn(v)
    v = x + block.ls_1(v)
    return v + block.ls_2(block.mlp(block.ln_2(v)))


def encode_patches(bundle: ClipBundle, images: torch.Tensor, variant: str = "value") -> PatchTokens:
    """Run the image tower once; hooks on its last block give the patch embeddings t̂_i."""
    if variant not in VARIANTS:
        raise AttnvizError(f"unknown CLIP map variant {variant!r}; use one of {', '.join(VARIANTS)}")
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
    try:
        with torch.no_grad():
            image = model.encode_image(images.to(p.device, p.dtype), normalize=True)   # (B, E)
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
    with torch.no_grad():
        v = _value_path(block, x) if variant == "value" else y           # (B, 1+N, D)
        t = vis.ln_post(v[:, 1:])                                         # (B, N, D) class token dropped
        if vis.proj is not None:
            t = t @ vis.proj                                              # (B, N, E)
        patches = F.normalize(t.float(), dim=-1).cpu()
    return PatchTokens(patches=patches, image=image.float().cpu(), grid=(h, w), variant=variant)


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
    """Spec §5 maps for each prompt; `images` (B, 3, S, S) normalised, or PatchTokens (its variant wins)."""
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
