"""One entry point for the probes: layer outputs, gates and attention of one forward pass."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from attnviz.probes.base import LayerTap, Probe
from attnviz.probes.behaviour import BehaviourCapture
from attnviz.probes.gates import Gate
from attnviz.probes.windows import WindowAttention

__all__ = ["Capture", "capture"]


class Capture(Probe):
    """Context manager holding every probe a forward pass needs; its dicts fill during the pass."""

    def __init__(self, model: nn.Module, layers: Sequence[str] = (), gates: Sequence[Gate] = (),
                 attention: bool | Sequence[str] = (), heads: Sequence[str] | None = None) -> None:
        super().__init__(model)
        self.tap = LayerTap(model, layers)
        # the TorchFunctionMode costs a little per torch call: only when something asks for it
        self.behaviour = BehaviourCapture(model, gates=gates, attention=attention, heads=heads) \
            if gates or attention else None

    def attach(self) -> None:
        self.enter(self.tap)
        if self.behaviour is not None:
            self.enter(self.behaviour)

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        """Layer outputs as the modules returned them, by layer name."""
        return self.tap.outputs

    @property
    def gates(self) -> dict[str, torch.Tensor]:
        """Gate values (B, C) or (B, H, W), by `Gate.key`."""
        return self.behaviour.gates if self.behaviour else {}

    @property
    def gate_inputs(self) -> dict[str, torch.Tensor]:
        """The features (B, C, H, W) each channel gate scales, by `Gate.key`."""
        return self.behaviour.gate_inputs if self.behaviour else {}

    @property
    def attention(self) -> dict[str, torch.Tensor]:
        """Attention weights (B, heads, Nq, Nk), by module name (`#k` for its k-th extra call)."""
        return self.behaviour.maps if self.behaviour else {}

    @property
    def windows(self) -> dict[str, WindowAttention]:
        """Window attention, by module name."""
        return self.behaviour.windows if self.behaviour else {}


def capture(model: nn.Module, *, layers: Sequence[str] = (), gates: Sequence[Gate] = (),
            attention: bool | Sequence[str] = (), heads: Sequence[str] | None = None) -> Capture:
    """The probes for one forward: `with capture(model, layers=..., gates=...) as cap: model(x)`.

    `attention`: True for all, module names for those, empty for none; `heads`: modules whose
    per-head weights are kept (the others are averaged over heads).
    """
    return Capture(model, layers, gates, attention, heads)
