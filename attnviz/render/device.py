"""The overlay drawing of `render.overlay` in torch, on the device the model runs on (--device cuda).

`DevicePainter` is `blender` with every pixel-sized step — the spread over the pixels (`heat`: by
receptive field, by measured centres, or bilinear), the stretch, the colour lookup and the blend —
done by torch ops on the device, the same float32/float64 arithmetic as the numpy path step by
step, so that on the CPU it gives the numpy pictures (tests/test_device.py: ≤ 1 grey level). Only the
map itself (h × w cells) and the fitted photo come from the host; the picture stays on the device
until it is encoded (`report.atomic.save_pixels`: nvJPEG for --format jpg on CUDA). The band is
one strip drawn once per width by `render.band` and put on top on the device.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image

from attnviz.geometry import Geometry, axis_samples, bilinear_taps, drawn_centres, unit_rows
from attnviz.render.band import band_height, banded
from attnviz.render.overlay import _blend_table, _map_of, _check_map, _spread, _unit, colormap_lut

__all__ = ["DevicePainter", "device_heat", "band_strip", "on_device", "to_image"]


def on_device(device: Any) -> bool:
    """Should pictures be drawn by torch on `device` (a CUDA device; the CPU keeps numpy)?"""
    return device is not None and torch.device(device).type == "cuda"


def _put(a: np.ndarray, device: torch.device) -> torch.Tensor:
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


@lru_cache(maxsize=256)
def _cached(kind: str, key: Any, device: torch.device) -> Any:
    """The host tables of one axis (kernels, taps, samples), uploaded once per device."""
    if kind == "taps":
        return tuple(_put(np.asarray(v), device) for v in bilinear_taps(*key))
    if kind == "unit":
        a = unit_rows(*key)
        return None if a is None else _put(a, device)
    if kind == "kernel":
        axis, extent, size = key
        return _put(axis.kernel(extent, size, extent), device)
    if kind == "samples":
        n, extent, geometry, axis = key
        i0, i1, t = axis_samples(drawn_centres(n, extent, geometry, axis), extent)
        return _put(i0.astype(np.int64), device), _put(i1.astype(np.int64), device), _put(t, device)
    if kind == "table":
        return _put(_blend_table(*key), device)
    raise ValueError(kind)


def _bilinear(m: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`geometry.bilinear` in torch (the same gathers and float32 blends)."""
    i0, i1, w0, w1 = _cached("taps", (m.shape[1], width), m.device)
    cols = m[:, i0] * w0 + m[:, i1] * w1
    j0, j1, v0, v1 = _cached("taps", (m.shape[0], height), m.device)
    return cols[j0] * v0[:, None] + cols[j1] * v1[:, None]


