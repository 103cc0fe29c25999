"""Channel-weight charts drawn with PIL (no matplotlib figure: ~100× faster, no global state).

`channel_bars`: the top-k channels as labelled bars beside the sorted weight distribution;
`channel_depth`: every native gate's weight histogram, first block to last."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from attnviz.render.draw import Axes, clip, font, mix, nice_ticks, text, tick_label, vtext, width
from attnviz.render.overlay import colorize

__all__ = ["CHART_SIZE", "ZOOM", "top_channels", "zoom_limits", "bar_axes", "channel_bars", "channel_depth"]

CHART_SIZE = (1000, 450)      # (width, height) in pixels of every channel_bars image
_BAR = (43, 108, 176)         # #2b6cb0
_TOP = (221, 107, 32)         # #dd6b20
_DOT = (56, 178, 172)         # #38b2ac, mean gate weight
_WHITE = (255, 255, 255)
# font sizes in pixels: matplotlib's 13, 11, 10 and 9 pt at 100 dpi
_SUPTITLE, _TITLE, _LABEL, _TICK = 18, 15, 14, 12
_NOTE_H = _TICK + 10          # the line of notes (zoomed axis, legend) between a panel's title and its axes


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


def _limits(lo: float, hi: float, sticky_zero: bool) -> tuple[float, float]:
    """Data limits with matplotlib's 5 % margins; bars keep 0 as an edge (sticky) when they start there."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    a, b = lo - pad, hi + pad
    if sticky_zero and lo == 0.0:
        a = 0.0
    if sticky_zero and hi == 0.0:
        b = 0.0
    return a, b


def _fill(img: Image.Image, points: np.ndarray, colour: tuple[int, int, int], alpha: float) -> None:
    """A polygon of (N, 2) `points` at opacity `alpha` over what is already drawn (grid lines show through)."""
    if len(points) < 3:
        return
    x0, y0 = (int(v) for v in points.min(axis=0))
    x1, y1 = (int(v) + 2 for v in points.max(axis=0))
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)           # only the polygon's bounding box
    ImageDraw.Draw(mask).polygon((points - (x0, y0)).ravel().tolist(), fill=round(255 * alpha))
    img.paste(colour, (x0, y0), mask)


ZOOM = 0.25      # values whose spread is under this share of their size get a zoomed axis (said on the chart)


