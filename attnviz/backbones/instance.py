"""A model instance (`Analyser(model)`): timm and Hugging Face modules describe themselves, any other
nn.Module is read like `--model` (its optional attributes, or the keywords given here)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from attnviz.backbones.base import Backbone
from attnviz.backbones.hf import hf_backbone
from attnviz.backbones.timm import timm_backbone
from attnviz.backbones.torchvision import _weights_enum, torchvision_backbone, torchvision_name
from attnviz.backbones.user import Tokens, module_backbone
from attnviz.errors import AttnvizError
from attnviz.probes.receptive import fingerprint

__all__ = ["from_module", "module_device"]


def module_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; CPU for a model with neither."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _family(model: nn.Module) -> str:
    module = type(model).__module__
    if module.startswith("timm.") and isinstance(getattr(model, "pretrained_cfg", None), dict):
        return "timm"
    if module.startswith("transformers.") and hasattr(model, "config"):
        return "hf"
    if module.startswith("torchvision.models"):
        return "torchvision"
    return "module"


def from_module(model: nn.Module, *, name: str | None = None, input_size: int | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                categories: Sequence[str] | None = None, tokens: Tokens | None = None) -> Backbone:
    """The Backbone of a model instance, on the device its parameters are on (never moved).

    torchvision models: the builder whose default weights have its parameter count (its name,
    classes, mean/std and size from torchvision's metadata); timm models: mean, std, size and classes from `pretrained_cfg`; transformers models: classes,
    tokens and size from `config`; any other: attributes `mean`, `std`, `input_size`, `categories`,
    `tokens` when it has them, else ImageNet's mean/std, 224 px and `class i`. The keywords win."""
    if not isinstance(model, nn.Module):
        raise AttnvizError(f"expected a backbone name, a Backbone or an nn.Module, got {type(model).__name__}")
    for key, value in (("mean", mean), ("std", std)):
        if value is not None and (len(value) != 3 or not all(isinstance(v, (int, float)) for v in value)):
            raise AttnvizError(f"{key}={value!r}: give three numbers (R, G, B)")
    if std is not None and any(v <= 0 for v in std):
        raise AttnvizError(f"std={std!r}: every value must be > 0")
    device = module_device(model)
    family = _family(model)
    builder = torchvision_name(model) if family == "torchvision" else None   # e.g. "resnet18"
    name = name or builder or type(model).__name__
    # the weights' own fingerprint: the geometry cache must never serve one instance's cells to another
    described = f"instance (weights sum {fingerprint(model):.9g})"
    if family == "timm":
        bb = timm_backbone(model, name, described, True, input_size=input_size, device=device)
    elif family == "hf":
        side = input_size or _side(model)
        pre = (tuple(mean), tuple(std), side, "bilinear", []) if mean is not None and std is not None else None
        bb = hf_backbone(model, name, described, True, pre, input_size=input_size, device=device)
    elif builder is not None:          # torchvision's weights metadata: classes, mean/std, size
        bb = torchvision_backbone(model, name, described, True, _weights_enum(builder).DEFAULT,
                                  input_size=input_size, device=device)
    else:
        bb = module_backbone(model, name, described, True, input_size=input_size, device=device, tokens=tokens)
    changes: dict = {}
    if mean is not None:
        changes["mean"] = tuple(float(v) for v in mean)
    if std is not None:
        changes["std"] = tuple(float(v) for v in std)
    if categories is not None:
        names = [str(c) for c in categories]
        if len(names) != len(bb.categories):
            raise AttnvizError(f"categories: {len(names)} names for a head of {len(bb.categories)} outputs")
        changes["categories"] = names
    return dataclasses.replace(bb, **changes) if changes else bb


def _side(model: nn.Module) -> int:
    size = getattr(model.config, "image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)
