"""Heatmap overlays: colour a map with a matplotlib colormap and alpha-blend it over the image.

The one drawing path: every picture of a map over its image (run overlays and grid, compare
sheets, explain panels, the gallery, `attnviz.overlay`) goes through `blender`/`blend`/`overlay`,
and every one of them spreads the map over the pixels with `heat` — by the cells' receptive
fields when the map's layer has a measured `Geometry` (CNN layers), else bilinearly from block
centres (token grids: exact patches; --no-align). The same map at the same size gives the same
pixels everywhere."""
from __future__ import annotations

import difflib
import sys
from functools import lru_cache
from typing import Any, Callable

import numpy as np
from PIL import Image

import attnviz.render.colormap_tables as colormap_tables
from attnviz.images import to_rgb
from attnviz.geometry import Geometry, bilinear, resample   # bilinear: re-exported (one resize)
from attnviz.maps import is_flat, normalise

__all__ = ["output_size", "colormap_lut", "colorize", "bilinear", "heat", "fit", "blender", "blend", "overlay"]

_SUGGESTED = ("jet", "inferno", "viridis", "magma", "plasma", "turbo", "gray")


def output_size(width: int, height: int, size: int = 512) -> tuple[int, int]:
    """(w, h) with the longest side equal to `size`, aspect ratio kept, each side at least 1."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if size < 1:
        raise ValueError(f"output size must be positive, got {size}")
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """The (N, 3) uint8 lookup table of matplotlib colormap `name`; ValueError if unknown.

    matplotlib's own table, read from attnviz's disk cache when this process has not imported
    matplotlib (the CLI: ~0.2 s of start-up saved); see `colormap_tables`."""
    lut = None if _matplotlib_loaded() else colormap_tables.read(name)
    if lut is None:
        lut = _matplotlib_lut(name)
    lut = np.ascontiguousarray(lut, dtype=np.uint8)
    lut.setflags(write=False)
    return lut


def _matplotlib_loaded() -> bool:
    """Has this process imported matplotlib (then its registry, user colormaps included, is asked)?"""
    return "matplotlib" in sys.modules


def _matplotlib_lut(name: str) -> np.ndarray:
    """The table from matplotlib itself (imported here); a built-in colormap's goes to the disk cache."""
    import matplotlib
    try:
        cmap = matplotlib.colormaps[name]
    except (KeyError, ValueError):
        close = difflib.get_close_matches(name, list(matplotlib.colormaps), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown colormap {name!r}{hint}; valid names include {', '.join(_SUGGESTED)} "
            f"(any name in matplotlib.colormaps)"
        ) from None
    lut = np.ascontiguousarray(np.asarray(cmap(np.arange(cmap.N), bytes=True))[:, :3], dtype=np.uint8)
    # only built-ins: a name registered in one process may mean another table in the next
    if name in getattr(matplotlib.colormaps, "_builtin_cmaps", ()):
        colormap_tables.write(name, lut)
    return lut