def zoom_limits(values: np.ndarray) -> tuple[float, float] | None:
    """Axis limits that show the differences of near-equal positive values (e.g. gates 0.96–0.99,
    which bars from 0 draw as equal), or None when a plain axis from 0 shows them already."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return None
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo
    if not (lo > 0 and 0 < span < ZOOM * hi):
        return None
    return lo - 0.15 * span, hi + 0.1 * span


def _base(ax: Axes) -> float:
    """Where bars start: 0, or the bottom of a zoomed axis that does not reach 0."""
    return 0.0 if ax.y0 <= 0.0 <= ax.y1 else ax.y0


def _dashed(draw: ImageDraw.ImageDraw, x: float, top: float, bottom: float, colour) -> None:
    for y in range(int(top), int(bottom), 6):
        draw.line((x, y, x, min(y + 3, bottom)), fill=colour)


def _layout(top_labels: list[str], k: int, title: str) -> tuple[int, int, int, bool]:
    """Top and bottom pixel rows of both axes, the bar tick font size, and whether labels turn."""
    rotate = k * max(len(s) for s in top_labels) > 54          # too many digits side by side
    size = _TICK if k <= 32 else max(7, _TICK - (k - 32) // 16)
    tall = max(width(s, font(size)) for s in top_labels) if rotate else size
    top = (8 + _SUPTITLE + 10 if title else 8) + _TITLE + 4 + _NOTE_H     # title, then a line of notes
    bottom = CHART_SIZE[1] - 8 - _LABEL - 8 - round(tall) - 8
    return top, bottom, size, rotate


def bar_axes(weights: np.ndarray, top_k: int = 20, title: str = "") -> tuple[Axes, Axes]:
    """The two data → pixel axes of `channel_bars`: bars (x = rank among the top k) and distribution."""
    w = _weights(weights)
    top = top_channels(w, top_k)
    k, n = len(top), w.size
    vals = np.array([v if np.isfinite(v) else 0.0 for _, v in top])
    t, b, _, _ = _layout([str(i) for i, _ in top], k, title)
    y0, y1 = zoom_limits(vals) or _limits(min(0.0, vals.min()), max(0.0, vals.max()), sticky_zero=True)
    finite = w[np.isfinite(w)]
    d0, d1 = zoom_limits(finite) or _limits(min(0.0, finite.min()) if finite.size else 0.0,
                                            finite.max() if finite.size else 1.0, sticky_zero=False)

    def left_edge(x0: int, ticks: list[float]) -> int:     # room for tick labels and the y label
        return x0 + 8 + _LABEL + 10 + round(max(width(tick_label(v, ticks), font(_TICK)) for v in ticks))
    lb = left_edge(0, nice_ticks(y0, y1, 6))
    rb = left_edge(600, nice_ticks(d0, d1, 6))
    return (Axes((lb, t, 585, b), -0.6, k - 0.4, y0, y1),
            Axes((rb, t, CHART_SIZE[0] - 12, b), -0.5, max(n - 0.5, 1.0), d0, d1))


def channel_bars(weights: np.ndarray, top_k: int = 20, title: str = "") -> Image.Image:
    """A CHART_SIZE RGB chart: the top-k channels as labelled bars and all C weights sorted."""
    w = _weights(weights)
    top = top_channels(w, top_k)
    k, n = len(top), w.size
    bars, dist = bar_axes(w, top_k, title)
    img = Image.new("RGB", CHART_SIZE, _WHITE)
    draw = ImageDraw.Draw(img)
    if title:
        text(draw, (CHART_SIZE[0] / 2, 8), clip(title, font(_SUPTITLE), CHART_SIZE[0] - 16),
             font(_SUPTITLE), anchor="ma")
    labels = [str(i) for i, _ in top]
    _, _, size, rotate = _layout(labels, k, title)
    # left: the top k as bars, labelled with their channel index
    xs = list(range(k))
    bars.frame(img, draw, xs, nice_ticks(bars.y0, bars.y1, 6), labels, font(size), rotate_x=rotate,
               xlabel="channel index (ranked by weight)", ylabel="weight", label_font=font(_LABEL),
               yfont=font(_TICK))
    for x, (_, v) in zip(xs, top):
        v = v if np.isfinite(v) else 0.0
        a, b = sorted((bars.py(_base(bars)), bars.py(v)))
        draw.rectangle((round(bars.px(x - 0.4)), round(a), round(bars.px(x + 0.4)) - 1, round(b) - 1),
                       fill=_BAR)
        if k <= 12:                                        # room to print each value on its bar
            text(draw, (bars.px(x), bars.py(v) + (-3 if v >= 0 else 3)), f"{v:.3g}", font(11),
                 anchor="md" if v >= 0 else "ma")
    zero = round(bars.py(_base(bars)))
    draw.line((bars.box[0], zero, bars.box[2], zero), fill=(77, 77, 77))
    _title(draw, bars, f"top {k} of {n} channels")
    _note(draw, bars, _spread_note(np.array([v for _, v in top]), bars, f"top {k}"))
    _distribution(img, draw, dist, w, k)
    return img


def _pair(lo: float, hi: float) -> tuple[str, str]:
    """lo and hi with as many significant digits as it takes to tell them apart (4 at least)."""
    for p in range(4, 9):
        a, b = f"{lo:.{p}g}", f"{hi:.{p}g}"
        if a != b:
            return a, b
    return a, b


def _spread_note(values: np.ndarray, ax: Axes, which: str, short: bool = False) -> str:
    """What the axis does to near-equal values, in words (empty when it is a plain axis)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size > 1 and float(v.max()) == float(v.min()):
        return f"{which}: all equal ({float(v[0]):.3g})"
    if not ax.y0 <= 0.0 <= ax.y1 and ax.y0 > 0:
        a, b = _pair(float(v.min()), float(v.max()))
        if short:
            return "zoomed, not from 0"
        return f"axis zoomed, not from 0: {which} span {a}–{b}, differences drawn large"
    return ""


