"""Draw a strip: one matplotlib Figure (object API, Agg canvas; no pyplot state), panels left to right."""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from attnviz.explain.panels import Panel, Strip
from attnviz.render.overlay import blend, fit

__all__ = ["strip_figure", "figure_bytes", "panel_overlay", "PANEL_IN", "DPI"]

PANEL_IN = (2.7, 3.0)       # inches per panel (width, height)
DPI = 90
_COLOUR = {"native": "#2f855a", "derived": "#c05621"}
_RAISED, _CUT, _BAR = "#dd6b20", "#3182ce", "#a0aec0"
_MARK = dict(s=70, facecolors="none", edgecolors="white", linewidths=2.0)


def _cells(data: np.ndarray, k: int = 5) -> list[tuple[int, int]]:
    order = np.argsort(-np.nan_to_num(data, nan=-np.inf).ravel(), kind="stable")[:k]
    return [tuple(int(v) for v in np.unravel_index(i, data.shape)) for i in order]


def _scale(data: np.ndarray, cmap: str) -> tuple[float | None, float | None]:
    """Diverging maps are centred on zero so the sign reads off the colour."""
    if cmap != "RdBu_r" or not np.isfinite(data).any():
        return None, None
    v = float(np.nanmax(np.abs(data))) or 1.0
    return -v, v


def _map(fig: Figure, ax, p: Panel) -> None:
    lo, hi = _scale(p.data, p.cmap)
    im = ax.imshow(p.data, cmap=p.cmap, vmin=lo, vmax=hi, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)


def _photo(ax, image: Image.Image, p: Panel, size: int) -> Image.Image:
    base = fit(image, size)
    sx, sy = base.width / image.width, base.height / image.height
    ax.imshow(base)
    for x, y in p.marks:
        ax.scatter([x * sx], [y * sy], marker="o", **_MARK)
        ax.scatter([x * sx], [y * sy], marker="+", s=60, c="red", linewidths=1.5)
    return base


def _marked(ax, image: Image.Image, p: Panel, size: int) -> None:
    base = fit(image, size)
    ax.imshow(np.asarray(base) // 2 + 64)                 # dimmed, so the marks stand out
    gh, gw = p.data.shape
    for n, (r, c) in enumerate(_cells(p.data), start=1):
        x, y = (c + 0.5) * base.width / gw, (r + 0.5) * base.height / gh
        ax.scatter([x], [y], marker="s", s=90, facecolors="none", edgecolors="yellow", linewidths=1.8)
        ax.text(x, y, str(n), color="yellow", fontsize=7, ha="center", va="center", weight="bold")


def _bars(ax, p: Panel) -> None:
    v = p.data.ravel()
    colours = np.array([_BAR] * v.size, dtype=object)
    colours[p.raised], colours[p.cut] = _RAISED, _CUT
    ax.bar(np.arange(v.size), v, color=list(colours), width=1.0)
    ax.set_xlim(-0.5, v.size - 0.5)
    ax.axhline(0.0, color="0.4", linewidth=0.6)
    ax.tick_params(labelsize=7)
    named = [f"↑ c{i}: {v[i]:.2f}" for i in p.raised] + [f"↓ c{i}: {v[i]:.2f}" for i in p.cut]
    if named:   # head room above the bars for the list, so it covers none of them
        lo, hi = min(0.0, float(np.nanmin(v))), max(0.0, float(np.nanmax(v)))
        ax.set_ylim(lo, hi + 0.85 * ((hi - lo) or 1.0))
        ax.text(0.02, 0.98, "\n".join(named), transform=ax.transAxes, fontsize=6.5, va="top",
                family="monospace", bbox=dict(facecolor="white", alpha=0.8, edgecolor="none", pad=1.5))


def _tiles(ax, p: Panel) -> None:
    """Up to four channels as small maps inside the panel, each titled with its index and gate."""
    k = p.data.shape[0]
    cols = 2 if k > 1 else 1
    rows = -(-k // cols)
    lo, hi = (-p.vmax, p.vmax) if p.vmax else _scale(p.data, "RdBu_r")
    ax.set_frame_on(False)
    for i in range(k):
        r, c = divmod(i, cols)
        inner = ax.inset_axes([c / cols + 0.03, 1 - (r + 1) / rows + 0.02, 1 / cols - 0.06, 1 / rows - 0.13])
        inner.imshow(p.data[i], cmap="RdBu_r", vmin=lo, vmax=hi, interpolation="nearest")
        inner.set_xticks([])
        inner.set_yticks([])
        inner.set_title(p.labels[i] if i < len(p.labels) else "", fontsize=6.5, pad=2)


def _text(ax, p: Panel) -> None:
    ax.text(0.05, 0.95, "\n".join(p.labels), transform=ax.transAxes, fontsize=8, va="top", family="monospace")


def panel_overlay(p: Panel, image: Image.Image, size: int) -> Image.Image:
    """An overlay panel's picture: the one drawing path, with the panel's geometry (alpha 0.5)."""
    return blend(fit(image, size), p.data, p.cmap, 0.5, p.geometry)


def _panel(fig: Figure, ax, p: Panel, image: Image.Image, size: int) -> None:
    if p.view == "image":
        _photo(ax, image, p, size)
    elif p.view == "overlay":
        ax.imshow(panel_overlay(p, image, size))
    elif p.view == "marked":
        _marked(ax, image, p, size)
    elif p.view == "bars":
        _bars(ax, p)
    elif p.view == "tiles":
        _tiles(ax, p)
    elif p.view == "text":
        _text(ax, p)
    else:
        _map(fig, ax, p)
    if p.view not in ("bars",):
        ax.set_xticks([])
        ax.set_yticks([])
    if p.view == "text":
        ax.set_frame_on(False)
    ax.set_title(f"{p.step}\n{p.formula}", fontsize=8.5, pad=4)
    shape = "×".join(str(n) for n in p.data.shape)
    ax.set_xlabel(f"{p.provenance} · {p.source} · {shape}", fontsize=6.5, color=_COLOUR[p.provenance], labelpad=3)


def strip_figure(strip: Strip, image: Image.Image, subtitle: str = "", size: int = 256) -> Figure:
    """The strip as a Figure: one row per row of panels, the side panel in its own last column."""
    ncols = max(len(r) for r in strip.rows) + (1 if strip.side is not None else 0)
    nrows = len(strip.rows)
    fig = Figure(figsize=(PANEL_IN[0] * ncols, PANEL_IN[1] * nrows + 0.6), dpi=DPI)
    grid = fig.add_gridspec(nrows, ncols, left=0.03, right=0.97, top=1 - 0.75 / (PANEL_IN[1] * nrows + 0.6),
                            bottom=0.45 / (PANEL_IN[1] * nrows + 0.6), wspace=0.35, hspace=0.55)
    for i, row in enumerate(strip.rows):
        labelled = False
        for j, p in enumerate(row):
            if p is not None:
                ax = fig.add_subplot(grid[i, j])
                _panel(fig, ax, p, image, size)
                if not labelled and i < len(strip.row_labels):
                    ax.set_ylabel(strip.row_labels[i], fontsize=8.5)
                    labelled = True
    if strip.side is not None:
        _panel(fig, fig.add_subplot(grid[:, ncols - 1]), strip.side, image, size)
    fig.suptitle(f"{strip.title}{subtitle}", fontsize=11, x=0.01, ha="left")
    return fig


def figure_bytes(fig: Figure, fmt: str = "png") -> bytes:
    """The figure as PNG or SVG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI, metadata={"Software": None} if fmt == "png" else {"Date": None})
    return buf.getvalue()
