"""Draw a strip: one matplotlib Figure (object API, Agg canvas; no pyplot state), panels left to right."""
from __future__ import annotations

import io
import re

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from attnviz.explain.panels import Panel, Strip
from attnviz.render.band import BAND_COLOUR
from attnviz.render.overlay import blend, fit

__all__ = ["strip_figure", "figure_bytes", "panel_overlay", "PANEL_IN", "DPI"]

PANEL_IN = (2.7, 2.6)       # inches per panel (width, height)
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
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, format="%.3g")   # no "1e-6" over the title
    bar.ax.tick_params(labelsize=7)


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
    ax.set_frame_on(False)
    for i in range(k):
        r, c = divmod(i, cols)
        v = p.vmax[i] if p.vmax and i < len(p.vmax) else (float(np.nanmax(np.abs(p.data[i]))) or 1.0)
        inner = ax.inset_axes([c / cols + 0.03, 1 - (r + 1) / rows + 0.01, 1 / cols - 0.06, 1 / rows - 0.15])
        inner.imshow(p.data[i], cmap="RdBu_r", vmin=-v, vmax=v, interpolation="nearest")
        inner.set_xticks([])
        inner.set_yticks([])
        label = p.labels[i] if i < len(p.labels) else ""
        inner.set_title(f"{label}\n±{v:.3g}", fontsize=6, pad=1.5, linespacing=1.05)
    if p.note:
        ax.text(0.5, -0.04, p.note, transform=ax.transAxes, fontsize=6, ha="center", va="top", color="0.35")


def _text(ax, p: Panel) -> None:
    ax.text(0.05, 0.95, "\n".join(p.labels), transform=ax.transAxes, fontsize=8, va="top", family="monospace")


def panel_overlay(p: Panel, image: Image.Image, size: int) -> Image.Image:
    """An overlay panel's picture: the one drawing path, with the panel's geometry (alpha 0.5)."""
    return blend(fit(image, size), p.data, p.cmap, 0.5, p.geometry)
def _overlay_bar(fig: Figure, ax, cmap: str) -> None:
    """The overlay's colour bar: the map min–max normalised, as every overlay is drawn."""
    cax = ax.inset_axes([1.04, 0.0, 0.05, 1.0])        # as tall as the picture (the axes keep its aspect)
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap), cax=cax, ticks=[0, 0.5, 1])
    bar.ax.set_yticklabels(["min", "0.5", "max"])
    bar.ax.tick_params(labelsize=7)


def _footer(text: str, chars: int = 40) -> str:
    """The provenance line wrapped to the panel's width: at " · " first, then after dots or spaces
    inside a long module name (at most three lines, the last cut with …)."""
    lines: list[str] = []
    for k, part in enumerate(text.split(" · ")):
        if k and len(lines[-1]) + 3 + len(part) <= chars:
            lines[-1] += " · " + part
            continue
        lines.append("")
        for token in re.findall(r"[^. ]*[. ]?", part):
            if lines[-1] and len(lines[-1]) + len(token) > chars:
                lines.append("")
            lines[-1] += token
    lines = [line.strip() for line in lines if line.strip()]
    if len(lines) > 3:
        lines = lines[:2] + [lines[2][:chars - 1] + "…"]
    return "\n".join(lines)


def _panel(fig: Figure, ax, p: Panel, image: Image.Image, size: int) -> None:
    if p.view == "image":
        _photo(ax, image, p, size)
    elif p.view == "overlay":
        ax.imshow(panel_overlay(p, image, size))
        _overlay_bar(fig, ax, p.cmap)
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
    ax.set_xlabel(_footer(f"{p.provenance} · {p.source} · {shape}"), fontsize=6.5, color=_COLOUR[p.provenance],
                  labelpad=3 + (10 if p.note else 0))


def strip_figure(strip: Strip, image: Image.Image, subtitle: str = "", size: int = 256, band: str = "") -> Figure:
    """The strip as a Figure: one row per row of panels, the side panel in its own last column;
    `band`: a warning drawn as a red band across the top (SVG; PNGs get render.band's)."""
    ncols = max(len(r) for r in strip.rows) + (1 if strip.side is not None else 0)
    nrows = len(strip.rows)
    height = PANEL_IN[1] * nrows + 0.6
    fig = Figure(figsize=(PANEL_IN[0] * ncols, height), dpi=DPI)
    grid = fig.add_gridspec(nrows, ncols, left=0.03, right=0.97, top=1 - 0.85 / height,
                            bottom=0.5 / height, wspace=0.3, hspace=0.6)
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
    fig.suptitle(f"{strip.title}{subtitle}", fontsize=11, x=0.01, y=1 - 0.08 / height, ha="left", va="top")
    if band:
        fig.text(0.5, 1.0, f"⚠ {band} ⚠", ha="center", va="bottom", fontsize=12, weight="bold", color="white",
                 bbox=dict(boxstyle="square,pad=0.5", facecolor="#%02x%02x%02x" % BAND_COLOUR, edgecolor="none"))
    return fig


def figure_bytes(fig: Figure, fmt: str = "png") -> bytes:
    """The figure as PNG or SVG bytes, cropped to what is drawn (no empty margins)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", pad_inches=0.12,
                metadata={"Software": None} if fmt == "png" else {"Date": None})
    return buf.getvalue()
