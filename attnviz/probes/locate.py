"""Which modules are attention: one dummy forward finds gates and attention by what they compute."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from attnviz.probes.attention import AttentionCapture
from attnviz.probes.gates import GATE_ACTIVATIONS, Gate, classify_gate

__all__ = ["AttentionModule", "Inventory", "locate"]


@dataclass(frozen=True)
class AttentionModule:
    """One attention computation the model ran: an MHA module, a fused SDPA call or Swin windows."""

    name: str
    type: str
    kind: Literal["self-attention", "cross-attention", "window-attention"]
    heads: int
    queries: int                    # tokens asking (per window for window attention)
    keys: int                       # tokens answered
    position: int                   # completion order in the forward pass


@dataclass
class Inventory:
    """Every attention module of a model, in execution order, and where each layer completes."""

    gates: list[Gate] = field(default_factory=list)
    attention: list[AttentionModule] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)     # module name -> completion order

    def gates_of(self, kind: str) -> list[Gate]:
        """The channel or spatial gates, first to last."""
        return [g for g in self.gates if g.kind == kind]

    def nearest_gate(self, kind: str, layer: str) -> Gate | None:
        """The last gate of `kind` that completes no later than `layer` (else the first one)."""
        gates = self.gates_of(kind)
        if not gates:
            return None
        named = [g for g in gates if layer in (g.name, g.activation)]
        if named:
            return named[0]
        pos = self.positions.get(layer, max(self.positions.values(), default=0))
        before = [g for g in gates if g.position <= pos]
        return before[-1] if before else gates[0]

    def serial_channel_gate(self, spatial: Gate) -> Gate | None:
        """The channel gate that directly precedes `spatial` on the same grid (a serial CBAM)."""
        i = self.gates.index(spatial)
        before = self.gates[i - 1] if i > 0 else None
        return before if before is not None and before.kind == "channel" and before.grid == spatial.grid else None

    def native_kinds(self, tokens_known: bool) -> dict[str, str]:
        """attnviz kind -> the module that makes it native (kinds not listed are derived)."""
        out: dict[str, str] = {}
        for kind in ("channel", "spatial"):
            if self.gates_of(kind):
                out[kind] = self.gates_of(kind)[-1].name
        serial = [g for g in self.gates_of("spatial") if self.serial_channel_gate(g)]
        if serial:
            out["mixed-serial"] = serial[-1].name
        selfs = self.self_attention()
        if selfs and (tokens_known or selfs[-1].kind == "window-attention"):
            out["self"] = selfs[-1].name
        cross = [a for a in self.attention if a.kind == "cross-attention"]
        if cross:
            out["cross"] = cross[-1].name
        return out

    def self_attention(self) -> list[AttentionModule]:
        """Self-attention (and window-attention) modules, first layer to last."""
        return [a for a in self.attention if a.kind != "cross-attention"]


@torch.no_grad()
def locate(model: nn.Module, example: torch.Tensor) -> Inventory:
    """Run `model(example)` once and list its gates and attention modules."""
    inv = Inventory()
    modules = dict(model.named_modules())
    parents = {f"{p}.{c}" if p else c: p for p, m in modules.items() for c, _ in m.named_children()}
    shapes: dict[str, torch.Size] = {}
    inputs: dict[str, torch.Size] = {}
    handles = []
    clock = itertools.count()

    def done(name: str):
        def fn(module: nn.Module, args, output) -> None:
            inv.positions[name] = next(clock)       # a module called twice: its last call
            if isinstance(module, GATE_ACTIVATIONS) and isinstance(output, torch.Tensor):
                shapes[name] = output.shape
        return fn

    def seen(name: str):
        def fn(module: nn.Module, args) -> None:
            if args and isinstance(args[0], torch.Tensor):
                inputs[name] = args[0].shape
        return fn

    try:
        for name, module in modules.items():
            if name:
                handles.append(module.register_forward_hook(done(name)))
                handles.append(module.register_forward_pre_hook(seen(name)))
        with AttentionCapture(model) as cap:
            model(example)
    finally:
        for h in handles:
            h.remove()
    for act, shape in shapes.items():
        kind = classify_gate(shape)
        if kind is None:
            continue
        block = parents.get(act, "") or act
        gated = inputs.get(block, shape)                  # the features the gate block receives
        grid = tuple(gated[2:]) if len(gated) == 4 else tuple(shape[2:])
        inv.gates.append(Gate(block, act, kind, shape[1] if kind == "channel" else 1,
                              grid, type(modules[block]).__name__, inv.positions[act]))
    inv.gates.sort(key=lambda g: g.position)
    for i, name in enumerate(cap.order):
        base = name.split("#")[0]
        module = modules.get(base)
        if name in cap.windows:
            wa = cap.windows[name]
            t = wa.window[0] * wa.window[1]
            inv.attention.append(AttentionModule(name, type(module).__name__, "window-attention",
                                                 wa.weights.shape[2], t, t, i))
            continue
        w = cap.maps[name]                                   # (B, heads, Nq, Nk)
        kind = "self-attention" if w.shape[-2] == w.shape[-1] else "cross-attention"
        inv.attention.append(AttentionModule(name, type(module).__name__ if module else "sdpa",
                                             kind, w.shape[1], w.shape[-2], w.shape[-1], i))
    inv.unsupported = list(cap.unsupported)
    return inv
