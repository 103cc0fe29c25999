"""Is an image one of the demo world's scenes? A colour test the demo model uses to warn once.

A scene is grey-ish clutter (saturation ≤ ~0.4), objects in the 4 object colours and thin strokes
in those or 4 extra hues (attnviz/zoo/world.py); a photo has large saturated areas in other hues.
"""
from __future__ import annotations

import numpy as np

from attnviz.zoo.world import _EXTRA_RGB, _OBJECT_RGB

__all__ = ["OFF_PALETTE_SAT", "OFF_PALETTE_DIST", "OBJECT_DIST", "MAX_OFF_PALETTE", "MIN_OBJECT",
           "palette_shares", "unlike_world"]

# Measured on 1,800 scenes (600 seeds as PNG, as JPEG q75 and upscaled
# to 384 px): off-palette share ≤ 0.164, object share ≥ 0.0061; on 7 photos and pictures (the
# sample images, matplotlib's grace_hopper, logo2 and Minduka): off-palette share ≥ 0.268.
OFF_PALETTE_SAT, OFF_PALETTE_DIST, OBJECT_DIST = 0.45, 50.0, 45.0
MAX_OFF_PALETTE, MIN_OBJECT = 0.2, 0.004
_PALETTE = np.concatenate([_OBJECT_RGB, _EXTRA_RGB])


def palette_shares(rgb: np.ndarray) -> tuple[float, float]:
    """(object share, off-palette share) of an (H, W, 3) image in 0…255: the share of pixels within
    OBJECT_DIST (per channel) of an object colour, and of saturated pixels (saturation >
    OFF_PALETTE_SAT) farther than OFF_PALETTE_DIST from every colour the world draws saturated."""
    a = np.asarray(rgb, np.float32)
    hi, lo = a.max(-1), a.min(-1)
    sat = (hi - lo) / np.maximum(hi, 1.0)
    dist = np.abs(a[:, :, None, :] - _PALETTE[None, None]).max(-1)          # (H, W, 8) L∞
    objects = float((dist[..., :len(_OBJECT_RGB)].min(-1) <= OBJECT_DIST).mean())
    off = float(((sat > OFF_PALETTE_SAT) & (dist.min(-1) > OFF_PALETTE_DIST)).mean())
    return objects, off


def unlike_world(rgb: np.ndarray) -> str | None:
    """Why an image is unlike the scenes the demo model knows, or None when it could be one."""
    objects, off = palette_shares(rgb)
    if off > MAX_OFF_PALETTE:
        return (f"{off:.0%} of its pixels are saturated colours the demo world never draws "
                f"(generated scenes stay under {MAX_OFF_PALETTE:.0%})")
    if objects < MIN_OBJECT:
        return "it has no patch in the 4 object colours (red, green, blue, yellow) the demo objects are painted in"
    return None
