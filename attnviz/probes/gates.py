"""Native channel (SE) and spatial (CBAM) gates: find them by shape, read them during the forward."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import nn

from attnviz.probes.base import Probe

__all__ = ["Gate", "GATE_ACTIVATIONS", "classify_gate", "GateTap"]

# A gate is a sigmoid-like module whose output multiplies features: σ keeps it in (0, 1).
GATE_ACTIVATIONS = (nn.Sigmoid, nn.Hardsigmoid)


@dataclass(frozen=True)
class Gate:
    """One trained gate module of the model."""

    name: str                                # the gate block (SE / spatial-gate module) name
    activation: str                          # its sigmoid submodule, the module that is hooked
    kind: Literal["channel", "spatial"]
    channels: int                            # C of the gated features (1 for a spatial gate)
    grid: tuple[int, int]                    # (H, W) of the gated features
    type: str                                # class name of the gate block
    position: int                            # completion order in the forward pass


def classify_gate(shape: torch.Size) -> Literal["channel", "spatial"] | None:
    """Output (B, C, 1, 1) is a channel gate, (B, 1, H, W) with H·W > 1 a spatial gate, else None."""
    if len(shape) != 4:
        return None
    _, c, h, w = shape
    if h == w == 1 and c > 1:
        return "channel"
    if c == 1 and h * w > 1:
        return "spatial"
    return None


class GateTap(Probe):
    """Record each gate's output (B, C) or (B, H, W), and the features it gates (B, C, H, W)."""

    def __init__(self, model: nn.Module, gates: list[Gate], inputs: bool = True) -> None:
        super().__init__(model)
        self.gates = gates
        self.want_inputs = inputs
        self.outputs: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}

    def attach(self) -> None:
        for g in self.gates:
            self.hook(self.model.get_submodule(g.activation), self._out(g))
            if self.want_inputs and g.name != g.activation:
                self.hook(self.model.get_submodule(g.name), self._in(g), pre=True)

    def _out(self, g: Gate) -> Callable:
        def fn(module: nn.Module, args: tuple, output: Any) -> None:
            o = output.detach().float()
            self.outputs[g.name] = o.flatten(1) if g.kind == "channel" else o[:, 0]
        return fn

    def _in(self, g: Gate) -> Callable:
        def fn(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
                self.inputs[g.name] = args[0].detach().float().clone()
        return fn
