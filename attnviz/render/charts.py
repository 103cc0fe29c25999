"""Channel-weight charts: the top-k channels as labelled bars beside the sorted weight distribution."""
from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

__all__ = ["CHART_SIZE", "top_channels", "channel_figure", "channel_bars", "channel_depth"]

CHART_SIZE = (1000, 450)      # (width, height) in pixels of every channel_bars image
_DPI = 100
_BAR = "#2b6cb0"
_TOP = "#dd6b20"


def _weights(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"channel weights must be a non-empty (C,) array, got shape {w.shape}")
    return w


def top_channels(weights: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k largest weights as (channel index, weight), descending; ties by lower index; NaN last."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    w = _weights(weights)
    key = np.where(np.isnan(w), np.inf, -w)          # stable sort of -w: ties keep index order
    order = np.argsort(key, kind="stable")[: min(k, w.size)]
    return [(int(i), float(w[i])) for i in order]


def _canvas_to_image(fig: Figure) -> Image.Image:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]), "RGB")


def _bars(ax, top: list[tuple[int, float]], n: int) -> None:
    k = len(top)
    xs = np.arange(k)
    vals = [v if np.isfinite(v) else 0.0 for _, v in top]
    ax.bar(xs, vals, color=_BAR, width=0.8, zorder=2)
    labels = [str(i) for i, _ in top]
    longest = max(len(s) for s in labels)
    rotate = k * longest > 72                          # too many digits to sit side by side
    ax.set_xticks(xs, labels, rotation=90 if rotate else 0,
                  fontsize=9 if k <= 32 else max(5, 9 - (k - 32) // 16))
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_xlabel("channel index (ranked by weight)")
    ax.set_ylabel("weight")
    ax.set_title(f"top {k} of {n} channels", fontsize=11)
    ax.grid(axis="y", alpha=0.35, zorder=0)
    ax.axhline(0.0, color="0.3", linewidth=0.8, zorder=3)
    ax.spines[["top", "right"]].set_visible(False)
    if k <= 12:                                        # room to print each value on its bar
        for x, v in zip(xs, vals):
            ax.annotate(f"{v:.3g}", (x, v), xytext=(0, 3 if v >= 0 else -3),
                        textcoords="offset points", ha="center",
                        va="bottom" if v >= 0 else "top", fontsize=8)


def _distribution(ax, w: np.ndarray, k: int) -> None:
    n = w.size
    ranked = np.sort(np.where(np.isnan(w), -np.inf, w))[::-1]
    finite = np.isfinite(ranked)
    ranks = np.arange(n)
    y = np.where(finite, ranked, np.nan)
    base = min(0.0, float(np.nanmin(y))) if finite.any() else 0.0
    rest = ranks >= k - 1                                # share the boundary point with the top k
    ax.fill_between(ranks[rest], base, y[rest], color=_BAR, alpha=0.25, linewidth=0, zorder=1)
    ax.plot(ranks, y, color=_BAR, linewidth=1.4, zorder=2,
            marker="o" if n <= 40 else None, markersize=3)
    cut = float(np.nanmin(y[:k])) if finite[:k].any() else float("nan")
    label = f"top {k}" + (f" (weight ≥ {cut:.3g})" if np.isfinite(cut) else "")
    ax.fill_between(ranks[:k], base, y[:k], color=_TOP, alpha=0.35, linewidth=0, zorder=1,
                    label=label)
    ax.plot(ranks[:k], y[:k], color=_TOP, linewidth=2.2, zorder=3)
    if k < n:
        ax.axvline(k - 0.5, color=_TOP, linestyle="--", linewidth=0.9, zorder=3)
    ax.set_xlim(-0.5, max(n - 0.5, 1.0))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.set_xlabel("rank (0 = largest)")
    ax.set_ylabel("weight")
    ax.set_title(f"all {n} weights, sorted", fontsize=11)
    ax.grid(alpha=0.35, zorder=0)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="upper right", fontsize=9, frameon=False)


def channel_figure(weights: np.ndarray, top_k: int = 20, title: str = "") -> Figure:
    """The chart as a matplotlib Figure (left axes: top-k bars; right axes: sorted weights)."""
    w = _weights(weights)
    top = top_channels(w, top_k)
    fig = Figure(figsize=(CHART_SIZE[0] / _DPI, CHART_SIZE[1] / _DPI), dpi=_DPI,
                 layout="constrained", facecolor="white")
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    _bars(left, top, w.size)
    _distribution(right, w, len(top))
    if title:
        fig.suptitle(title, fontsize=13)
    return fig


def channel_bars(weights: np.ndarray, top_k: int = 20, title: str = "") -> Image.Image:
    """A CHART_SIZE RGB chart: the top-k channels as labelled bars and all C weights sorted."""
    return _canvas_to_image(channel_figure(weights, top_k, title))


def channel_depth(gates: list[tuple[str, np.ndarray]], title: str = "", bins: int = 40) -> Image.Image:
    """Every channel gate's weight distribution, one row per gate from the first block to the last."""
    if not gates:
        raise ValueError("channel_depth needs at least one gate")
    edges = np.linspace(0.0, 1.0, bins + 1)
    hist = np.stack([np.histogram(np.clip(_weights(w), 0, 1), edges)[0] / max(len(w), 1)
                     for _, w in gates])                                   # (gates, bins)
    height = max(3.0, 0.28 * len(gates) + 1.6)
    fig = Figure(figsize=(CHART_SIZE[0] / _DPI, height), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(hist, aspect="auto", cmap="magma", extent=(0, 1, len(gates) - 0.5, -0.5),
                   interpolation="nearest")
    means = [float(np.mean(w)) for _, w in gates]
    ax.plot(means, range(len(gates)), "o", color="#38b2ac", ms=4, label="mean weight")
    ax.set_yticks(range(len(gates)), [f"{name}  (C={len(w)})" for name, w in gates], fontsize=7)
    ax.set_xlabel("gate weight s (0 = channel suppressed, 1 = passed)")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    fig.colorbar(im, ax=ax, label="fraction of the gate's channels", pad=0.01)
    fig.suptitle(title or "channel gates, first block (top) to last (bottom)")
    return _canvas_to_image(fig)