def _note(draw: ImageDraw.ImageDraw, ax: Axes, s: str) -> None:
    """A line between an axes' title and its box, left-aligned, in the warning colour."""
    if s:
        text(draw, (ax.box[0], ax.box[1] - _NOTE_H / 2), s, font(_TICK), fill=(176, 0, 32), anchor="lm")


def _title(draw: ImageDraw.ImageDraw, ax: Axes, s: str) -> None:
    left, top, right, _ = ax.box
    text(draw, ((left + right) / 2, top - _NOTE_H - 4), clip(s, font(_TITLE), right - left), font(_TITLE),
         anchor="md")


def _distribution(img: Image.Image, draw: ImageDraw.ImageDraw, ax: Axes, w: np.ndarray, k: int) -> None:
    """Right: all C weights sorted, the top k in orange up to a dashed cut, a legend with the cut."""
    n = w.size
    ranked = np.sort(np.where(np.isnan(w), -np.inf, w))[::-1]
    keep = np.isfinite(ranked)
    ranks = np.arange(n)[keep]
    xy = np.stack([ax.px(ranks), ax.py(ranked[keep])], axis=1).astype(np.float64)     # (N, 2) pixels
    pts = xy.ravel().tolist()                                                       # x0, y0, x1, y1 …
    xticks = [float(v) for v in nice_ticks(ax.x0, ax.x1, 6) if float(v).is_integer()] or [0.0]
    ax.frame(img, draw, xticks, nice_ticks(ax.y0, ax.y1, 6), [str(int(v)) for v in xticks],
             font(_TICK), grid_x=True, xlabel="rank (0 = largest)", ylabel="weight",
             label_font=font(_LABEL))
    base = ax.py(min(0.0, float(ranked[keep].min())) if keep.any() and ax.y0 <= 0.0 else ax.y0)
    rest = xy[ranks >= k - 1]                                 # shares its first point with the top k
    head = xy[ranks < k]
    for part, colour, alpha in ((rest, _BAR, 0.25), (head, _TOP, 0.35)):
        if len(part):
            _fill(img, np.concatenate([part, [(part[-1, 0], base), (part[0, 0], base)]]), colour, alpha)
    if len(xy) > 1:
        draw.line(pts, fill=_BAR, width=2)
    if len(head) > 1:
        draw.line(head.ravel().tolist(), fill=_TOP, width=3)
    if n <= 40:
        for x, y in xy.tolist():
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=_BAR)
    if k < n:
        _dashed(draw, ax.px(k - 0.5), ax.box[1], ax.box[3], _TOP)
    cut = float(ranked[:k][keep[:k]].min()) if keep[:k].any() else float("nan")
    legend = f"top {k}" + (f" (weight ≥ {cut:.3g})" if np.isfinite(cut) else "")
    f = font(_TICK)
    x = ax.box[2] - width(legend, f)
    y = ax.box[1] - _NOTE_H / 2                          # in the notes line above the axes: never on the curve
    draw.rectangle((x - 30, y - 5, x - 6, y + 5), fill=mix(_TOP, 0.35))
    text(draw, (x, y), legend, f, anchor="lm")
    _title(draw, ax, f"all {n} weights, sorted")
    note = _spread_note(ranked[keep], ax, "all", short=True)
    if note:
        _note(draw, ax, clip(note, f, x - 36 - ax.box[0]))


