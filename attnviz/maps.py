"""Map arithmetic shared by probes and renderers: standardise, normalise, resize, token grids."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:        # torch only where a function needs it: `attnviz evaluate` never loads it
    import torch

from attnviz.geometry import Geometry, nearest_cell, resample

EPS = 1e-6  # guards a zero standard deviation (spec: ẑ)

__all__ = ["EPS", "Layout", "zscore", "normalise", "upsample", "gaussian_kernel", "to_grid",
           "query_cell", "inside", "cell_centre",
           "FLAT_RTOL", "FLAT_ATOL", "is_flat", "query_point"]


@dataclass(frozen=True)
class Layout:
    """How a layer's output is laid out: NCHW maps, NHWC maps, or NLC tokens on a grid."""

    kind: Literal["NCHW", "NHWC", "NLC"] = "NCHW"
    prefix: int = 0                          # class/register tokens before the patches (NLC)
    grid: tuple[int, int] | None = None      # (H, W) patch grid for NLC, taken from the model


def zscore(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Standardise to mean 0, std 1 (population std) over `dims`; ε guards a zero std."""
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / (std + EPS)


def gaussian_kernel(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """A normalised (size, size) Gaussian, summing to 1."""
    import torch
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).float()


def to_grid(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Any layer output (B, ...) to a feature map (B, C, H, W) per its layout."""
    if layout.kind == "NCHW":
        return x
    if layout.kind == "NHWC":
        return x.permute(0, 3, 1, 2)
    if layout.grid is None:
        raise ValueError("an NLC layout needs its patch grid")
    h, w = layout.grid
    tokens = x[:, layout.prefix:, :]                      # (B, N, C) patches only
    if tokens.shape[1] != h * w:
        raise ValueError(f"{tokens.shape[1]} patch tokens do not fill a {h}x{w} grid")
    return tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def normalise(m: np.ndarray) -> np.ndarray:
    """Min–max to [0, 1] for display; a constant (or non-finite) map becomes all zeros."""
    m = np.asarray(m, dtype=np.float32)
    finite = np.isfinite(m)
    if not finite.any():
        return np.zeros_like(m)
    lo, hi = float(m[finite].min()), float(m[finite].max())
    if not hi > lo:
        return np.zeros_like(m)
    out = (np.where(finite, m, lo) - lo) / (hi - lo)
    return out.astype(np.float32)


def upsample(m: np.ndarray, height: int, width: int, geometry: Geometry | None = None) -> np.ndarray:
    """Resize an (h, w) map to (height, width): `attnviz.geometry.resample` (bilinear, pixel centres
    aligned; with a `geometry` — a CNN layer's measured receptive fields — the map is spread by its
    cells' fields, Σ_i m_i·E_i / Σ_i E_i, as every picture draws it)."""
    return resample(m, height, width, geometry)


def query_cell(xy: tuple[float, float], size: tuple[int, int], grid: tuple[int, int],
               geometry: Geometry | None = None) -> tuple[int, int]:
    """Image pixel (x, y) of an image of `size` (w, h) -> feature cell (row, col) of `grid` (H, W).

    The cell whose centre is nearest (its block, without a geometry); a point outside the image
    goes to the nearest border cell (see `inside`)."""
    (x, y), (w, h), (gh, gw) = xy, size, grid
    if geometry is not None and geometry.fits(grid):
        xs, ys = geometry.centres((w, h))
        cx, cy = min(max(x, 0.0), float(w)), min(max(y, 0.0), float(h))
        return nearest_cell(cy, ys), nearest_cell(cx, xs)
    fx = min(max(x / w, 0.0), 1.0)       # clamp first: a huge query must not overflow int()
    fy = min(max(y / h, 0.0), 1.0)
    return min(int(fy * gh), gh - 1), min(int(fx * gw), gw - 1)


def inside(xy: tuple[float, float], size: tuple[int, int]) -> bool:
    """Is (x, y) within an image of `size` (w, h)?"""
    return 0 <= xy[0] <= size[0] and 0 <= xy[1] <= size[1]


def cell_centre(cell: tuple[int, int], size: tuple[int, int], grid: tuple[int, int],
                geometry: Geometry | None = None) -> list[float]:
    """Centre (x, y) in image pixels of feature cell (row, col): measured with a geometry, else its block's."""
    (row, col), (w, h), (gh, gw) = cell, size, grid
    if geometry is not None and geometry.fits(grid):
        xs, ys = geometry.centres((w, h))
        return [round(float(xs[col]), 2), round(float(ys[row]), 2)]
    return [round((col + 0.5) * w / gw, 2), round((row + 0.5) * h / gh, 2)]


FLAT_RTOL = 1e-5    # range ≤ this × max |value|: the map is flat (float noise, nothing to show)
FLAT_ATOL = 1e-9    # … or range ≤ this, whatever the magnitude


def is_flat(m: np.ndarray) -> bool:
    """A map with no real contrast: range ≤ FLAT_RTOL × magnitude, or ≤ FLAT_ATOL (or not finite).

    Such a map is float noise (random-init EfficientNet's channel map spans ±6e-12): it is drawn in
    one colour and labelled "flat", never stretched to full contrast."""
    v = np.asarray(m, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return True
    span = float(v.max() - v.min())
    return span <= max(FLAT_RTOL * float(np.abs(v).max()), FLAT_ATOL)


def query_point(kind: str, name: str, meta: dict, size: tuple[int, int]) -> tuple[float, float] | None:
    """The query of a self map that is one query's row, as fractions (x/w, y/h) of an image of `size`;
    None for every other map (received and rollout maps average over every query: no mark)."""
    q = meta.get("query")
    if kind != "self" or not isinstance(q, (list, tuple)) or len(q) != 2 \
            or any(w in name for w in ("received", "rollout")):
        return None
    return float(q[0]) / size[0], float(q[1]) / size[1]
