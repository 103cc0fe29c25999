"""Heatmap overlays: colour a map with a matplotlib colormap and alpha-blend it over the image."""
from __future__ import annotations

import difflib
from functools import lru_cache

import matplotlib
import numpy as np
from PIL import Image

from attnviz.images import to_rgb
from attnviz.maps import normalise, upsample

__all__ = ["output_size", "colormap_lut", "colorize", "fit", "blend", "overlay"]

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
    """The (N, 3) uint8 lookup table of matplotlib colormap `name`; ValueError if unknown."""
    try:
        cmap = matplotlib.colormaps[name]
    except (KeyError, ValueError):
        close = difflib.get_close_matches(name, list(matplotlib.colormaps), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown colormap {name!r}{hint}; valid names include {', '.join(_SUGGESTED)} "
            f"(any name in matplotlib.colormaps)"
        ) from None
    lut = np.asarray(cmap(np.arange(cmap.N), bytes=True))[:, :3]
    lut = np.ascontiguousarray(lut, dtype=np.uint8)
    lut.setflags(write=False)
    return lut


def colorize(m01: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Map values in [0, 1] (shape (h, w)) to RGB colours (h, w, 3) uint8, as matplotlib would."""
    lut = colormap_lut(colormap)
    x = np.nan_to_num(np.asarray(m01, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    # matplotlib's float -> index rule: floor(x * N), with 1.0 mapped to the last entry
    idx = np.clip((np.clip(x, 0.0, 1.0) * len(lut)).astype(np.int64), 0, len(lut) - 1)
    return lut[idx]


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


def blend(base: Image.Image, m: np.ndarray, colormap: str = "jet", alpha: float = 0.5) -> Image.Image:
    """Overlay raw map `m` on an already-sized RGB image: normalise, upsample, colourise, blend."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = to_rgb(base)
    m01 = normalise(_check_map(m))
    up = np.clip(upsample(m01, base.height, base.width), 0.0, 1.0)   # (H, W) order
    colour = colorize(up, colormap).astype(np.float32)
    img = np.asarray(base, dtype=np.float32)
    out = (1.0 - alpha) * img + alpha * colour
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def overlay(
    image: Image.Image, m: np.ndarray, size: int = 512, colormap: str = "jet", alpha: float = 0.5
) -> Image.Image:
    """The image resized to `output_size` with map `m` (raw, feature resolution) blended over it."""
    colormap_lut(colormap)  # fail fast on a bad name, before any resizing
    return blend(fit(image, size), m, colormap, alpha)
