"""timm models by name (`timm:NAME[.TAG]`): timm builds the model and says its preprocessing and tokens."""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnviz.backbones import hub
from attnviz.backbones.base import Backbone, LayerInfo, checked_token_head, describe_layers, find_classifier, last_stage
from attnviz.backbones.registry import register_family
from attnviz.backbones.weights import WeightsSpec, check_input_size, load_state_dict_file, warn_random
from attnviz.errors import AttnvizError, one_line

__all__ = ["load_timm", "timm_backbone", "timm_names", "EXTRA_HINT"]

EXTRA_HINT = 'timm backbones need the optional extra: pip install -e ".[timm]"'


def _timm() -> Any:
    """Import timm lazily; a missing extra is a one-line AttnvizError."""
    try:
        import timm
    except ImportError:
        raise AttnvizError(EXTRA_HINT) from None
    return timm


def timm_names() -> list[str]:
    """Every architecture timm can build, as `timm:NAME`."""
    return [f"timm:{n}" for n in _timm().list_models()]


def _resolve(name: str, weights: WeightsSpec) -> tuple[str, str]:
    """`timm:ARCH[.TAG]` and --weights TAG -> (arch, tag or ''), both checked against timm's lists."""
    timm = _timm()
    arch, _, tag = name.removeprefix("timm:").partition(".")
    if weights.kind == "tag":
        if tag and tag != weights.value:
            raise AttnvizError(f"{name} already names the tag {tag!r}; drop --weights {weights.value}")
        tag = weights.value
    known = timm.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see `attnviz backbones`"
        raise AttnvizError(f"unknown timm model {arch!r}: {hint}")
    if tag:
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            valid = ", ".join(tags) if tags else "none (pass --weights FILE or none)"
            raise AttnvizError(f"timm {arch} has no pretrained tag {tag!r}; its tags: {valid}")
    return arch, tag


