"""Scores of maps, one definition each: peak, pointing game, energy in box, rank correlation.

Used by `attnviz evaluate`, the demo's held-out figures, the sanity check and the tests alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from attnviz.geometry import Geometry
from attnviz.maps import cell_centre, normalise, upsample

__all__ = ["Box", "SANITY_LIMIT", "peak", "pointing_hit", "energy_in_boxes", "chance_rate", "ranks",
           "spearman"]

SANITY_LIMIT = 0.3   # |rank correlation| with the randomised model's map at or above this: flagged


@dataclass(frozen=True)
class Box:
    """A ground-truth box (x0, y0, x1, y1) in image pixels, with an optional label ("the blue ring")."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str | None = None


def peak(m: np.ndarray, size: tuple[int, int], geometry: Geometry | None = None) -> list[float]:
    """Centre (x, y), in pixels of an image of `size` (w, h), of the map's largest finite cell
    (where its layer's `geometry` places that cell, when given)."""
    finite = np.isfinite(m)
    if not finite.any():
        return cell_centre((0, 0), size, m.shape, geometry)
    row, col = np.unravel_index(int(np.argmax(np.where(finite, m, -np.inf))), m.shape)
    return cell_centre((int(row), int(col)), size, m.shape, geometry)


def pointing_hit(point: Sequence[float], boxes: Sequence[Box], tolerance: float = 0.0) -> bool:
    """Is the point (x, y) inside any box (closed), within `tolerance` pixels?"""
    x, y = point
    return any(b.x0 - tolerance <= x <= b.x1 + tolerance and b.y0 - tolerance <= y <= b.y1 + tolerance
               for b in boxes)


def energy_in_boxes(m: np.ndarray, size: tuple[int, int], boxes: Sequence[Box],
                    geometry: Geometry | None = None) -> float:
    """Share of the display-normalised map, upsampled to the image (w, h) (by its layer's
    `geometry`, when given), that falls inside the boxes."""
    w, h = size
    up = upsample(normalise(m), h, w, geometry)
    inside = np.zeros((h, w), dtype=bool)
    for b in boxes:
        inside[max(int(b.y0), 0):int(np.ceil(b.y1)), max(int(b.x0), 0):int(np.ceil(b.x1))] = True
    total = float(up.sum())
    return float(up[inside].sum() / total) if total > 0 else 0.0


def chance_rate(shape: tuple[int, int], size: tuple[int, int], boxes: Sequence[Box],
                tolerance: float = 0.0, geometry: Geometry | None = None) -> float:
    """Hit rate of a uniformly random cell: the share of cell centres inside any box."""
    return float(np.mean([pointing_hit(cell_centre((i, j), size, shape, geometry), boxes, tolerance)
                          for i in range(shape[0]) for j in range(shape[1])]))


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as Spearman's rho needs)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (first + (counts - 1) / 2)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (0 when either is constant)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])
