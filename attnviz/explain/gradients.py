"""The strips of the gradient-weighted kinds: GAE's A, ∂y/∂A, their product and R per block;
LeGrad's E_l per block and their sum. Read from the stages the kinds recorded in the same forward."""
from __future__ import annotations

import numpy as np

from attnviz.errors import AttnvizError
from attnviz.explain.attend import MAX_ROWS
from attnviz.explain.context import Context
from attnviz.explain.panels import Panel, Strip
from attnviz.pipeline import Analyser

__all__ = ["no_modules", "gae_strip", "legrad_strip"]


def no_modules(analyser: Analyser) -> list[str]:
    """The gradient kinds record their own stages: nothing to tap."""
    return []


def _blocks(n: int) -> list[int]:
    """The last MAX_ROWS blocks (the map's last row is R after the last block)."""
    return list(range(max(0, n - MAX_ROWS), n))


def _first(ctx: Context, kind: str):
    """The kind's map of the first target (one strip; --target's first class)."""
    found = [m for m in ctx.maps.values() if m.kind == kind]
    if not found:
        raise AttnvizError(f"explain {kind}: the kind drew no map")
    return found[0]


def _image(ctx: Context) -> Panel:
    return Panel("image", "the input", "native", "", np.asarray(ctx.image, dtype=np.uint8), view="image")


def gae_strip(ctx: Context) -> Strip:
    """Per block (the last few): class-token rows of mean_h A, mean_h ∂y/∂A, Ā = mean_h(∂y/∂A ⊙ A)⁺, R."""
    m = _first(ctx, "self-gae")
    if "stage_R" not in m.extras:
        raise AttnvizError("explain self-gae: the map carries no stages")
    blocks = m.meta.get("blocks", [])
    rows: list[list[Panel | None]] = []
    for k, b in enumerate(_blocks(m.extras["stage_R"].shape[0])):
        src = blocks[b] if b < len(blocks) else f"block {b}"
        rows.append([_image(ctx) if k == 0 else None,
                     Panel("A", "mean_h A_b, class-token row", "native", src, m.extras["stage_A"][b]),
                     Panel("∂y/∂A", "mean_h ∂y_t/∂A_b, class-token row", "native", src, m.extras["stage_dA"][b],
                           cmap="RdBu_r"),
                     Panel("product", "Ā_b = mean_h[(∂y_t/∂A_b ⊙ A_b)⁺]", "native", src, m.extras["stage_product"][b]),
                     Panel("R", "R ← R + Ā_b·R, class-token row", "native", src, m.extras["stage_R"][b])])
    final = rows[-1][-1]
    label = m.meta["target"]["label"]
    return Strip("self-gae", f"GAE — native, target {label!r}, {len(blocks)} blocks", rows,
                 [f"block {b}" for b in _blocks(m.extras["stage_R"].shape[0])], finals={m.name: final})


def legrad_strip(ctx: Context) -> Strip:
    """Per block (the last few): E_l = mean over heads and rows of (∂s_l/∂A_l)⁺; then Σ_l E_l."""
    m = _first(ctx, "self-legrad")
    if "stage_E" not in m.extras:
        raise AttnvizError("explain self-legrad: the map carries no stages")
    e, blocks = m.extras["stage_E"], m.meta.get("blocks", [])
    shown = _blocks(e.shape[0])
    row: list[Panel | None] = [_image(ctx)]
    names = [blocks[b] if b < len(blocks) else f"block {b}" for b in shown]
    row += [Panel(f"E of {n}", "mean_{h,q} (∂s_l/∂A_l)⁺", "native", n, e[b])    # one row: short, or they overlap
            for n, b in zip(names, shown)]
    final = Panel("Σ_l E_l", f"Σ over all {len(blocks)} blocks", "native", m.layer, m.data)
    row.append(final)
    return Strip("self-legrad", f"LeGrad — native, target {m.meta['target']['label']!r}, {len(blocks)} blocks, "
                 "s_l = head(norm(z_l))_t",
                 [row], ["blocks " + ", ".join(map(str, shown))], finals={m.name: final})
