"""Which modules are attention: one dummy forward finds gates and attention by what they compute.

Every captured call is classified once, here, by what its tensors mean (docs/attention.md §7);
`inspect`, `run`, `explain` and the manifest all read `Inventory.plan`, so they agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from attnviz.probes.behaviour import BehaviourCapture
from attnviz.probes.gates import Gate

__all__ = ["AttentionModule", "Inventory", "Plan", "SelfSource", "locate", "classify"]

Kind = Literal["self-attention", "window-attention", "class-attention", "cross-attention",
               "reduction-attention", "channel-attention", "linear-attention", "context-attention",
               "split-attention"]
SELF_KINDS = ("self-attention", "window-attention", "class-attention")   # what the `self` kind can draw
WHAT = {   # how `inspect` and the notes call each kind
    "reduction-attention": "attention between token sets of different sizes (spatial reduction / downsampling)",
    "channel-attention": "channel-covariance attention (between feature channels, not tokens)",
    "linear-attention": "linear attention (one context score per token, no token-to-token weights)",
    "context-attention": "global-context attention (one softmax over the H·W positions)",
    "split-attention": "split attention (softmax over the radix / kernel branches per channel)",
    "cross-attention": "text-to-image cross-attention",
}


@dataclass(frozen=True)
class AttentionModule:
    """One attention computation the model ran, classified by what its tensors mean."""

    name: str
    type: str
    kind: Kind
    heads: int
    queries: int                    # tokens asking (per window for window attention)
    keys: int                       # tokens answered
    position: int                   # completion order in the forward pass
    grid: tuple[int, int] | None = None   # (H, W) the keys' patch tokens lie on, when known
    prefix: int = 0                 # keys before the grid (class, distillation, register tokens)
    how: str = ""                   # where the grid comes from

    @property
    def shape(self) -> str:
        """`Nq×Nk tokens` (per window for window attention; channels or branches where those attend)."""
        if self.kind == "split-attention":
            return f"{self.keys} branches × {self.queries} channels"
        unit = "channels" if self.kind == "channel-attention" else "tokens"
        return f"{self.queries}×{self.keys} {unit}"


@dataclass(frozen=True)
class SelfSource:
    """Where the `self` kind draws from: the modules (the last one drawn) and their token layout."""

    modules: list[str]
    mode: Literal["windows", "tokens", "class"]   # windows: per window; tokens: square; class: 1×N rows
    prefix: int = 0
    grid: tuple[int, int] | None = None


@dataclass
class Plan:
    """What a run draws natively (kind -> module), and every attention found but not drawn, with why."""

    native: dict[str, str]
    self_source: SelfSource | None
    notes: list[str]


def _grid(keys: int, source: tuple[int, ...], tokens: tuple[int, tuple[int, int]] | None
          ) -> tuple[tuple[int, int] | None, int, str]:
    """(grid, prefix, how) of square or class attention over `keys` tokens, or (None, 0, "")."""
    if tokens is not None and keys == tokens[0] + tokens[1][0] * tokens[1][1]:
        return tokens[1], tokens[0], "declared by the model"
    if len(source) == 4 and source[2] * source[3] == keys:
        return (source[2], source[3]), 0, "its input feature map"
    if len(source) == 4 and source[1] * source[2] == keys:
        return (source[1], source[2]), 0, "its input feature map (channels last)"
    r = math.isqrt(keys)
    if len(source) == 3 and source[1] == keys and r * r == keys:
        return (r, r), 0, "inferred: a square number of tokens, row-major, no prefix"
    return None, 0, ""


def classify(heads: int, queries: int, keys: int, source: tuple[int, ...], cross: bool = False,
             tokens: tuple[int, tuple[int, int]] | None = None
             ) -> tuple[Kind, tuple[int, int] | None, int, str]:
    """(kind, grid, prefix, how) of weights (B, heads, Nq, Nk) computed from an input of shape `source`.

    Only an nn.MultiheadAttention whose queries are not its keys is cross-attention; any other
    softmax with Nq ≠ Nk is class attention (one query), a global-context or linear attention
    (from the shape of the input it reads), or attention between token sets of different sizes.
    """
    if cross:
        return "cross-attention", None, 0, ""
    if queries == keys:
        if len(source) == 3 and source[1] != keys and keys * heads == source[2]:
            return "channel-attention", None, 0, ""          # XCiT: (B, h, C/h, C/h)
        return ("self-attention", *_grid(keys, source, tokens))
    if len(source) == 4 and heads == 1 and queries == 1 and source[2] * source[3] == keys:
        return "context-attention", (source[2], source[3]), 0, "its input feature map"
    if len(source) == 4 and heads == 1 and tuple(source[2:]) == (queries, keys):
        return "linear-attention", None, 0, ""               # MobileViTv2: (B, 1, P, N) context scores
    if queries == 1:
        grid, prefix, how = _grid(keys, source, tokens)
        r = math.isqrt(keys - 1)
        if grid is None and r * r == keys - 1:                # the class token among its keys (CaiT, XCiT)
            grid, prefix, how = (r, r), 1, "inferred: the class token and a square number of patches"
        return "class-attention", grid, prefix, how
    return "reduction-attention", None, 0, ""


def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]} ({len(names)} calls)"


@dataclass
class Inventory:
    """Every gate and attention of a model, in execution order, and where each layer completes."""

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
        before = self.gates[i - 1] if i > 0 and spatial.op == "sigmoid" else None
        return before if before is not None and before.kind == "channel" and before.grid == spatial.grid else None

    def self_source(self) -> tuple[SelfSource | None, str | None]:
        """Where `self` draws from, or why it stays derived (None when the model has no such attention).

        The last self, window or class attention of the forward is drawn when its geometry is
        known: windows place themselves; token attention needs its grid (`AttentionModule.grid`).
        """
        selfs = self.self_attention()
        if not selfs:
            return None, None
        last = selfs[-1]
        if last.kind == "window-attention":
            return SelfSource([a.name for a in selfs if a.kind == "window-attention"], "windows"), None
        if last.grid is None:
            return None, (f"{last.name}: {last.kind} over {last.keys} tokens, but the token grid is unknown "
                          f"(give the model `tokens = (prefix, (H, W))`)")
        same = [a.name for a in selfs if (a.kind, a.keys, a.grid, a.prefix) == (last.kind, last.keys, last.grid,
                                                                                 last.prefix)]
        return SelfSource(same, "class" if last.kind == "class-attention" else "tokens", last.prefix, last.grid), None

    def usable_self(self, tokens: tuple[int, tuple[int, int]] | None = None) -> tuple[list[str], str | None]:
        """The modules the `self` kind draws from (the last one drawn), and why not when empty."""
        source, why = self.self_source()
        return (source.modules if source else []), why

    def plan(self, layer: str | None = None, native_cross: bool = False,
             kinds: list[str] | None = None) -> Plan:
        """What each kind draws natively at `layer` (kinds not listed are derived), and the notes.

        `native_cross`: the backbone reads its own text→image attention; `kinds`: only these.
        """
        native: dict[str, str] = {}
        near = {k: (self.nearest_gate(k, layer) if layer else (self.gates_of(k) or [None])[-1])
                for k in ("channel", "spatial")}
        for kind, gate in near.items():
            if gate is not None:
                native[kind] = gate.key
        if near["spatial"] is not None and self.serial_channel_gate(near["spatial"]) is not None:
            native["mixed-serial"] = near["spatial"].key
        source, why = self.self_source()
        if source is not None:
            native["self"] = source.modules[-1]
        if native_cross:
            native["cross"] = "the model's own text→image attention"
        if kinds is not None:
            native = {k: v for k, v in native.items() if k in kinds}
        notes = [f"cannot read {n or 'the model'}: {self.reasons.get(n, 'unknown reason')}" for n in self.unsupported]
        notes += [f"self stays derived: {why}"] if why else []
        drawn = set(source.modules) if source else set()
        groups: dict[tuple, list[str]] = {}
        for a in self.attention:
            if a.name not in drawn and not (a.kind in SELF_KINDS and source is None):
                groups.setdefault((a.type, a.kind, a.shape, a.heads), []).append(a.name)
        for (typ, kind, shape, heads), names in groups.items():
            what = WHAT.get(kind, kind)
            why_not = f"`self` draws {source.modules[-1]}" if kind in SELF_KINDS and source else \
                "no attnviz kind is this attention"
            if kind == "cross-attention":
                why_not = "it is not the backbone's text→image attention that `cross` reads"
            notes.append(f"not drawn: {_span(names)} ({typ}, {shape}, {heads} heads): {what}; {why_not}")
        return Plan(native, source, notes)

    def native_kinds(self, tokens_known: bool = True, native_cross: bool = False,
                     layer: str | None = None) -> dict[str, str]:
        """attnviz kind -> the module its native map is drawn from (kinds not listed are derived)."""
        return self.plan(layer, native_cross).native

    def notes(self, native_cross: bool = False) -> list[str]:
        """One line per attention found but not drawn natively, with the reason."""
        return self.plan(None, native_cross).notes

    def self_attention(self) -> list[AttentionModule]:
        """The attention the `self` kind can draw (self, window and class attention), first to last."""
        return [a for a in self.attention if a.kind in SELF_KINDS]


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
        typ = type(module).__name__ if module is not None else "sdpa"
        if name in cap.windows:
            wa = cap.windows[name]
            t = wa.window[0] * wa.window[1]
            inv.attention.append(AttentionModule(name, typ, "window-attention", wa.weights.shape[2], t, t, i,
                                                 wa.grid, 0, f"{wa.layout} of {wa.window[0]}×{wa.window[1]}"))
            continue
        w = cap.maps[name]                                   # (B, heads, Nq, Nk)
        kind, grid, prefix, how = classify(w.shape[1], w.shape[-2], w.shape[-1], cap.sources.get(name, ()),
                                           name in cap.cross, tokens)
        inv.attention.append(AttentionModule(name, typ, kind, w.shape[1], w.shape[-2], w.shape[-1], i,
                                             grid, prefix, how))
    for j, (name, shape) in enumerate(cap.splits.items()):
        inv.attention.append(AttentionModule(name, type(modules[name]).__name__, "split-attention", 1,
                                             math.prod(shape[2:]), shape[1], len(cap.order) + j))
    inv.unsupported = list(cap.unsupported)
    inv.reasons = dict(cap.reasons)
    return inv
