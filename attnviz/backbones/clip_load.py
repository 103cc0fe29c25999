"""Loading open_clip models: architecture checks, cached or downloaded weights, offline-safe."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from attnviz.backbones import hub
from attnviz.errors import AttnvizError, one_line

__all__ = ["EXTRA_HINT", "RANDOM", "ClipBundle", "supported_archs", "default_pretrained", "load_clip",
           "weights_path"]

EXTRA_HINT = 'CLIP backbones need the optional extra: pip install -e ".[clip]"'
RANDOM = "random"                     # pretrained=RANDOM: random init (tests, smoke runs), flagged


def _open_clip() -> Any:
    """Import open_clip lazily; a missing extra is a one-line AttnvizError."""
    try:
        import open_clip
    except ImportError:
        raise AttnvizError(EXTRA_HINT) from None
    return open_clip


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
    interpolation: str = "bicubic"      # resampling of the model's own preprocess cfg (open_clip's default)
    text_cache: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict, repr=False)  # prompt -> (E,), tokens


def default_pretrained(arch: str) -> str | None:
    """The tag load_clip uses when none is given: openai, else a laion2b tag, else the first."""
    tags = _open_clip().list_pretrained_tags_by_model(arch)
    if not tags:
        return None
    if "openai" in tags:
        return "openai"
    return next((t for t in tags if t.startswith("laion2b")), tags[0])


def weights_path(arch: str, tag: str, cache_dir: str | None = None) -> str:
    """The weight file of (arch, tag): open_clip's cache, else downloaded from the HF hub or its URL.

    Offline or without network a missing file is one AttnvizError, at once (no hub retries).
    """
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    cfg = _open_clip().get_pretrained_cfg(arch, tag)
    if cfg.get("file"):
        return cfg["file"]
    hf, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    what = f"CLIP weights {arch}:{tag}"
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        hf = ""                                   # open_clip itself falls back to the URL then
    names: list[str] = []
    if hf:                                        # same names and order as download_pretrained_from_hf
        repo, name = os.path.split(hf)            # "org/model/" -> ("org/model", "")
        name = name or HF_WEIGHTS_NAME
        names = [HF_SAFE_WEIGHTS_NAME] if name == HF_WEIGHTS_NAME else []
        names += [name[:-4] + ".safetensors"] if name.endswith((".bin", ".pth")) and not names else []
        names.append(name)
        path, _ = hub.hf_cached(repo, names, cache_dir)
        if path:
            return path
    folder = cache_dir or os.path.expanduser("~/.cache/clip")
    if url:                                       # download_pretrained_from_url's target (+ torch hub)
        for path in (os.path.join(folder, os.path.basename(url)),
                     os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))):
            if os.path.isfile(path):
                return path
    if hf:                                        # not cached: download like open_clip, the hub first
        return hub.hf_fetch(repo, names, what=what, cache_dir=cache_dir)
    if url:
        return hub.url_fetch(url, folder, what=what)
    raise AttnvizError(f"open_clip knows no download source for CLIP weights {arch}:{tag}")


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


def _check_tokenizer(oc: Any, arch: str, cache_dir: str | None) -> None:
    """An HF tokenizer the arch needs must be cached, or downloadable now (open_clip fetches it)."""
    hf_tok = (oc.get_model_config(arch) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
    if not hf_tok:
        return
    path, folder = hub.hf_cached(hf_tok, ["tokenizer.json", "tokenizer_config.json"], cache_dir)
    if not path and not hub.online():
        raise hub.missing(f"the tokenizer {hf_tok} of CLIP {arch}", folder)


def load_clip(arch: str, pretrained: str | None = None, weights_file: str | None = None,
              device: str = "cpu", cache_dir: str | None = None) -> ClipBundle:
    """Load an open_clip model: a tag (cached, else downloaded when online), a weights file, or random init."""
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
    _check_tokenizer(oc, arch, cache_dir)
    source = None
    if weights_file is not None:
        if not os.path.isfile(weights_file):
            raise AttnvizError(f"CLIP weights file not found: {weights_file}")
        source = weights_file
    elif tag is not None:
        source = weights_path(arch, tag, cache_dir)   # cached or downloaded; offline: raises at once
    try:
        # an absolute path is never taken for a tag; open_clip loads it strictly with weights_only=True
        path = os.path.abspath(source) if source is not None else None
        model = oc.create_model(arch, pretrained=path, weights_only=True, **kwargs)
    except AttnvizError:
        raise
    except Exception as e:
        raise AttnvizError(f"could not load CLIP {arch} weights from {source}: {one_line(e)}") from None
    model.eval()
    vis = model.visual
    side_h, side_w = (vis.image_size,) * 2 if isinstance(vis.image_size, int) else vis.image_size
    if not hasattr(vis, "grid_size") or getattr(vis, "attn_pool", None) is not None or side_h != side_w:
        raise AttnvizError(f"CLIP {arch}: cross maps need a square open_clip ViT image tower "
                           f"with a class token; this one is {type(vis).__name__} {side_h}x{side_w}")
    try:
        tokenizer = oc.get_tokenizer(arch)
    except Exception as e:
        raise AttnvizError(f"could not build the tokenizer of CLIP {arch}: {one_line(e)}") from None
    pp = oc.get_model_preprocess_cfg(model)
    return ClipBundle(
        model=model, tokenizer=tokenizer, arch=arch, pretrained=source if weights_file else tag,
        mean=tuple(float(m) for m in pp["mean"]), std=tuple(float(s) for s in pp["std"]),
        image_size=int(side_h), grid=(int(vis.grid_size[0]), int(vis.grid_size[1])),
        context_length=int(getattr(tokenizer, "context_length", None) or model.context_length),
        random_init=random_init, interpolation=str(pp.get("interpolation", "bicubic")))
