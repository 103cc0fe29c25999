"""Channel (SE: squeeze → excite → scale) and spatial (CBAM: mean, max → conv → σ → gate) stages.

Definitions: docs/attention.md §1 and §2. Native stages are the gate block's own tensors (its input,
its children's outputs, its output), derived ones the spec's formulas via attnviz.kinds.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from attnviz.backbones.base import POOLING
from attnviz.explain.context import Context, children, native_gate, np32
from attnviz.explain.panels import Panel, Strip
from attnviz.kinds.channel import channel_logits, channel_map
from attnviz.kinds.spatial import spatial_logits
from attnviz.maps import zscore
from attnviz.pipeline import Analyser

__all__ = ["channel_modules", "channel_strip", "spatial_modules", "spatial_strip", "feature_tiles",
           "gate_bars", "SHOWN"]

SHOWN = 2   # channels named per side (most raised, most cut) in the tiles and bars


def channel_modules(analyser: Analyser) -> list[str]:
    """The SE block, its children and its sigmoid (when native), and --layer (for derived stages)."""
    g = native_gate(analyser, "channel")
    own = [g.name, *children(analyser, g.name), g.activation] if g is not None else []
    return [*own, analyser.layer]


def spatial_modules(analyser: Analyser) -> list[str]:
    """The spatial gate block, its children and its sigmoid (when native), and --layer."""
    g = native_gate(analyser, "spatial")
    own = [g.name, *children(analyser, g.name), g.activation] if g is not None else []
    return [*own, analyser.layer]


def _rank(s: np.ndarray, k: int = SHOWN) -> tuple[list[int], list[int]]:
    """Indices of the k largest and the k smallest gate values."""
    order = np.argsort(-s, kind="stable")
    return [int(i) for i in order[:k]], [int(i) for i in order[::-1][:k]]


def feature_tiles(step: str, formula: str, provenance: str, source: str, f: torch.Tensor,
                  s: np.ndarray, scales: list[float] | None = None) -> Panel:
    """A few channels of f (1, C, H, W): the most raised and the most cut by gate s, each tile on its
    own ± scale (`scales`: reuse another panel's, so s ⊙ F reads against F channel by channel).

    All-zero channels (dead after a ReLU: their gate is the lowest) draw as blank tiles, so "most cut"
    shows the most cut channels that carry anything, and the panel says how many were skipped."""
    flat = f[0].flatten(1)
    alive = np.asarray((flat.amax(1) > flat.amin(1)).cpu())
    up, _ = _rank(s)
    order = [int(i) for i in np.argsort(s, kind="stable")]                 # most cut first
    live = [c for c in order if alive[c] and c not in up]
    down = (live or [c for c in order if c not in up])[:SHOWN]
    dead = sum(1 for c in order[:order.index(down[0])] if not alive[c]) if down else 0
    chans = up + down
    labels = [f"c{c} (s={s[c]:.2f})" for c in chans]
    tiles = np32(f[0, chans])
    own = [float(np.abs(t).max()) or 1.0 for t in tiles]
    note = f"{dead} all-zero channels with a lower s not shown" if dead else ""
    return Panel(step, formula, provenance, source, tiles, view="tiles", labels=labels, cmap="RdBu_r",
                 vmax=list(scales) if scales is not None else own, note=note)


def gate_bars(step: str, formula: str, provenance: str, source: str, s: np.ndarray) -> Panel:
    """Gate values per channel as bars, the most raised and most cut named by index."""
    up, down = _rank(s, 3)
    return Panel(step, formula, provenance, source, s.astype(np.float32), view="bars", raised=up, cut=down)


def _se_parts(ctx: Context, block: str) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    """The SE block's own squeeze (its pooling child), hidden layer (the last reduced-width child) and
    that child's formula."""
    tap, model = ctx.tap, ctx.bb.model
    c = tap.input(block).shape[1]
    squeeze = hidden = None
    formula = "h = W1·z"
    for name in children(ctx.analyser, block):
        out = tap.outputs.get(name)
        if not isinstance(out, torch.Tensor):
            continue
        if isinstance(model.get_submodule(name), POOLING) and squeeze is None:
            squeeze = out.float().flatten(1)                               # (1, C)
        elif out.flatten(1).shape[1] not in (c, c * out.shape[-1] * out.shape[-2]) and squeeze is not None:
            hidden = out.float().flatten(1)                                # (1, C/r)
            module = model.get_submodule(name)
            formula = "h = W1·z" if isinstance(module, (nn.Conv2d, nn.Linear)) else f"h = {type(module).__name__}(W1·z)"
    return squeeze, hidden, formula


def channel_strip(ctx: Context) -> Strip:
    """SE step by step: features, squeeze, excitation, gate, scaled features, the map."""
    m = ctx.map("channel")
    g = native_gate(ctx.analyser, "channel")
    if m.provenance == "native" and g is not None and m.layer == g.name:
        f = ctx.tap.input(g.name)                                          # (1, C, H, W)
        squeeze, hidden, h_formula = _se_parts(ctx, g.name)
        s = ctx.tap.output(g.activation).flatten(1)                        # (1, C)
        src, prov = g.name, "native"
        z_panel = (Panel("squeeze", "z_c = mean_{h,w} F[c,h,w]", "native", f"{g.name} (pooling)", np32(squeeze[0]), view="bars")
                   if squeeze is not None else
                   Panel("squeeze", "z_c = mean_{h,w} F[c,h,w]", "derived", f"{g.name} input", np32(f.mean((2, 3))[0]), view="bars"))
        excite = (Panel("excitation: hidden layer", f"{h_formula},  W1: C/r×C", "native", g.name, np32(hidden[0]), view="bars")
                  if hidden is not None else None)
        gate = gate_bars("gate", "s = σ(W2·h)", "native", g.activation, np32(s[0]))
        out = ctx.tap.outputs.get(g.name)
        scaled = (out.float(), "native") if isinstance(out, torch.Tensor) and out.shape == f.shape \
            else (f * s[:, :, None, None], "derived")
    else:
        f = ctx.features()                                                 # (1, C, H, W)
        src, prov = ctx.analyser.layer, "derived"
        logit = channel_logits(f)                                          # (1, C)
        s = torch.sigmoid(logit)
        z_panel = Panel("squeeze", "z_c = mean_{h,w} F[c,h,w]", "derived", src, np32(f.mean((2, 3))[0]), view="bars")
        excite = Panel("excitation (no trained layer)", "ẑ_C(z): z standardised over channels", "derived", src,
                       np32(logit[0]), view="bars")
        gate = gate_bars("gate", "s = σ(ẑ_C(z))", "derived", src, np32(s[0]))
        scaled = (f * s[:, :, None, None], "derived")
    sv = np32(s[0])
    final = Panel("the map", "M_c = Σ_c s_c F[c]", prov, src, np32(channel_map(f, s)[0]), view="overlay", cmap="jet")
    tiles = feature_tiles("features F", "F: C×H×W (most raised, most cut)", prov, src, f, sv)   # one scale per tile
    row = [tiles, z_panel, excite, gate,
           feature_tiles("scaled features", "s ⊙ F  (each tile on its F scale)", scaled[1], src, scaled[0], sv,
                         tiles.vmax),
           final]
    return Strip("channel", f"channel attention (SE) — {prov}, {src}", [[p for p in row if p is not None]],
                 finals={"channel": final})


def spatial_strip(ctx: Context) -> Strip:
    """CBAM spatial gate step by step: channel mean, channel max, conv, sigmoid, gated features, the map."""
    m = ctx.map("spatial")
    g = native_gate(ctx.analyser, "spatial")
    if m.provenance == "native" and g is not None and m.layer == g.name:
        panels, final = native_spatial(ctx, g.name, g.activation)
    else:
        panels, final = derived_spatial(ctx.features(), ctx.analyser.layer)
    return Strip("spatial", f"spatial attention (CBAM) — {final.provenance}, {final.source}", [panels + [final]],
                 finals={"spatial": final})


def native_spatial(ctx: Context, block: str, activation: str, formula: str = "M_s") -> tuple[list[Panel], Panel]:
    """A trained spatial gate's own tensors: the pooled pair its conv reads, the conv output, σ, x ⊙ M."""
    tap, model = ctx.tap, ctx.bb.model
    x = tap.input(block)                                                   # (1, C, H, W)
    convs = [n for n in children(ctx.analyser, block)
             if isinstance(model.get_submodule(n), nn.Conv2d) and n in tap.args]
    pooled = tap.input(convs[0]) if convs and tap.input(convs[0]).shape[1] == 2 else None
    if pooled is not None:                                                 # (1, 2, H, W): [mean; max]
        mean, mx, psrc, pprov = pooled[0, 0], pooled[0, 1], f"{convs[0]} input", "native"
    else:
        mean, mx, psrc, pprov = x[0].mean(0), x[0].amax(0), f"{block} input", "derived"
    gate = tap.output(activation)[0, 0]                                    # (H, W)
    out = tap.outputs.get(block)
    gated = out.float() if isinstance(out, torch.Tensor) and out.shape == x.shape else x * gate
    panels = [Panel("channel mean", "A_avg = mean_c F", pprov, psrc, np32(mean)),
              Panel("channel max", "A_max = max_c F", pprov, psrc, np32(mx))]
    if convs:
        panels.append(Panel("conv output", "conv7×7([A_avg; A_max])", "native", convs[0],
                            np32(tap.output(convs[0])[0, 0]), cmap="RdBu_r"))
    panels += [Panel("sigmoid gate", f"{formula} = σ(conv)", "native", activation, np32(gate)),
               Panel("gated features", "mean_c(M_s ⊙ F)", "native", block, np32(gated[0].mean(0)), cmap="RdBu_r")]
    return panels, Panel("the map", f"{formula} over the image", "native", activation, np32(gate), view="overlay", cmap="jet")


def derived_spatial(f: torch.Tensor, src: str, formula: str = "M_s") -> tuple[list[Panel], Panel]:
    """The spec's fixed-kernel gate on f (1, C, H, W), every step."""
    mean, mx = f.mean(dim=1), f.amax(dim=1)                                # (1, H, W)
    pooled = 0.5 * (zscore(mean, dims=(1, 2)) + zscore(mx, dims=(1, 2)))
    logits = spatial_logits(f)                                             # (1, H, W)
    gate = torch.sigmoid(logits)
    return [Panel("channel mean", "A_avg = mean_c F", "derived", src, np32(mean[0])),
            Panel("channel max", "A_max = max_c F", "derived", src, np32(mx[0])),
            Panel("standardised pair", "½(ẑ_HW(A_avg) + ẑ_HW(A_max))", "derived", src, np32(pooled[0]), cmap="RdBu_r"),
            Panel("fixed 7×7 Gaussian", "G ∗ ½(…), σ_G = 1.5, not learned", "derived", src, np32(logits[0]), cmap="RdBu_r"),
            Panel("sigmoid gate", f"{formula} = σ(G ∗ …)", "derived", src, np32(gate[0])),
            Panel("gated features", "mean_c(M_s ⊙ F)", "derived", src, np32((f * gate[:, None])[0].mean(0)), cmap="RdBu_r"),
            ], Panel("the map", f"{formula} over the image", "derived", src, np32(gate[0]), view="overlay", cmap="jet")
