"""Which modules are attention: one dummy forward finds gates and attention by what they compute."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from attnviz.probes.behaviour import BehaviourCapture
from attnviz.probes.gates import Gate

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
    reasons: dict[str, str] = field(default_factory=dict)       # unsupported name -> why
    tokens: tuple[int, tuple[int, int]] | None = None           # the declared token grid, if any

    def gates_of(self, kind: str) -> list[Gate]:
        """The channel or spatial gates, first to last."""
        return [g for g in self.gates if g.kind == kind]

    def nearest_gate(self, kind: str, layer: str) -> Gate | None:
        """The last gate of `kind` that completes no later than `layer` (else the first one)."""
        gates = self.gates_of(kind)
        if not gates:
            return None
        named = [g for g in gates if layer in (g.key, g.activation)] or [g for g in gates if g.name == layer]
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
                out[kind] = self.gates_of(kind)[-1].key
        serial = [g for g in self.gates_of("spatial") if self.serial_channel_gate(g)]
        if serial:
            out["mixed-serial"] = serial[-1].key
        if tokens_known and self.tokens is None:      # a grid declared but not handed to locate
            usable = [a.name for a in self.self_attention()]
        else:
            usable, _ = self.usable_self(self.tokens if tokens_known else None)
        if usable:
            out["self"] = usable[-1]
        cross = [a for a in self.attention if a.kind == "cross-attention"]
        if cross:
            out["cross"] = cross[-1].name
        return out

    def usable_self(self, tokens: tuple[int, tuple[int, int]] | None) -> tuple[list[str], str | None]:
        """The self-attention modules the `self` kind can draw, and why the others cannot be.

        Window attention places itself; token attention needs the grid: its key count must be
        prefix + H·W of `tokens`. The list is empty when the last module is unusable.
        """
        selfs = self.self_attention()
        if not selfs:
            return [], None
        if selfs[-1].kind == "window-attention":
            return [a.name for a in selfs if a.kind == "window-attention"], None
        if tokens is None:
            return [], (f"{selfs[-1].name}: self-attention over {selfs[-1].keys} tokens, but the "
                        f"token grid is unknown (give the model `tokens = (prefix, (H, W))`)")
        prefix, (h, w) = tokens
        fit = [a.name for a in selfs if a.kind == "self-attention" and a.keys == prefix + h * w]
        if not fit or fit[-1] != selfs[-1].name:
            return [], (f"{selfs[-1].name}: {selfs[-1].keys} tokens do not match the token grid "
                        f"{prefix} + {h}×{w}")
        return fit, None

    def notes(self) -> list[str]:
        """One line per attention found but not drawn natively, with the reason."""
        lines = [f"cannot read {n or 'the model'}: {self.reasons.get(n, 'unknown reason')}"
                 for n in self.unsupported]
        _, why = self.usable_self(self.tokens)
        return lines + ([f"self stays derived: {why}"] if why else [])

    def self_attention(self) -> list[AttentionModule]:
        """Self-attention (and window-attention) modules, first layer to last."""
        return [a for a in self.attention if a.kind != "cross-attention"]


@torch.no_grad()
def locate(model: nn.Module, example: torch.Tensor,
           tokens: tuple[int, tuple[int, int]] | None = None) -> Inventory:
    """Run `model(example)` once and list its gates and attention, by what it computes.

    `tokens` (prefix, (H, W)): the declared token grid, checked against the attention's key count.
    """
    inv = Inventory(tokens=tokens)
    modules = dict(model.named_modules())
    with BehaviourCapture(model, gates=None, attention=True) as cap:
        model(example)
    inv.positions = dict(cap.positions)
    slots: dict[str, int] = {}
    for g in sorted(cap.found.values(), key=lambda g: g.position):
        slot = slots[g.name] = slots.get(g.name, -1) + 1       # two gates in one block: told apart
        inv.gates.append(replace(g, slot=slot))
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
    inv.reasons = dict(cap.reasons)
    return inv