def channel_depth(gates: list[tuple[str, np.ndarray]], title: str = "", bins: int = 40) -> Image.Image:
    """Every channel gate's weight distribution, one row per gate from the first block to the last."""
    if not gates:
        raise ValueError("channel_depth needs at least one gate")
    edges = np.linspace(0.0, 1.0, bins + 1)
    hist = np.stack([np.histogram(np.clip(_weights(w), 0, 1), edges)[0] / max(len(w), 1)
                     for _, w in gates])                                   # (gates, bins)
    n = len(gates)
    size = (CHART_SIZE[0], round(100 * max(3.0, 0.28 * n + 1.6)))
    img = Image.new("RGB", size, _WHITE)
    draw = ImageDraw.Draw(img)
    title = title or "channel gates, first block (top) to last (bottom)"
    text(draw, (size[0] / 2, 8), clip(title, font(_SUPTITLE), size[0] - 16), font(_SUPTITLE), anchor="ma")
    names = [clip(f"{name}  (C={len(w)})", font(10), 0.4 * size[0]) for name, w in gates]
    left = 12 + round(max(width(s, font(10)) for s in names))
    box = (left, 8 + _SUPTITLE + 14, size[0] - 120, size[1] - 8 - _LABEL - 8 - _TICK - 10)
    ax = Axes(box, 0.0, 1.0, n - 0.5, -0.5)                 # first gate on top
    lo, hi = float(hist.min()), float(hist.max())
    heat = colorize((hist - lo) / (hi - lo) if hi > lo else np.zeros_like(hist), "magma")
    img.paste(Image.fromarray(heat, "RGB").resize((box[2] - box[0], box[3] - box[1]),
                                                  Image.Resampling.NEAREST), box[:2])
    xt = nice_ticks(0.0, 1.0, 6)
    ax.frame(img, draw, xt, list(range(n)), [tick_label(v, xt) for v in xt], font(_TICK), grid_y=False,
             xlabel="gate weight s (0 = channel suppressed, 1 = passed)", ylabels=names,
             yfont=font(10), label_font=font(_LABEL))
    for i, (_, w) in enumerate(gates):
        x, y = ax.px(float(np.mean(w))), ax.py(i)
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=_DOT)
    lx, ly = box[2] - 8 - width("mean weight", font(11)), box[3] - 16
    draw.rectangle((lx - 26, ly - 10, box[2] - 4, ly + 10), fill=_WHITE, outline=(204, 204, 204))
    draw.ellipse((lx - 18, ly - 4, lx - 10, ly + 4), fill=_DOT)
    text(draw, (lx, ly), "mean weight", font(11), anchor="lm")
    _colour_bar(img, draw, (box[2] + 12, box[1], box[2] + 30, box[3]), lo, hi)
    return img


def _colour_bar(img: Image.Image, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int],
                lo: float, hi: float) -> None:
    """The depth chart's vertical magma bar: `lo` at the bottom, `hi` at the top, with ticks."""
    x0, y0, x1, y1 = box
    ramp = colorize(np.linspace(1.0, 0.0, y1 - y0)[:, None].repeat(x1 - x0, 1), "magma")
    img.paste(Image.fromarray(ramp, "RGB"), (x0, y0))
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
    top = hi if hi > lo else lo + 1.0
    ticks = nice_ticks(lo, top, 5)
    for v in ticks:
        y = y1 - (v - lo) / (top - lo) * (y1 - y0)
        draw.line((x1, y, x1 + 3, y), fill=(0, 0, 0))
        text(draw, (x1 + 6, y), tick_label(v, ticks), font(_TICK), anchor="lm")
    room = max(width(tick_label(v, ticks), font(_TICK)) for v in ticks)
    vtext(img, (x1 + 14 + room + _LABEL * 0.7, (y0 + y1) / 2), "fraction of the gate's channels",
          font(_LABEL))
