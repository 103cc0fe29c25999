"""A user's own model: `--model package.module:factory`, a callable returning an nn.Module."""
from __future__ import annotations

import importlib
import os
import sys

import torch
from torch import nn

from attnviz.backbones.registry import register_family
from attnviz.backbones.base import Backbone, describe_layers, find_classifier, last_linear, last_stage
from attnviz.backbones.weights import WeightsSpec, load_into
from attnviz.errors import AttnvizError

__all__ = ["load_user_model", "build_from_factory"]

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
    model.eval().to(device)
    size = input_size or int(getattr(model, "input_size", 224))
    tokens = getattr(model, "tokens", None)
    try:
        layers, order = describe_layers(model, size, device, tokens)
    except RuntimeError as e:
        raise AttnvizError(f"{spec} cannot run on {size}px inputs ({str(e).splitlines()[0]})") from None
    head = last_linear(model)
    n_classes = head[1].out_features if head else 0
    categories = list(getattr(model, "categories", None) or [f"class {i}" for i in range(n_classes)])
    classifier, pooled = find_classifier(order, layers, len(categories))
    try:
        default = getattr(model, "default_layer", None) or last_stage(model, layers, len(categories))
    except ValueError:
        raise AttnvizError(f"{spec} produces no spatial feature map to read") from None
    return Backbone(name=spec, model=model, weights=described, pretrained=weights.pretrained,
                    categories=categories, mean=tuple(getattr(model, "mean", IMAGENET_MEAN)),
                    std=tuple(getattr(model, "std", IMAGENET_STD)), input_size=size,
                    default_layer=default, layers=layers, classifier=classifier,
                    classifier_layer=pooled, tokens=tokens, device=device)
