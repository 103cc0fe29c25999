"""A user's own model: `--model package.module:factory`, a callable returning an nn.Module."""
from __future__ import annotations

import importlib
import os
import sys

import torch
from torch import nn

from attnviz.backbones.registry import register_family
from attnviz.backbones.base import (
    Backbone, LayerInfo, describe_layers, find_classifier, last_linear, last_stage, logits_of,
)
from attnviz.backbones.weights import WeightsSpec, load_into
from attnviz.errors import AttnvizError
from attnviz.probes.locate import locate

__all__ = ["load_user_model", "module_backbone", "build_from_factory", "infer_tokens"]

Tokens = tuple[int, tuple[int, int]]
MAX_PREFIX = 16   # class, distillation and register tokens: a handful, never a grid's worth

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build_from_factory(spec: str) -> nn.Module:
    """Import `package.module:factory` (from PYTHONPATH or the current folder) and call it."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise AttnvizError(f"--model {spec!r}: expected package.module:factory")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())   # like `python -m`: the user's own package in this folder
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise AttnvizError(f"--model {spec!r}: cannot import it ({e})") from None
    try:
        model = factory()
    except Exception as e:  # the user's code: report, don't crash
        raise AttnvizError(f"--model {spec!r}: the factory failed ({type(e).__name__}: {e})") from None
    if not isinstance(model, nn.Module):
        raise AttnvizError(f"--model {spec!r}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


@register_family("model", summary="your own model: a factory returning an nn.Module",
                 syntax="--model package.module:factory")
def load_user_model(name: str, weights: WeightsSpec, *, input_size: int | None = None,
                    device: torch.device = torch.device("cpu")) -> Backbone:
    """A user model; optional attributes `categories`, `mean`, `std`, `input_size`, `tokens`."""
    spec = name.removeprefix("model:")
    model = build_from_factory(spec)
    described = "factory"
    weights.no_tags("a --model")
    if weights.kind == "file":
        load_into(model, weights.path, spec)
        described = str(weights.path)
    return module_backbone(model, spec, described, weights.pretrained, input_size=input_size, device=device)


def module_backbone(model: nn.Module, spec: str, described: str, pretrained: bool, *,
                    input_size: int | None = None, device: torch.device = torch.device("cpu"),
                    tokens: Tokens | None = None) -> Backbone:
    """Any nn.Module as a Backbone; optional attributes `categories`, `mean`, `std`, `input_size`, `tokens`."""
    model.eval().to(device)
    size = input_size or int(getattr(model, "input_size", 224))
    tokens = tokens or _declared_tokens(model, spec)
    try:
        layers, order = describe_layers(model, size, device, tokens)
        example = torch.zeros(1, 3, size, size, device=device)
        with torch.no_grad():
            logits = logits_of(model(example))
        inventory = locate(model, example)
    except Exception as e:  # the user's code: one line, never a traceback
        raise AttnvizError(f"{spec} cannot run on {size}px inputs ({type(e).__name__}: "
                           f"{(str(e).splitlines() or [''])[0]})") from None
    if logits.dim() != 2:
        raise AttnvizError(f"{spec} returns logits of shape {tuple(logits.shape)}; expected (batch, classes)")
    notes: list[str] = []
    selfs = [a for a in inventory.self_attention() if a.kind == "self-attention"]
    if selfs and tokens is not None and selfs[-1].keys != tokens[0] + tokens[1][0] * tokens[1][1]:
        raise AttnvizError(f"{spec} declares tokens = {tokens} ({tokens[0] + tokens[1][0] * tokens[1][1]} "
                           f"tokens), but its attention {selfs[-1].name} runs over {selfs[-1].keys}")
    if selfs and tokens is None:
        tokens = infer_tokens(selfs[-1].keys, layers)
        if tokens is not None:
            layers, order = describe_layers(model, size, device, tokens)
            notes.append(f"token grid inferred from {selfs[-1].name}: {tokens[0]} prefix tokens, "
                         f"{tokens[1][0]}×{tokens[1][1]} patches (declare `tokens` to override)")
    head = last_linear(model)
    n_classes = head[1].out_features if head else 0
    categories = list(getattr(model, "categories", None) or [f"class {i}" for i in range(n_classes)])
    classifier, pooled = find_classifier(order, layers, len(categories))
    try:
        default = getattr(model, "default_layer", None) or last_stage(model, layers, len(categories))
    except ValueError:
        raise AttnvizError(f"{spec} produces no spatial feature map to read") from None
    return Backbone(name=spec, model=model, weights=described, pretrained=pretrained,
                    categories=categories, mean=tuple(getattr(model, "mean", IMAGENET_MEAN)),
                    std=tuple(getattr(model, "std", IMAGENET_STD)), input_size=size,
                    default_layer=default, layers=layers, classifier=classifier,
                    classifier_layer=pooled, tokens=tokens, device=device, notes=notes)




def _declared_tokens(model: nn.Module, spec: str) -> Tokens | None:
    """The model's `tokens = (prefix, (H, W))` attribute, checked for form."""
    tokens = getattr(model, "tokens", None)
    if tokens is None:
        return None
    try:
        prefix, (h, w) = tokens
        if not all(isinstance(v, int) and v >= 0 for v in (prefix, h, w)) or h * w == 0:
            raise ValueError
    except (TypeError, ValueError):
        raise AttnvizError(f"{spec}: tokens = {tokens!r}; expected (prefix, (H, W)) of whole numbers") from None
    return int(prefix), (int(h), int(w))


def infer_tokens(keys: int, layers: dict[str, LayerInfo]) -> Tokens | None:
    """(prefix, grid) with prefix = keys − H·W, from the feature map whose grid fits the keys best.

    The patch embedding is a feature map (B, C, H, W) whose H·W patches, after a few prefix
    tokens (class, distillation, registers), are the attention's keys.
    """
    grids = {info.grid for info in layers.values() if info.layout.kind in ("NCHW", "NHWC")}
    fits = [(keys - h * w, (h, w)) for h, w in grids if 0 <= keys - h * w <= MAX_PREFIX and h * w > 1]
    return min(fits) if fits else None
