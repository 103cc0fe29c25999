"""Backbone registry: a family per file, chosen by the name's prefix ("clip:", "demo", else torchvision)."""
from __future__ import annotations

from typing import Callable

import torch

from attnviz.backbones.base import Backbone, LayerInfo, describe_layers
from attnviz.errors import AttnvizError

__all__ = ["Backbone", "LayerInfo", "describe_layers", "register_family", "load_backbone",
           "resolve_device"]

Loader = Callable[..., Backbone]
_FAMILIES: dict[str, Loader] = {}


def register_family(prefix: str) -> Callable[[Loader], Loader]:
    """Register a loader for backbone names starting with `prefix` ("" is the fallback)."""
    def wrap(fn: Loader) -> Loader:
        if prefix in _FAMILIES:
            raise ValueError(f"backbone family {prefix!r} is already registered")
        _FAMILIES[prefix] = fn
        return fn
    return wrap


def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (CUDA when available) as a torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AttnvizError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise AttnvizError(f"--device {device!r}: {e}; use cpu, cuda or auto") from None


def load_backbone(name: str, weights: str = "DEFAULT", *, input_size: int | None = None,
                  device: str = "cpu", seed: int | None = None) -> Backbone:
    """Build and load the backbone `name`; setup problems raise AttnvizError (one line)."""
    from attnviz.backbones import clip, demo, torchvision, user  # noqa: F401  (registers the families)

    dev = resolve_device(device)
    if seed is not None:
        torch.manual_seed(seed)
    for prefix, loader in sorted(_FAMILIES.items(), key=lambda kv: -len(kv[0])):
        if prefix and (name == prefix or name.startswith(prefix + ":")):
            return loader(name, weights, input_size=input_size, device=dev)
    return _FAMILIES[""](name, weights, input_size=input_size, device=dev)
