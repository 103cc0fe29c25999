"""The interface of an attention kind, and the batch of captured features it computes from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from attnviz.backbones import Backbone
from attnviz.catalog import unknown_kind
from attnviz.geometry import Geometry
from attnviz.maps import to_grid
from attnviz.probes.attention import WindowAttention
from attnviz.probes.gates import Gate
from attnviz.probes.locate import Inventory
from attnviz.results import AttentionMap, Options

__all__ = ["Options", "Batch", "Kind", "register_kind", "KINDS", "get_kinds"]


@dataclass
class Batch:
    """One forward pass worth of captures, shared by every kind."""

    backbone: Backbone
    layer: str
    outputs: dict[str, torch.Tensor]   # captured layer outputs, as the modules returned them
    logits: torch.Tensor               # (B, K)
    sizes: list[tuple[int, int]]       # (width, height) of each original image
    options: Options = field(default_factory=Options)
    plans: dict[str, Any] = field(default_factory=dict)   # each kind's `prepare` result, by name
    inventory: Inventory = field(default_factory=Inventory)   # the model's attention modules
    gates: dict[str, torch.Tensor] = field(default_factory=dict)        # (B, C) or (B, H, W) per gate
    gate_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # features a gate scales
    attention: dict[str, torch.Tensor] = field(default_factory=dict)    # (B, heads, Nq, Nk) per module
    windows: dict[str, WindowAttention] = field(default_factory=dict)   # Swin window attention
    aux: dict[str, Any] = field(default_factory=dict)      # what the backbone's forward returned beside logits
    cache: dict[str, Any] = field(default_factory=dict)   # results one kind shares with another
    aligner: Any = None   # .geometry(layer, grid) -> measured cell centres (pipeline.align.Aligner)
    targets: list[tuple[Any, ...]] | None = None   # per image: the classes asked for (`targets=` of a call)
    grads: Any = None     # probes.grad.GradCapture of this forward (gradient kinds), graph kept

    def geometry(self, layer: str | None = None, grid: tuple[int, ...] | None = None) -> Geometry | None:
        """Where the cells of `layer` (default: the chosen one) lie, when measured and of `grid`."""
        if self.aligner is None:
            return None
        g = self.aligner.geometry(layer or self.layer, grid)
        return g if g is not None and (grid is None or g.fits(grid)) else None

    def features(self, layer: str | None = None) -> torch.Tensor:
        """A captured layer as a float32 feature map (B, C, H, W)."""
        layer = layer or self.layer
        return to_grid(self.outputs[layer], self.backbone.layer(layer).layout).float()


    def native_gate(self, kind: str) -> Gate | None:
        """The captured gate of `kind` nearest the chosen layer, if the model has one."""
        gate = self.inventory.nearest_gate(kind, self.layer)
        return gate if gate is not None and gate.key in self.gates else None


class Kind:
    """An attention kind: which layers it needs captured, and the maps it computes from them."""

    name: ClassVar[str]
    order: ClassVar[int]   # position in the default kind list and in the grid
    # what the forward must capture for it: "features" (tapped layers), "gates", "attention", "logits",
    # "gradients" (the forward runs with autograd, attention kept in the graph: probes.grad)
    needs: ClassVar[frozenset[str]] = frozenset({"features", "logits"})
    default: ClassVar[bool] = True   # in the default kind set (False: only when named in --kinds)

    def summary(self) -> str:
        """One line for listings: the first line of the kind's module docstring."""
        import sys
        doc = sys.modules[type(self).__module__].__doc__ or type(self).__doc__ or self.name
        return doc.strip().splitlines()[0]

    def unavailable(self, backbone: Backbone, options: Options) -> str | None:
        """Why this kind cannot run on `backbone` with `options`, or None when it can."""
        return None

    def prepare(self, backbone: Backbone, options: Options) -> Any:
        """Check options before any image is read (raise AttnvizError); the result is its plan."""
        return None

    def layers(self, backbone: Backbone, layer: str) -> list[str]:
        """The layers whose outputs `compute` reads."""
        return [layer]

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        """The maps of every image in the batch (outer list: images)."""
        raise NotImplementedError


KINDS: dict[str, Kind] = {}


def register_kind(cls: type[Kind]) -> type[Kind]:
    """Class decorator: register a kind by its `name`, refusing silent overwrites."""
    if cls.name in KINDS:
        raise ValueError(f"attention kind {cls.name!r} is already registered")
    KINDS[cls.name] = cls()
    return cls


def get_kinds(names: list[str] | None) -> list[Kind]:
    """Kinds by name in their canonical order (the default set when `names` is None)."""
    if names is None:
        return sorted((k for k in KINDS.values() if k.default), key=lambda k: k.order)
    out = []
    for name in names:
        if name not in KINDS:
            raise unknown_kind(name, KINDS)          # the message the CLI gives before loading torch
        out.append(KINDS[name])
    return sorted(dict.fromkeys(out), key=lambda k: k.order)
