"""Mixed attention: serial (channel gate, then the spatial gate on s ⊙ F) beside parallel (BAM), and their difference.

Definition: docs/attention.md §3.
"""
from __future__ import annotations

import numpy as np
import torch

from attnviz.explain.context import Context, children, native_gate, np32
from attnviz.explain.gates import derived_spatial, feature_tiles, gate_bars, native_spatial
from attnviz.explain.panels import Panel, Strip
from attnviz.kinds.channel import channel_logits
from attnviz.kinds.mixed_parallel import parallel_map
from attnviz.kinds.spatial import spatial_logits
from attnviz.maps import normalise, upsample
from attnviz.pipeline import Analyser

__all__ = ["mixed_modules", "mixed_strip", "difference"]

_POOLING_STEPS = ("channel mean", "channel max", "conv output", "fixed 7×7 Gaussian")


def mixed_modules(analyser: Analyser) -> list[str]:
    """A serial CBAM's two gate blocks, their children and sigmoids (when native), and --layer."""
    g = native_gate(analyser, "spatial")
    before = analyser.inventory.serial_channel_gate(g) if g is not None else None
    own = [n for gate in (before, g) if gate is not None and before is not None
           for n in (gate.name, *children(analyser, gate.name), gate.activation)]
    return [*own, analyser.layer]


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """normalise(a) − normalise(b) on the finer of the two grids."""
    h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
    fit = lambda m: upsample(normalise(m), h, w) if m.shape != (h, w) else normalise(m)   # noqa: E731
    return (fit(a) - fit(b)).astype(np.float32)


def _serial(ctx: Context) -> list[Panel]:
    m = ctx.map("mixed-serial")
    g = native_gate(ctx.analyser, "spatial")
    if m.provenance == "native" and g is not None and m.layer == g.name:
        before = ctx.analyser.inventory.serial_channel_gate(g)
        s = np32(ctx.tap.output(before.activation).flatten(1)[0])          # (C,)
        fs = ctx.tap.input(g.name)                                         # (1, C, H, W) = s ⊙ F
        pooled, final = native_spatial(ctx, g.name, g.activation, "M_serial")
        head = [gate_bars("channel gate", "s = σ(W2·ReLU(W1·z))", "native", before.activation, s),
                feature_tiles("scaled features", "F' = s ⊙ F", "native", f"{g.name} input", fs, s)]
    else:
        f, src = ctx.features(), ctx.analyser.layer
        s = torch.sigmoid(channel_logits(f))                               # (1, C)
        fs = f * s[:, :, None, None]
        pooled, final = derived_spatial(fs, src, "M_serial")
        head = [gate_bars("channel gate", "s = σ(ẑ_C(GAP F))", "derived", src, np32(s[0])),
                feature_tiles("scaled features", "F' = s ⊙ F", "derived", src, fs, np32(s[0]))]
    final.formula = "M_serial = spatial(s ⊙ F)"
    return head + [p for p in pooled if p.step in _POOLING_STEPS] + [final]


def _parallel(ctx: Context) -> list[Panel]:
    f, src = ctx.features(), ctx.analyser.layer                            # (1, C, H, W)
    ls, lm = channel_logits(f), spatial_logits(f)                          # (1, C), (1, H, W)
    a = torch.sigmoid(ls[:, :, None, None] + lm[:, None])                  # (1, C, H, W)
    return [gate_bars("channel logit", "logit s = ẑ_C(GAP F)", "derived", src, np32(ls[0])),
            Panel("spatial logit", "logit M_s = G ∗ ½(ẑ(A_avg) + ẑ(A_max))", "derived", src, np32(lm[0]), cmap="RdBu_r"),
            Panel("combined gate", "A = σ(logit s + logit M_s), mean_c", "derived", src, np32(a[0].mean(0))),
            Panel("the map", "M_parallel = mean_c(A ⊙ F)", "derived", src,
                  np32(parallel_map(f, ls, lm)[0]), view="overlay", cmap="jet")]


def mixed_strip(ctx: Context) -> Strip:
    """Serial and parallel rows, and the difference of their maps beside them."""
    serial, parallel = _serial(ctx), _parallel(ctx)
    diff = Panel("serial − parallel", "norm(M_serial) − norm(M_parallel)", "derived", "both maps",
                 difference(serial[-1].data, parallel[-1].data), cmap="RdBu_r")
    return Strip("mixed", f"mixed attention — serial {serial[-1].provenance}, parallel derived",
                 [serial, parallel], ["serial (CBAM order)", "parallel (BAM style)"],
                 finals={"mixed-serial": serial[-1], "mixed-parallel": parallel[-1]}, side=diff)
