"""Artifact tokens: patch tokens of outlying norm (Darcet et al. 2023, "Vision Transformers Need Registers").

Rule: per image, the L2 norm of each patch token at the captured layer; a token is an outlier
when its norm > median + K·σ̂, σ̂ = 1.4826·MAD (the normal-consistent median absolute deviation),
K = `OUTLIER_K`. Prefix tokens (class, registers) are never patches, so never listed or drawn.
`--outliers`: keep (the map as computed), mask (NaN there), interpolate (the mean of its
non-outlier 8-neighbours).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["OUTLIER_K", "RULE", "token_norms", "outlier_cells", "apply_outliers"]

OUTLIER_K = 6.0
RULE = f"L2 norm > median + {OUTLIER_K:g}·1.4826·MAD over the image's patch tokens"


def token_norms(tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """L2 norms of the patch tokens (prefix tokens dropped): (B, prefix + H·W, C) -> (B, H, W)."""
    patches = tokens[:, prefix:, :].float()
    return patches.norm(dim=2).reshape(tokens.shape[0], *grid)


def outlier_cells(norms: torch.Tensor) -> list[list[list[int]]]:
    """Per image, the (row, col) cells whose norm is an outlier by `RULE`: (B, H, W) -> B lists."""
    out = []
    for n in norms:
        flat = n.flatten().double()
        med = flat.median()
        mad = (flat - med).abs().median() * 1.4826
        if not mad > 0:                         # a flat image of norms has no outlier
            out.append([])
            continue
        idx = torch.nonzero(n.double() > med + OUTLIER_K * mad)
        out.append([[int(r), int(c)] for r, c in idx])
    return out


def apply_outliers(m: np.ndarray, cells: list[list[int]], mode: str) -> np.ndarray:
    """`m` (…, H, W) with the outlier cells kept, masked (NaN) or replaced by their neighbours' mean."""
    if mode == "keep" or not cells:
        return m
    out = np.array(m, dtype=np.float32, copy=True)
    bad = np.zeros(m.shape[-2:], dtype=bool)
    for r, c in cells:
        bad[r, c] = True
    h, w = bad.shape
    for r, c in cells:
        if mode == "mask":
            out[..., r, c] = np.nan
            continue
        rows = slice(max(r - 1, 0), min(r + 2, h))
        cols = slice(max(c - 1, 0), min(c + 2, w))
        keep = ~bad[rows, cols]
        if keep.any():
            out[..., r, c] = m[..., rows, cols][..., keep].mean(axis=-1)
    return out