def colorize(m01: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Map values in [0, 1] (shape (h, w)) to RGB colours (h, w, 3) uint8, as matplotlib would."""
    lut = colormap_lut(colormap)
    return lut[_indices(np.asarray(m01), len(lut))]


def _indices(x: np.ndarray, n: int) -> np.ndarray:
    """matplotlib's float -> index rule: floor(x * N), 1.0 to the last entry, NaN to the first."""
    x = np.nan_to_num(x.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    # x * N is exact in float32 for N a power of two (256), so floor matches the float64 rule
    idx = (np.clip(x, 0.0, 1.0) * np.float32(n)).astype(np.intp)
    return np.minimum(idx, n - 1, out=idx)


def _finite_indices(up: np.ndarray, n: int, stretch: bool) -> np.ndarray:
    """`_indices(normalise(up) if stretch else up, n)` as int32 for a finite `up`, computed in place
    (the same float32 operations, so the same colours, without the copies NaN handling needs)."""
    up = np.array(up, dtype=np.float32, copy=True) if up.dtype != np.float32 or not up.flags.writeable else up
    if stretch:
        lo, hi = float(up.min()), float(up.max())
        if not hi > lo:
            return np.zeros(up.shape, dtype=np.int32)
        np.subtract(up, np.float32(lo), out=up)
        np.divide(up, np.float32(hi - lo), out=up)
    np.clip(up, 0.0, 1.0, out=up)
    np.multiply(up, np.float32(n), out=up)
    idx = up.astype(np.int32)
    return np.minimum(idx, n - 1, out=idx)


def heat(m: np.ndarray, height: int, width: int, geometry: Geometry | None = None) -> np.ndarray:
    """Map `m` (h, w) spread over (height, width) pixels: by its cells' receptive fields when
    `geometry` has them and fits, else bilinear from block centres (see attnviz.geometry)."""
    arr = np.asarray(m, dtype=np.float32)
    if geometry is not None and geometry.fits(arr.shape):
        return resample(arr, height, width, geometry.drawn())
    return bilinear(arr, height, width)


def _unit(arr: np.ndarray, span: tuple[float, float] | None) -> np.ndarray:
    """Display values in [0, 1] before resampling: min–max of the map, or `span` (lo, hi) shared
    with other maps; a flat map is one colour (0, or its mean on a shared span)."""
    flat = is_flat(arr)
    if span is None:
        return np.zeros_like(arr) if flat else normalise(arr)          # float noise: one colour
    lo, hi = float(span[0]), float(span[1])
    finite = np.isfinite(arr)
    filled = np.where(finite, arr, lo)
    if flat and finite.any():
        filled = np.full_like(arr, float(arr[finite].mean()))
    return ((filled - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)).astype(np.float32)


def _spread(arr: np.ndarray, geometry: Geometry | None) -> bool:
    """Is this (non-flat) map drawn by its cells' receptive fields?"""
    return geometry is not None and geometry.fits(arr.shape) and geometry.fields and not is_flat(arr)


def fit(image: Image.Image, size: int = 512) -> Image.Image:
    """The image as RGB, resized so that its longest side is `size` (LANCZOS down, BICUBIC up)."""
    rgb = to_rgb(image)
    target = output_size(rgb.width, rgb.height, size)
    if target == rgb.size:
        return rgb.copy()
    if target[0] <= rgb.width and target[1] <= rgb.height:
        return rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb.resize(target, Image.Resampling.BICUBIC)


def _check_map(m: np.ndarray) -> np.ndarray:
    arr = np.asarray(m, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"an attention map must be a non-empty (h, w) array, got shape {arr.shape}")
    return arr


@lru_cache(maxsize=8)
def _blend_table(colormap: str, alpha: float) -> np.ndarray:
    """(256 · N · 3,) uint8: rint((1 − α)·v + α·lut[i, c]) for every byte v, colour i, channel c.

    The same float32 arithmetic a pixel-by-pixel blend does, done once for all 256 values."""
    lut = alpha * colormap_lut(colormap).astype(np.float32)                 # (N, 3)
    under = (1.0 - alpha) * np.arange(256, dtype=np.float32)                # (256,)
    table = np.clip(np.rint(under[:, None, None] + lut[None]), 0, 255).astype(np.uint8)
    table.setflags(write=False)
    return table.reshape(-1)                                                 # index (v·N + i)·3 + c


@lru_cache(maxsize=8)
def _blend_planes(colormap: str, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_blend_table` split by channel: three (256 · N,) uint8 tables, each indexed by v·N + i."""
    n = len(colormap_lut(colormap))
    table = _blend_table(colormap, alpha).reshape(256 * n, 3)
    planes = tuple(np.ascontiguousarray(table[:, c]) for c in range(3))
    for plane in planes:
        plane.setflags(write=False)
    return planes


def blender(base: Image.Image, colormap: str = "jet", alpha: float = 0.5) -> Callable[..., Image.Image]:
    """`blend` for many maps over one sized image: the image's part of the lookup is done once."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = to_rgb(base)
    n = len(colormap_lut(colormap))
    planes = _blend_planes(colormap, float(alpha))
    # one channel at a time, each a contiguous (H, W) gather, merged by PIL: half the time of one
    # interleaved (H, W, 3) gather; uint16 offsets where every v·N + i fits (N ≤ 256: all built-ins)
    index = np.uint16 if 256 * n <= 1 << 16 else np.intp
    where = [np.asarray(base.getchannel(c), dtype=index) * index(n) for c in range(3)]   # v·N per pixel
    size = base.size

    def paint(m: np.ndarray, geometry: Geometry | None = None, *,
              span: tuple[float, float] | None = None) -> Image.Image:
        m, geometry = _map_of(m, geometry)
        arr = _check_map(m)
        up = heat(_unit(arr, span), base.height, base.width, geometry)   # (H, W)
        spread = span is None and _spread(arr, geometry)
        if np.isfinite(arr).all():     # no NaN can reach the pixels: the same arithmetic, in place
            colour = _finite_indices(up, n, spread)
        else:
            if spread:
                # receptive fields overlap and lower the peaks (demo CBAM at 24×24: 0.17–0.62 of the
                # map's range): the drawn heat, not only the cells, spans the colours, so peaks stay red
                up = normalise(up)
            colour = _indices(up, n)
        colour = colour.astype(index, copy=False)          # every index < N ≤ the offsets' range
        out = np.empty((3, size[1], size[0]), dtype=np.uint8)
        at = np.empty_like(colour)
        for c in range(3):
            np.add(where[c], colour, out=at)
            # np.take without bounds checks (every index is inside the table): 2× fancy indexing's speed
            np.take(planes[c], at, out=out[c], mode="clip")
        return Image.merge("RGB", [Image.frombuffer("L", size, out[c], "raw", "L", 0, 1) for c in range(3)])
    return paint


def _map_of(m: Any, geometry: Geometry | None) -> tuple[np.ndarray, Geometry | None]:
    """An AttentionMap stands for its data and its geometry (an explicit `geometry` wins)."""
    if hasattr(m, "data") and hasattr(m, "geometry") and not isinstance(m, np.ndarray):
        return m.data, geometry if geometry is not None else m.geometry
    return m, geometry


def blend(base: Image.Image, m: np.ndarray, colormap: str = "jet", alpha: float = 0.5,
          geometry: Geometry | None = None, *, span: tuple[float, float] | None = None) -> Image.Image:
    """Overlay raw map `m` (or an AttentionMap) on an already-sized RGB image: normalise (or scale
    by `span`), spread over the pixels (`heat`: by receptive field when a `geometry` is given),
    colourise, blend. A flat map is one colour."""
    return blender(base, colormap, alpha)(m, geometry, span=span)


def overlay(
    image: Image.Image, m: np.ndarray, size: int = 512, colormap: str = "jet", alpha: float = 0.5,
    *, geometry: Geometry | None = None, span: tuple[float, float] | None = None,
) -> Image.Image:
    """The image resized to `output_size` with map `m` (raw, feature resolution; or an AttentionMap,
    drawn with its own geometry) blended over it — the pixels `attnviz run` writes for that map."""
    colormap_lut(colormap)  # fail fast on a bad name, before any resizing
    return blend(fit(image, size), m, colormap, alpha, geometry, span=span)
