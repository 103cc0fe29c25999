"""Native channel (SE, ECA) and spatial (CBAM, global context) gates, told by their output shape.

A gate is a call of sigmoid or hard-sigmoid (functional, method or module of any class) whose
output multiplies features: σ keeps it in (0, 1). A global-context block's softmax over the H·W
positions of its input (GCNet; timm GlobalContext) weighs positions too: a spatial gate whose
weights sum to 1 (`op` "softmax"). `probes.behaviour` sees every such call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["Gate", "classify_gate", "gate_values"]


@dataclass(frozen=True)
class Gate:
    """One trained gate of the model: one sigmoid call, attributed to the module that runs it."""

    name: str                                # the gate block (SE / spatial-gate module) name
    activation: str                          # the sigmoid module, or "block:sigmoid#k" for a call
    kind: Literal["channel", "spatial"]
    channels: int                            # C of the gated features (1 for a spatial gate)
    grid: tuple[int, int]                    # (H, W) of the gated features
    type: str                                # class name of the gate block
    position: int                            # completion order in the forward pass
    source: str = ""                         # innermost module running the call ("" = activation)
    call: int = 0                            # which sigmoid call of `source` (per forward of it)
    slot: int = 0                            # k-th gate of the same block (a CBAM as one module)
    op: str = "sigmoid"                      # "softmax": a global-context block's softmax over H·W

    @property
    def key(self) -> str:
        """The gate's unique name in captured dicts: the block, `#k` for its k-th extra gate."""
        return self.name if self.slot == 0 else f"{self.name}#{self.slot}"

    @property
    def site(self) -> tuple[str, int, str]:
        """Where the call happens: (innermost module, call index, sigmoid or softmax)."""
        return (self.source or self.activation, self.call, self.op)


def classify_gate(shape: torch.Size | tuple[int, ...]) -> tuple[Literal["channel", "spatial"], int] | None:
    """(kind, C): B×C×1×1, B×C, B×1×C, B×C×1 are channel gates; B×1×H×W (H·W > 1) spatial; else None."""
    dims = tuple(shape[1:])
    if len(dims) == 3 and dims[0] == 1 and dims[1] * dims[2] > 1:
        return "spatial", 1
    squeezed = [d for d in dims if d != 1]
    if len(dims) in (1, 2, 3) and len(squeezed) == 1 and squeezed[0] > 1 \
            and (len(dims) < 3 or dims[1:] == (1, 1)):
        return "channel", squeezed[0]
    return None


def gate_values(output: torch.Tensor, kind: str) -> torch.Tensor:
    """A gate's output as (B, C) for a channel gate or (B, H, W) for a spatial one (a float copy)."""
    o = output.detach().float().clone()
    return o.flatten(1) if kind == "channel" else o[:, 0]


