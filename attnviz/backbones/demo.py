"""The demo model (`--backbone demo`): every attention kind native, trained in this repo."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from attnviz.backbones.registry import register_family
from attnviz.backbones.weights import WeightsSpec, check_input_size, load_into, warn_random
from attnviz.backbones.base import Backbone, describe_layers
from attnviz.errors import AttnvizError
from attnviz.probes.behaviour import AttentionCapture
from attnviz.text import slug, unique
from attnviz.zoo.model import DemoNet, load_demo_model, tokenize
from attnviz.zoo.palette import unlike_world
from attnviz.zoo.world import caption
from attnviz.results import AttentionMap, Options

__all__ = ["DemoBackbone", "load_demo_backbone"]


@dataclass
class DemoBackbone(Backbone):
    """DemoNet: presence classes as categories; captions ("the blue ring") as prompts."""

    native_cross: bool = True
    own_prompts: bool = True           # no --text: each image's top-1 class as its caption
    texts: tuple[str, ...] = field(default_factory=tuple)
    warned_world: bool = False         # the out-of-world warning is given once per backbone

    def prepare(self, options: Options) -> None:
        """Check that every prompt uses the caption vocabulary."""
        for prompt in options.texts:
            self._ids([prompt])
        self.texts = tuple(options.texts)

    def _ids(self, prompts: list[str]) -> torch.Tensor:
        try:
            return tokenize(prompts)
        except ValueError as e:
            raise AttnvizError(f"--text: {e}") from None

    def forward(self, x: torch.Tensor, prompts: list[list[str]] | None = None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Presence logits, and the caption-match logits and cross-attention of each image's prompts.

        Each image's prompts: its own (`prompts[i]`), else --text, else its top-1 class's caption.
        """
        model = self.model
        self._check_world(x)
        feats = model.gated_features(x)                                  # (B, C, 24, 24)
        logits = model.presence_from(feats)                              # (B, K)
        chosen, source = [], []
        for i, top in enumerate(logits.argmax(dim=1).tolist()):
            own = list(prompts[i]) if prompts and prompts[i] else list(self.texts)
            chosen.append(own or [caption(*self.categories[top].split())])
            source.append("--text" if own else "top-1 class")
        ids = torch.zeros(len(x), max(map(len, chosen)), model.context_len, dtype=torch.long)
        for i, p in enumerate(chosen):
            ids[i, :len(p)] = self._ids(p)                               # all-zero rows: padding
        with AttentionCapture(model, [model.cross_attn]) as cap:
            match = model.match_from(feats, ids.to(x.device))            # (B, k)
        cross = cap.maps[model.cross_attn][:, 0]                         # (B, k, 576), one head
        return logits, {"demo_prompts": chosen, "demo_source": source, "demo_match": match,
                        "demo_cross": cross}

    def _check_world(self, x: torch.Tensor) -> None:
        """Warn once when an image is unlike the generated scenes (the test: attnviz/zoo/palette.py)."""
        if self.warned_world:
            return
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        rgb = ((x.detach().float() * std + mean) * 255.0).clamp(0, 255).permute(0, 2, 3, 1).cpu().numpy()
        for image in rgb:
            why = unlike_world(image)
            if why is not None:
                self.warned_world = True
                warnings.warn(f"demo: an image unlike the demo's world: {why}. The demo model only knows "
                              "coloured shapes on grey clutter; its classes and maps on such images mean little.",
                              stacklevel=3)
                return

    def cross_maps(self, batch: Any) -> list[list[AttentionMap]]:
        """One map per prompt: the caption query's attention over the 24×24 CBAM tokens."""
        grid = self.model.gate_grid
        out = []
        for i, prompts in enumerate(batch.aux["demo_prompts"]):
            used: set[str] = set()
            maps = []
            for j, prompt in enumerate(prompts):
                data = batch.aux["demo_cross"][i, j].reshape(grid).cpu().numpy()
                meta = {"prompt": prompt, "prompt_source": batch.aux["demo_source"][i],
                        "probability": round(float(torch.sigmoid(batch.aux["demo_match"][i, j])), 6)}
                maps.append(AttentionMap("cross", unique(f"cross-{slug(prompt)}", used), "native",
                                         self.model.cross_attn, data, meta=meta))
            out.append(maps)
        return out


@register_family("demo", summary="the model trained in this repository (see `attnviz demo`)", syntax="demo")
def load_demo_backbone(name: str, weights: WeightsSpec, *, input_size: int | None = None,
                       device: torch.device = torch.device("cpu")) -> DemoBackbone:
    """`demo` with --weights DEFAULT (the committed weights), a FILE, or none (random init)."""
    weights.no_tags("demo")
    if weights.kind == "none":
        warn_random("demo")
        model, desc = DemoNet().eval(), "none"
    elif weights.kind == "file":
        model, desc = DemoNet(), str(weights.path)
        load_into(model, weights.path, "demo")
        model.eval()
    else:
        model, desc = load_demo_model(), "attnviz/zoo/weights.pt"
    check_input_size("demo", input_size, model.input_size)
    model.to(device)
    tokens = (model.self_prefix, model.self_grid)
    layers, _ = describe_layers(model, model.input_size, device, tokens)
    return DemoBackbone(name="demo", model=model, weights=desc, pretrained=desc != "none",
                        categories=list(model.categories), mean=tuple(model.mean), std=tuple(model.std),
                        input_size=model.input_size, default_layer="cbam", layers=layers,
                        tokens=tokens, device=device)
