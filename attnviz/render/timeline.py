"""Channel weights over time: the top-k channels (rows) × sampled frames (columns) as a heatmap (PIL)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from attnviz.render.draw import clip, font, nice_ticks, text, tick_label
from attnviz.render.overlay import colorize

__all__ = ["channel_timeline", "top_by_mean"]


def top_by_mean(weights: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k channels of largest mean weight over time (T, C), descending; ties by index."""
    mean = np.nan_to_num(np.asarray(weights, np.float64).mean(axis=0), nan=-np.inf)
    return np.argsort(-mean, kind="stable")[: min(k, mean.size)]


def channel_timeline(weights: np.ndarray, times: Sequence[float], top_k: int = 20, title: str = "",
                     colormap: str = "viridis") -> Image.Image:
    """(T, C) weights → a picture: rows the top-k channels by mean weight (labelled), columns the frames
    at their times, colours one linear scale over the whole picture (its range printed)."""
    w = np.asarray(weights, np.float64)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"weights over time must be a non-empty (T, C) array, got shape {w.shape}")
    rows = top_by_mean(w, top_k)
    data = w[:, rows].T                                           # (k, T)
    finite = data[np.isfinite(data)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    unit = (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)
    left, top, right, bottom = 90, 46, 20, 54
    width = max(680, min(1600, left + right + 8 * data.shape[1]))
    row_h = max(12, min(24, 480 // len(rows)))
    height = top + bottom + row_h * len(rows)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    heat = Image.fromarray(colorize(np.nan_to_num(unit), colormap)).resize(
        (width - left - right, row_h * len(rows)), Image.Resampling.NEAREST)
    img.paste(heat, (left, top))
    draw = ImageDraw.Draw(img)
    f, small = font(15), font(12)
    text(draw, (left, 10), clip(title, f, width - left - right), f)
    text(draw, (left, 28), f"colour: weight from {lo:.4g} (dark) to {hi:.4g} (bright), one scale", small)
    for i, c in enumerate(rows):
        text(draw, (left - 6, top + row_h * (i + 0.5)), f"ch {int(c)}", small, anchor="rm")
    t = np.asarray(times, np.float64)
    t0, t1 = (float(t[0]), float(t[-1])) if t.size else (0.0, 0.0)
    span = width - left - right
    ticks = [v for v in nice_ticks(t0, t1, 8) if t0 <= v <= t1] if t1 > t0 else [t0]
    for v in ticks:
        # column i (of T, uniform sampling) spans [i, i+1) · span/T; its centre stands for times[i]
        n = max(1, data.shape[1])
        x = left + (((v - t0) / (t1 - t0)) * (n - 1) + 0.5 if t1 > t0 else n / 2) * span / n
        draw.line((x, top + row_h * len(rows), x, top + row_h * len(rows) + 4), fill=(20, 20, 20))
        text(draw, (x, top + row_h * len(rows) + 6), tick_label(v, ticks), small, anchor="ma")
    text(draw, (left + span / 2, height - 20), "time (s)", small, anchor="ma")
    return img