def _gather(m: torch.Tensor, axis: int, samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`geometry._gather` in torch (float64 weights, one cell where t is 0 or 1)."""
    i0, i1, t = samples
    a, b = m.index_select(axis, i0), m.index_select(axis, i1)
    t = t.reshape([-1, 1] if axis == 0 else [1, -1])
    return torch.where(t <= 0, a.double(), torch.where(t >= 1, b.double(), (1 - t) * a + t * b))


def _by_fields(m: torch.Tensor, height: int, width: int, g: Geometry) -> torch.Tensor:
    """`geometry._by_fields` in torch (float64)."""
    dev = m.device
    valid = torch.isfinite(m)
    if bool(valid.all()):
        wy = _cached("unit", (g.rows, height, g.input_size), dev)
        wx = _cached("unit", (g.cols, width, g.input_size, True), dev)
        if wy is not None and wx is not None:
            return (wy @ m.double()) @ wx
    ky = _cached("kernel", (g.rows, height, g.input_size), dev)
    kx = _cached("kernel", (g.cols, width, g.input_size), dev)
    num = ky @ torch.where(valid, m, 0.0).double() @ kx.T
    den = torch.outer(ky.sum(1), kx.sum(1)) if bool(valid.all()) else ky @ valid.double() @ kx.T
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, 1.0), torch.full_like(num, float("nan")))


def device_heat(m: torch.Tensor, height: int, width: int, geometry: Geometry | None = None) -> torch.Tensor:
    """`overlay.heat` (and `geometry.resample`) for a float32 map on any device: (height, width) float32."""
    h, w = m.shape
    if geometry is None or not geometry.fits((h, w)):
        return _bilinear(m, height, width)
    g = geometry.drawn()
    if g.fields:
        return _by_fields(m, height, width, g).float()
    rows = _gather(m, 0, _cached("samples", (h, height, g, "y"), m.device))
    return _gather(rows, 1, _cached("samples", (w, width, g, "x"), m.device)).float()


def _colour_indices(up: torch.Tensor, n: int, stretch: bool) -> torch.Tensor:
    """`overlay._indices(normalise(up) if stretch else up, n)` in torch: int64 (H, W)."""
    if stretch:
        finite = torch.isfinite(up)
        if not bool(finite.any()):
            return torch.zeros(up.shape, dtype=torch.int64, device=up.device)
        lo, hi = float(up[finite].min()), float(up[finite].max())
        if not hi > lo:
            return torch.zeros(up.shape, dtype=torch.int64, device=up.device)
        one = torch.ones((), dtype=torch.float32, device=up.device)
        up = (torch.where(finite, up, one * lo) - one * lo) / (one * (hi - lo))
    x = torch.nan_to_num(up, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0) * float(n)
    return x.to(torch.int64).clamp_(max=n - 1)


class DevicePainter:
    """`overlay.blender(base, colormap, alpha)` on `device`: paint(m, geometry, span=…) returns the
    picture as an (H, W, 3) uint8 tensor on the device (`to_image` brings it to the host)."""

    def __init__(self, base: Image.Image | np.ndarray, colormap: str = "jet", alpha: float = 0.5,
                 device: Any = "cpu") -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.device = torch.device(device)
        self.n = len(colormap_lut(colormap))
        self.table = _cached("table", (colormap, float(alpha)), self.device)
        self.base = _put(np.asarray(base.convert("RGB") if isinstance(base, Image.Image) else base,
                                    dtype=np.uint8), self.device)                      # (H, W, 3)
        self.where = (self.base.to(torch.int64) * (3 * self.n)
                      + torch.arange(3, device=self.device))                        # offsets into the table

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the pictures."""
        return int(self.base.shape[1]), int(self.base.shape[0])

    def __call__(self, m: Any, geometry: Geometry | None = None, *,
                 span: tuple[float, float] | None = None) -> torch.Tensor:
        """The overlay of map `m` (raw (h, w) cells, or an AttentionMap) as (H, W, 3) uint8 on the device."""
        m, geometry = _map_of(m, geometry)
        arr = _check_map(m)
        unit = _put(_unit(arr, span).astype(np.float32), self.device)              # h × w cells: tiny
        up = device_heat(unit, *self.base.shape[:2], geometry)
        colour = _colour_indices(up, self.n, span is None and _spread(arr, geometry))
        return self.table[self.where + (colour * 3)[..., None]]


@lru_cache(maxsize=16)
def _strip(width: int, note: str) -> np.ndarray:
    return np.asarray(banded(Image.new("RGB", (width, 1)), note))[:band_height(width)].copy()


def band_strip(picture: torch.Tensor, note: str) -> torch.Tensor:
    """`band.banded` for an (H, W, 3) uint8 tensor: the band's rows (drawn once per width) on top."""
    strip = _cached_strip(int(picture.shape[1]), note, picture.device)
    return torch.cat([strip, picture], dim=0)


@lru_cache(maxsize=16)
def _cached_strip(width: int, note: str, device: torch.device) -> torch.Tensor:
    return _put(_strip(width, note), device)


def to_image(picture: torch.Tensor) -> Image.Image:
    """An (H, W, 3) uint8 tensor (any device) as a PIL RGB image."""
    return Image.fromarray(picture.cpu().numpy(), "RGB")
