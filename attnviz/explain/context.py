"""What every stage builder reads: the Analyser, the image, the tapped tensors and the maps drawn."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from attnviz.backbones import Backbone
from attnviz.explain.capture import StageTap
from attnviz.maps import to_grid
from attnviz.pipeline import Analyser
from attnviz.probes.gates import Gate
from attnviz.results import AttentionMap, Prediction

__all__ = ["Context", "np32", "children", "native_gate"]


def np32(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float32 NumPy array on the CPU."""
    return t.detach().float().cpu().numpy()


def children(analyser: Analyser, block: str) -> list[str]:
    """Dotted names of the direct children of module `block`."""
    module = analyser.backbone.model.get_submodule(block)
    return [f"{block}.{n}" if block else n for n, _ in module.named_children()]


def native_gate(analyser: Analyser, kind: str) -> Gate | None:
    """The gate of `kind` the Analyser reads natively (nearest --layer), if the model has one."""
    return analyser.inventory.nearest_gate(kind, analyser.layer)


@dataclass
class Context:
    """One forward's worth: the Analyser's maps and predictions, and the StageTap's tensors."""

    analyser: Analyser
    image: Image.Image
    tap: StageTap
    maps: dict[str, AttentionMap]
    predictions: list[Prediction]

    @property
    def bb(self) -> Backbone:
        """The backbone."""
        return self.analyser.backbone

    def features(self, layer: str | None = None) -> torch.Tensor:
        """A tapped layer as a float32 feature map (1, C, H, W)."""
        layer = layer or self.analyser.layer
        return to_grid(self.tap.output(layer), self.bb.layer(layer).layout).float()

    def map(self, name: str) -> AttentionMap:
        """The Analyser's map `name` for this image."""
        return self.maps[name]
