"""Where each feature cell looks: per-axis receptive fields in model-input pixels, and drawing by them.

A CNN's cell i does not sit at the centre of its block of the image, (i + ½)·S/n: 3×3/pad-1 and
7×7/pad-3 stride-2 convolutions put its receptive field near i·stride, and border cells are pulled
inwards because their field is cut by the padding. `probes.receptive` measures each cell's
effective receptive field E_i (mean |∂cell/∂input|): its centroid (the cell's centre: peaks,
queries) and its spread (standard deviation). A `Geometry` keeps both per axis (the fields of a
convolutional stack are separable to first order).

Drawing by receptive field: E_i is approximated by a Gaussian whose part on the image has the
measured centroid and spread (`gaussian_field`: border fields are cut by the image edge), given
unit mass over the image, and the heat at pixel p is Σ_i m_i·E_i(p) / Σ_i E_i(p) — each
pixel carries the cell values weighted by how much each cell depends on it. Separable, so it is
two small matrices: heat = Ky·m·Kxᵀ (`axis_kernel`, rows normalised). A record without spreads
(written before they were measured) is drawn linearly between its centres.
All positions are continuous pixel coordinates (pixel j spans [j, j + 1), its centre is j + ½);
the model sees the whole image squashed to S², so model-input x is image x·W/S.
Without a geometry (token grids, whose patch centres are exact; --no-align) every function here is
the uniform rule (i + ½)·W/n, and resampling is bilinear with align_corners=False.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["AFFINE_TOLERANCE", "MIN_SPREAD", "Axis", "Geometry", "uniform_centres", "axis_samples",
           "axis_matrix", "axis_kernel", "gaussian_field", "resample", "bilinear", "bilinear_taps", "unit_rows",
           "drawn_centres", "nearest_cell"]

AFFINE_TOLERANCE = 0.05   # largest residual (in cells) an affine fit may leave; else keep the table
MIN_SPREAD = 0.25         # smallest spread drawn, in cells (a degenerate measurement stays finite)


def uniform_centres(n: int, extent: float) -> np.ndarray:
    """Centres of n equal blocks of `extent` pixels: (i + ½)·extent/n, shape (n,)."""
    return (np.arange(n, dtype=np.float64) + 0.5) * extent / n


@dataclass(frozen=True)
class Axis:
    """Cell centres along one axis, in model-input pixels: affine a·(i + ½) + b, or a table."""

    n: int                          # cells along this axis
    a: float                        # fitted stride (pixels per cell)
    b: float                        # fitted offset (pixels)
    residual: float                 # largest |table − affine| in cells
    table: tuple[float, ...]        # the measured centres
    mu: tuple[float, ...] = ()      # each cell's field: Gaussian centre … (empty: not measured)
    sigma: tuple[float, ...] = ()   # … and spread, whose part on the image has the measured moments

    @classmethod
    def fit(cls, centres: Sequence[float], mu: Sequence[float] = (), sigma: Sequence[float] = ()) -> Axis:
        """Least-squares affine fit of measured centres (monotone by construction of the CNN)."""
        c = np.maximum.accumulate(np.asarray(centres, dtype=np.float64))   # guard noise: never go back
        i = np.arange(len(c)) + 0.5
        a, b = np.polyfit(i, c, 1) if len(c) > 1 else (1.0, float(c[0]) - 0.5)
        step = abs(a) if abs(a) > 1e-9 else 1.0
        residual = float(np.max(np.abs(a * i + b - c)) / step)
        r3 = lambda v: tuple(round(float(x), 3) for x in v)   # noqa: E731
        return cls(len(c), float(a), float(b), residual, r3(c), r3(mu), r3(sigma))

    @property
    def affine(self) -> bool:
        """Is the affine fit used (else the table)?"""
        return self.residual <= AFFINE_TOLERANCE

    def centres(self) -> np.ndarray:
        """The centres drawn, in model-input pixels: (n,)."""
        if self.affine:
            return self.a * (np.arange(self.n) + 0.5) + self.b
        return np.asarray(self.table, dtype=np.float64)

    def record(self) -> dict[str, Any]:
        """JSON-ready form (the manifest's per-layer mapping)."""
        out: dict[str, Any] = {"mode": "affine" if self.affine else "table", "a": round(self.a, 4),
                               "b": round(self.b, 4), "residual_cells": round(self.residual, 4)}
        if not self.affine or self.sigma:
            out["centres"] = list(self.table)
        if self.sigma:
            out["mu"], out["sigma"] = list(self.mu), list(self.sigma)
        return out

    @classmethod
    def from_record(cls, r: Mapping[str, Any], n: int) -> Axis:
        """Inverse of `record` (a table record keeps its table; affine ones need n)."""
        table = tuple(r.get("centres") or (r["a"] * (np.arange(n) + 0.5) + r["b"]).round(3).tolist())
        residual = float(r.get("residual_cells", 0.0))
        if r.get("mode") == "table":
            residual = max(residual, AFFINE_TOLERANCE * 2)   # stays a table after a round trip
        mu, sigma = (tuple(float(v) for v in r.get(k) or ()) for k in ("mu", "sigma"))
        if len(mu) != n or len(sigma) != n:
            mu = sigma = ()
        return cls(n, float(r["a"]), float(r["b"]), residual, table, mu, sigma)

    def kernel(self, extent: int, input_size: int, n_out: int) -> np.ndarray:
        """(n_out, n): cell i's Gaussian field at each output pixel of an axis `extent` pixels long."""
        scale = extent / input_size
        return axis_kernel(tuple(float(v) * scale for v in self.mu), tuple(float(v) * scale for v in self.sigma),
                           extent, n_out)


@dataclass(frozen=True)
class Geometry:
    """Measured cell centres of one layer at one input size: rows (y) and columns (x)."""

    rows: Axis
    cols: Axis
    input_size: int                  # S: the model saw S×S pixels
    method: str = "receptive field"

    @property
    def fields(self) -> bool:
        """Are the cells drawn by their receptive fields (spreads measured on both axes)?"""
        return bool(self.rows.sigma) and bool(self.cols.sigma)

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the maps this geometry places."""
        return self.rows.n, self.cols.n

    def centres(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Cell centres in pixels of an image of `size` (w, h): xs (W cells,), ys (H cells,)."""
        w, h = size
        return self.cols.centres() * w / self.input_size, self.rows.centres() * h / self.input_size

    def record(self) -> dict[str, Any]:
        """JSON-ready form: how cells were placed (manifest `geometry`)."""
        return {"method": self.method, "input_size": self.input_size, "grid": list(self.grid),
                "x": self.cols.record(), "y": self.rows.record()}

    @classmethod
    def from_record(cls, r: Mapping[str, Any] | None) -> Geometry | None:
        """A Geometry from its record; None for no record or an exact (uniform) one."""
        if not r or "x" not in r or "y" not in r:
            return None
        h, w = r["grid"]
        return cls(Axis.from_record(r["y"], h), Axis.from_record(r["x"], w), int(r["input_size"]),
                   r.get("method", "receptive field"))

    def fits(self, grid: Sequence[int]) -> bool:
        """Does it place maps of this (H, W)?"""
        return tuple(grid) == self.grid

    def drawn(self) -> Geometry:
        """The geometry pictures are drawn with: itself when it has receptive fields; an older record
        (centres only) as each axis's affine fit, as attnviz drew it then."""
        if self.fields:
            return self
        return Geometry(*(Axis(a.n, a.a, a.b, 0.0, a.table) for a in (self.rows, self.cols)),
                        self.input_size, self.method)



def drawn_centres(n: int, extent: int, geometry: Geometry | None, axis: str) -> np.ndarray:
    """Centres of n cells along x or y of an image `extent` pixels long, in its pixels."""
    if geometry is None:
        return uniform_centres(n, extent)
    a = geometry.cols if axis == "x" else geometry.rows
    return a.centres() * extent / geometry.input_size


def axis_samples(centres: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output pixel j (centre j + ½): cells i0, i1 and weight t, value = (1−t)·m[i0] + t·m[i1].

    Outside the first/last centre the value is that cell's (as bilinear with align_corners=False).
    With uniform centres this is exactly torch's bilinear resampling along one axis."""
    c = np.asarray(centres, dtype=np.float64)
    p = np.arange(n_out, dtype=np.float64) + 0.5
    n = len(c)
    if n == 1:
        zero = np.zeros(n_out, dtype=np.int64)
        return zero, zero, np.zeros(n_out)
    i1 = np.clip(np.searchsorted(c, p, side="right"), 1, n - 1)
    i0 = i1 - 1
    gap = np.maximum(c[i1] - c[i0], 1e-12)
    t = np.clip((p - c[i0]) / gap, 0.0, 1.0)
    return i0, i1, t


def axis_matrix(centres: np.ndarray, n_out: int) -> np.ndarray:
    """The (n_out, n) interpolation matrix of `axis_samples` (rows sum to 1): out = M @ m."""
    i0, i1, t = axis_samples(centres, n_out)
    m = np.zeros((n_out, len(centres)), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1 - t)
    np.add.at(m, (rows, i1), t)
    return m


def _gather(m: np.ndarray, axis: int, samples: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    i0, i1, t = samples
    a, b = np.take(m, i0, axis=axis), np.take(m, i1, axis=axis)
    shape = [1] * m.ndim
    shape[axis] = -1
    t = t.reshape(shape)
    # where t is 0 or 1 only one cell counts, so a NaN neighbour does not spread over the whole span
    return np.where(t <= 0, a, np.where(t >= 1, b, (1 - t) * a + t * b))


@lru_cache(maxsize=64)
def axis_kernel(centres: tuple[float, ...], spreads: tuple[float, ...], extent: float, n_out: int) -> np.ndarray:
    """(n_out, n) float64: Gaussian i (centre, spread in the axis's pixels) at each output pixel centre,
    each column with unit mass over the image (the axis is `extent` pixels, sampled by n_out)."""
    c, s = np.asarray(centres, np.float64), np.asarray(spreads, np.float64)
    step = extent / max(len(c), 1)
    s = np.maximum(s, MIN_SPREAD * step)
    p = (np.arange(n_out, dtype=np.float64) + 0.5) * extent / n_out
    k = np.exp(-0.5 * ((p[:, None] - c[None, :]) / s[None, :]) ** 2)
    k /= np.maximum(k.sum(axis=0, keepdims=True), 1e-300)
    k.setflags(write=False)
    return k


def gaussian_field(mean: Sequence[float], std: Sequence[float], extent: int, iters: int = 100
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(μ, σ) per cell of the Gaussian whose part on [0, extent] has the given mean and std.

    A border cell's field is cut by the image edge: its measured centroid lies inwards of where
    its field peaks. Matching the truncated Gaussian's moments puts the peak back (resnet18
    layer4 at 224 px: cell 0's centroid 52 px, its Gaussian's centre 21 px)."""
    pos = np.arange(extent, dtype=np.float64) + 0.5
    m, s = np.asarray(mean, np.float64), np.maximum(np.asarray(std, np.float64), 1e-3)
    mu, sg = m.copy(), s.copy()
    for _ in range(iters):          # fixed point: shift the centre, scale the spread
        k = np.exp(-0.5 * ((pos[None] - mu[:, None]) / sg[:, None]) ** 2)
        k /= np.maximum(k.sum(axis=1, keepdims=True), 1e-300)
        tm = (k * pos).sum(axis=1)
        ts = np.sqrt((k * (pos - tm[:, None]) ** 2).sum(axis=1))
        mu, sg = mu + (m - tm), np.clip(sg * s / np.maximum(ts, 1e-9), 1e-3, 10.0 * extent)
    return mu, sg


@lru_cache(maxsize=64)
def unit_rows(axis: Axis, extent: int, input_size: int, transposed: bool = False) -> np.ndarray | None:
    """The axis's kernel (extent, n) with every row divided by its sum (None when a row sums to 0);
    `transposed`: as a C-contiguous (n, extent) array."""
    k = axis.kernel(extent, input_size, extent)
    total = k.sum(axis=1, keepdims=True)
    if not (total > 0).all():
        return None
    out = k / total
    out = np.ascontiguousarray(out.T) if transposed else out
    out.setflags(write=False)
    return out


def _by_fields(m: np.ndarray, height: int, width: int, g: Geometry) -> np.ndarray:
    """Σ_i m_i·E_i(p) / Σ_i E_i(p) with separable Gaussian fields; NaN cells count in neither sum."""
    valid = np.isfinite(m)
    if valid.all():
        wy, wx = unit_rows(g.rows, height, g.input_size), unit_rows(g.cols, width, g.input_size, True)
        if wy is not None and wx is not None:       # Σ E_i is separable: each kernel row sums to 1
            # einsum's own loops, not BLAS: OpenBLAS's threads at K = 7 took 5–20 ms here, fighting torch's
            return np.einsum("yi,ix->yx", np.einsum("yi,ij->yj", wy, m.astype(np.float64)), wx)
    ky = g.rows.kernel(height, g.input_size, height)                      # (height, h)
    kx = g.cols.kernel(width, g.input_size, width)                        # (width, w)
    num = ky @ np.where(valid, m, 0.0).astype(np.float64) @ kx.T
    if valid.all():
        den = np.outer(ky.sum(axis=1), kx.sum(axis=1))                    # separable
    else:
        den = ky @ valid.astype(np.float64) @ kx.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def resample(m: np.ndarray, height: int, width: int, geometry: Geometry | None = None) -> np.ndarray:
    """An (h, w) map resampled to (height, width) — THE resize of every map: drawn by the cells'
    receptive fields when the geometry has them, else each cell's value at its measured centre,
    interpolated linearly between them; without a fitting `geometry`, plain bilinear from block centres."""
    m = np.asarray(m, dtype=np.float32)
    h, w = m.shape
    if geometry is None or not geometry.fits((h, w)):
        return bilinear(m, height, width)
    if geometry.fields:
        return _by_fields(m, height, width, geometry).astype(np.float32)
    ys = drawn_centres(h, height, geometry, "y")
    xs = drawn_centres(w, width, geometry, "x")
    out = _gather(_gather(m, 0, axis_samples(ys, height)), 1, axis_samples(xs, width))
    return out.astype(np.float32)


@lru_cache(maxsize=64)
def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each output pixel of a 1-D bilinear resize: its two source indices and their weights.

    The same source positions and weights as torch's `interpolate(mode="bilinear",
    align_corners=False)` : src = (dst + ½)·n_in/n_out − ½, clamped at 0."""
    scale = np.float32(n_in / n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    i0 = np.minimum(src.astype(np.intp), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, (1 - w1).astype(np.float32), w1


def bilinear(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (align_corners=False, as torch) by gathers and two blends per axis (~20× faster on CPU)."""
    m = np.asarray(m, dtype=np.float32)
    i0, i1, w0, w1 = bilinear_taps(m.shape[1], width)
    cols = m[:, i0] * w0 + m[:, i1] * w1                                    # (h, width)
    j0, j1, v0, v1 = bilinear_taps(m.shape[0], height)
    return cols[j0] * v0[:, None] + cols[j1] * v1[:, None]                  # (height, width)


def nearest_cell(x: float, centres: np.ndarray) -> int:
    """The cell whose centre is nearest to x (ties to the lower cell)."""
    c = np.asarray(centres, dtype=np.float64)
    return int(np.argmin(np.abs(c - x)))
