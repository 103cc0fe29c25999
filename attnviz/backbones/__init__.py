"""Backbone registry: a family per file, chosen by the name's prefix ("timm:", "hf:", "clip:", "demo", else torchvision)."""
from __future__ import annotations

import torch

from attnviz.backbones import clip, demo, demo_vit, hf, timm, torchvision, user  # noqa: F401  (each registers its family)
from attnviz.backbones.base import Backbone, LayerInfo, describe_layers
from attnviz.backbones.registry import Family, register_family, registered
from attnviz.backbones.weights import WeightsSpec
from attnviz.errors import AttnvizError
from attnviz.settings import check_device

__all__ = ["Backbone", "LayerInfo", "Family", "WeightsSpec", "describe_layers", "register_family",
           "families", "load_backbone", "resolve_device"]


def families() -> list[Family]:
    """Every registered family, in listing order (the bare-name family first)."""
    return sorted(registered(), key=lambda f: f.prefix != "")


def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (CUDA when available) as a torch.device."""
    check_device(device)                # the names, as the CLI checks them before importing torch
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AttnvizError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise AttnvizError(f"--device {device!r}: {e}; use cpu, cuda or auto") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise AttnvizError(f"--device {device!r}: attnviz runs on cpu, cuda or auto")
    return dev


def load_backbone(name: str, weights: str | WeightsSpec = "DEFAULT", *, input_size: int | None = None,
                  device: str = "cpu", seed: int | None = None) -> Backbone:
    """Build and load the backbone `name`; setup problems raise AttnvizError (one line)."""
    dev = resolve_device(device)
    spec = WeightsSpec.parse(weights)
    if seed is not None:
        if not -2**63 <= seed < 2**64:
            raise AttnvizError(f"--seed {seed}: use a whole number between 0 and 2^64 - 1")
        torch.manual_seed(seed)
    fams = sorted(registered(), key=lambda f: -len(f.prefix))     # the fallback "" comes last
    fam = next(f for f in fams if not f.prefix or name == f.prefix or name.startswith(f.prefix + ":"))
    return fam.loader(name, spec, input_size=input_size, device=dev)
