"""The demo world's ViT (`--backbone demo-vit`): class-token attention of a transformer trained here."""
from __future__ import annotations

import torch

from attnviz.backbones.base import Backbone, describe_layers
from attnviz.backbones.registry import register_family
from attnviz.backbones.weights import WeightsSpec, check_input_size, load_into, load_state_dict_file, warn_random
from attnviz.zoo.vit import VIT_WEIGHTS_PATH, DemoViT, load_demo_vit, shape_of

__all__ = ["load_demo_vit_backbone"]


@register_family("demo-vit", summary="the small ViT trained in this repository on the demo world",
                 syntax="demo-vit")
def load_demo_vit_backbone(name: str, weights: WeightsSpec, *, input_size: int | None = None,
                           device: torch.device = torch.device("cpu")) -> Backbone:
    """`demo-vit` with --weights DEFAULT (the committed weights), a FILE, or none (random init)."""
    weights.no_tags("demo-vit")
    if weights.kind == "none":
        warn_random("demo-vit")
        model, desc = DemoViT().eval(), "none"
    elif weights.kind == "file":        # its depth and stem as the file has them (train_vit --depth/--context)
        sd = load_state_dict_file(weights.path)
        model, desc = DemoViT(**shape_of(sd)), str(weights.path)
        load_into(model, weights.path, "demo-vit", sd)
        model.eval()
    else:
        model, desc = load_demo_vit(), f"attnviz/zoo/{VIT_WEIGHTS_PATH.name}"
    check_input_size("demo-vit", input_size, model.input_size)
    model.to(device)
    tokens = (model.prefix, model.grid)
    layers, _ = describe_layers(model, model.input_size, device, tokens)
    return Backbone(name="demo-vit", model=model, weights=desc, pretrained=desc != "none",
                    categories=list(model.categories), mean=tuple(model.mean), std=tuple(model.std),
                    input_size=model.input_size, default_layer=f"blocks.{len(model.blocks) - 1}",
                    layers=layers, tokens=tokens, device=device, token_head=model.forward_head)