def _safe_names(filename: str) -> list[str]:
    """The safetensors files timm tries before `filename` (same order as timm's hub loader)."""
    if filename.endswith(".safetensors"):
        return [filename]
    safe = {"pytorch_model.bin": "model.safetensors",
            "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}.get(filename)
    if safe is None and filename.endswith((".bin", ".pth")):
        safe = filename[:-4] + ".safetensors"
    return [safe, filename] if safe else [filename]


def _weights_file(full: str, cfg: dict) -> str:
    """The pretrained file of `cfg`: timm's HF hub repo or URL, cached or downloaded (offline: one line)."""
    what = f"timm weights {full}"
    if cfg.get("file"):
        return str(cfg["file"])
    if cfg.get("hf_hub_id"):
        repo, _, rev = cfg["hf_hub_id"].partition("@")
        names = _safe_names(cfg.get("hf_hub_filename") or "pytorch_model.bin")
        return hub.hf_fetch(repo, names, what=what, revision=rev or None)
    if cfg.get("url"):
        return hub.url_fetch(cfg["url"], os.path.join(torch.hub.get_dir(), "checkpoints"), what=what)
    raise AttnvizError(f"timm has no pretrained weights for {full}; pass --weights FILE or none")


def _build(arch: str, tag: str, weights: WeightsSpec) -> tuple[nn.Module, str]:
    """The model with the asked weights, and how to describe them."""
    timm = _timm()
    full = f"{arch}.{tag}" if tag else arch
    if weights.kind == "none":
        warn_random(f"timm:{full}")
        return timm.create_model(full, pretrained=False), "none"
    if weights.kind == "file":
        sd = load_state_dict_file(weights.path)
        model = timm.create_model(full, pretrained=False)
        head = model.pretrained_cfg.get("classifier")
        key = f"{head}.weight" if isinstance(head, str) else None
        if key in sd and sd[key].shape[0] != model.num_classes:   # a fine-tuned head: its class count
            model = timm.create_model(full, pretrained=False, num_classes=sd[key].shape[0])
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise AttnvizError(f"--weights {weights.path} does not fit timm {full}: {one_line(e)}") from None
        return model, str(weights.path)
    cfg = timm.models.get_pretrained_cfg(full)                        # which file, without a download
    path = _weights_file(full, cfg.to_dict() if cfg is not None else {})
    if path.endswith(".npz"):
        raise AttnvizError(f"timm weights {full} come as a JAX .npz file; attnviz loads state_dicts "
                           f"only: pass --weights FILE (a timm state_dict) or another tag")
    sd = load_state_dict_file(Path(path))      # weights_only: no pickled code runs
    try:   # timm's own loader adapts the checkpoint (filters, head, input channels)
        model = timm.create_model(full, pretrained=True, pretrained_cfg_overlay={"state_dict": sd})
    except Exception as e:  # noqa: BLE001
        raise AttnvizError(f"could not load timm weights {full} from {path}: {one_line(e)}") from None
    return model, f"{full} ({path})"


def _categories(model: nn.Module) -> tuple[list[str], list[str]]:
    """Class names from timm's ImageNet info when the head fits one of its subsets; else `class i`."""
    from timm.data import ImageNetInfo, infer_imagenet_subset
    n = int(getattr(model, "num_classes", 0) or 0)
    if n == 0:        # a feature model (no head): outputs are pooled features
        n = int(getattr(model, "num_features", 0))
        return [f"feature {i}" for i in range(n)], ["no classifier head: predictions rank its pooled features"]
    subset = infer_imagenet_subset(model)
    if subset:
        info = ImageNetInfo(subset)
        if info.num_classes() == n:
            return [info.index_to_description(i).split(",")[0].strip() for i in range(n)], []
    return [f"class {i}" for i in range(n)], []


def _tokens(model: nn.Module) -> tuple[int, tuple[int, int]] | None:
    """(prefix tokens, patch grid) of a token model (ViT, DeiT, register ViTs), from the model."""
    pe = getattr(model, "patch_embed", None)
    if not hasattr(model, "num_prefix_tokens") or getattr(pe, "grid_size", None) is None:
        return None
    gh, gw = pe.grid_size
    return int(model.num_prefix_tokens), (int(gh), int(gw))


def _default_layer(model: nn.Module, layers: dict[str, LayerInfo], n: int, tokens) -> str:
    """A token model's last block (`blocks.N`); else the last feature stage."""
    blocks = [k for k in layers if k.startswith("blocks.") and k.count(".") == 1]
    if tokens is not None and blocks:
        return blocks[-1]
    return last_stage(model, layers, n)


@register_family("timm", summary="any timm model by name, weights from timm's hub (the timm extra)",
                 syntax="timm:NAME[.TAG]", names=timm_names)
def load_timm(name: str, weights: WeightsSpec, *, input_size: int | None = None,
              device: torch.device = torch.device("cpu")) -> Backbone:
    """`timm:NAME` with --weights DEFAULT (timm's default tag), a TAG, a FILE, or none."""
    arch, tag = _resolve(name, weights)
    model, described = _build(arch, tag, weights)
    return timm_backbone(model, name, described, weights.pretrained, input_size=input_size, device=device)


def timm_backbone(model: nn.Module, name: str, described: str, pretrained: bool, *, input_size: int | None = None,
                  device: torch.device = torch.device("cpu")) -> Backbone:
    """A built timm model as a Backbone: its pretrained_cfg says mean, std, size; the model its tokens."""
    from timm.data import resolve_model_data_config
    model.eval().to(device)
    data = resolve_model_data_config(model)
    size = int(data["input_size"][-1])
    tokens = _tokens(model)
    pe = getattr(model, "patch_embed", None)
    if pe is not None and getattr(pe, "img_size", None) and not getattr(model, "dynamic_img_size", False):
        size = check_input_size(name, input_size, int(pe.img_size[0]))   # position embeddings fix it
    elif input_size:
        size = input_size
    categories, notes = _categories(model)
    try:
        layers, order = describe_layers(model, size, device, tokens)
    except RuntimeError as e:
        raise AttnvizError(f"{name} cannot run on {size}px inputs ({one_line(e)}); try another --input-size") from None
    head, pooled = find_classifier(order, layers, len(categories))
    try:
        default = _default_layer(model, layers, len(categories), tokens)
    except ValueError:
        raise AttnvizError(f"{name} produces no spatial feature map to read") from None
    blocks = getattr(model, "blocks", None)
    head_fn = None
    if tokens is not None and isinstance(blocks, nn.Sequential) and len(blocks) and hasattr(model, "forward_head"):
        head_fn = checked_token_head(model, lambda z: model.forward_head(model.norm(z)), blocks[-1], size, device)
    return Backbone(name=name, model=model, weights=described, pretrained=pretrained,
                    token_head=head_fn, categories=categories, mean=tuple(float(m) for m in data["mean"]),
                    std=tuple(float(s) for s in data["std"]), input_size=size, default_layer=default,
                    layers=layers, classifier=head, classifier_layer=pooled, tokens=tokens, device=device,
                    notes=notes, interpolation=str(data.get("interpolation", "bilinear")))
