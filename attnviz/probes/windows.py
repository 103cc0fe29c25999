"""Attention folded into the batch: weights kept per group, and where each group's tokens lie on the grid.

Two layouts, each recognised from the running modules' own attributes (never assumed):
- "windows": Swin-style non-overlapping windows, row-major, batch outermost (timm / HF Swin
  `window_size` + `shift_size`; timm MaxViT `partition_block` with its `partition_size`);
- "dilated": the token at (y, x) belongs to group (y mod s_y, x mod s_x), position (y div s_y,
  x div s_x) — timm MobileViT's unfold of 2×2-pixel patches (`patch_size`, `patch_area`) and
  timm MaxViT's grid partition (`partition_block` False).
Anything else folded into the batch is not drawn (`window_attention` says why).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WindowAttention", "swin_window_weights", "window_attention"]


@dataclass
class WindowAttention:
    """Swin window attention of one call: weights per window and the geometry to place them."""

    weights: torch.Tensor        # (B, nW, heads, T, T) float32, T = wh·ww, windows row-major
    grid: tuple[int, int]        # (H, W) token grid of the layer
    padded: tuple[int, int]      # (Hp, Wp) after padding to a multiple of the window
    window: tuple[int, int]      # (wh, ww)
    shift: tuple[int, int]       # cyclic shift actually applied (0 where the window covers the grid)
    layout: str = "windows"      # "windows" (contiguous) or "dilated" (window = the group's token grid)

    def query_map(self, y: int, x: int) -> torch.Tensor:
        """Weights that the token at (y, x) gives every token of the grid: (B, heads, H, W)."""
        (H, W), (Hp, Wp), (wh, ww), (sh, sw) = self.grid, self.padded, self.window, self.shift
        if not (0 <= y < H and 0 <= x < W):
            raise IndexError(f"query ({y}, {x}) outside the {H}x{W} grid")
        if self.layout == "dilated":     # group = offset inside an (sy, sx) cell, token = the cell
            sy, sx = H // wh, W // ww
            row = self.weights[:, (y % sy) * sx + x % sx, :, (y // sy) * ww + x // sx]   # (B, heads, T)
            out = row.new_zeros(row.shape[0], row.shape[1], H, W)
            out[:, :, y % sy::sy, x % sx::sx] = row.reshape(row.shape[0], row.shape[1], wh, ww)
            return out
        ry, rx = (y - sh) % Hp, (x - sw) % Wp            # position after the cyclic shift
        wid = (ry // wh) * (Wp // ww) + rx // ww          # window index
        row = self.weights[:, wid, :, (ry % wh) * ww + rx % ww]  # (B, heads, T)
        ky = ((ry // wh) * wh + torch.arange(wh) + sh) % Hp      # window rows, unshifted
        kx = ((rx // ww) * ww + torch.arange(ww) + sw) % Wp
        out = row.new_zeros(row.shape[0], row.shape[1], Hp, Wp)  # (B, heads, Hp, Wp)
        out[:, :, ky[:, None], kx[None, :]] = row.reshape(row.shape[0], row.shape[1], wh, ww)
        return out[:, :, :H, :W]


@torch.no_grad()
def swin_window_weights(input: torch.Tensor, qkv_weight: torch.Tensor,
                        relative_position_bias: torch.Tensor, window_size: Sequence[int],
                        num_heads: int, shift_size: Sequence[int], qkv_bias: torch.Tensor | None = None,
                        logit_scale: torch.Tensor | None = None, **_: Any) -> WindowAttention:
    """The softmax of torchvision's `shifted_window_attention`, step for step, kept per window."""
    B, H, W, C = input.shape
    wh, ww = window_size
    x = F.pad(input, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
    _, Hp, Wp, _ = x.shape
    sh, sw = (0 if wh >= Hp else shift_size[0]), (0 if ww >= Wp else shift_size[1])
    if sh + sw > 0:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    nW, T = (Hp // wh) * (Wp // ww), wh * ww
    x = x.view(B, Hp // wh, wh, Wp // ww, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B * nW, T, C)
    if logit_scale is not None and qkv_bias is not None:  # v2: no key bias
        qkv_bias = qkv_bias.clone()
        qkv_bias[qkv_bias.numel() // 3: 2 * qkv_bias.numel() // 3].zero_()
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(B * nW, T, 3, num_heads, C // num_heads)
    q, k = qkv.permute(2, 0, 3, 1, 4)[:2]  # each (B·nW, heads, T, hd)
    if logit_scale is not None:  # v2: cosine attention
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * (C // num_heads) ** -0.5).matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias  # (B·nW, heads, T, T)
    if sh + sw > 0:  # tokens from different regions of a shifted window may not mix
        region = x.new_zeros((Hp, Wp))
        for i, hs in enumerate(((0, -wh), (-wh, -sh), (-sh, None))):
            for j, ws in enumerate(((0, -ww), (-ww, -sw), (-sw, None))):
                region[hs[0]:hs[1], ws[0]:ws[1]] = 3 * i + j
        region = region.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(nW, T)
        mask = region.unsqueeze(1) - region.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)  # (nW, T, T)
        attn = (attn.view(B, nW, num_heads, T, T) + mask.unsqueeze(1).unsqueeze(0)).view(-1, num_heads, T, T)
    weights = F.softmax(attn, dim=-1).view(B, nW, num_heads, T, T)
    return WindowAttention(weights.float().cpu(), (H, W), (Hp, Wp), (wh, ww), (sh, sw))



def _pair(v: Any) -> tuple[int, int] | None:
    """An int or a 2-sequence of ints as (a, b); anything else None."""
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    return None


def _frames_attr(running: Sequence[tuple[nn.Module, tuple[int, ...]]], attr: str) -> list[tuple[Any, nn.Module, tuple]]:
    """(value, module, input shape) of every running module that has `attr`, innermost first."""
    return [(getattr(m, attr), m, shape) for m, shape in reversed(running) if hasattr(m, attr)]


def window_attention(weights: torch.Tensor, batch: int, running: Sequence[tuple[nn.Module, tuple[int, ...]]]
                     ) -> WindowAttention | str:
    """Attention folded into the batch (B·nW, heads, T, T) as a WindowAttention, or why it is not drawn.

    `running`: the running modules with their input shapes, outermost first. The layout comes
    from their attributes: timm MobileViT (`patch_area`), timm MaxViT (`partition_block`), timm
    and HF Swin (`window_size`, `shift_size`); windows are row-major, batch outermost.
    """
    folded, heads, T, S = weights.shape
    if T != S:
        return (f"each group of {T} queries sees {S} keys (overlapping key windows, as in halo attention), "
                f"with heads or blocks folded into the batch: layout not verified, not drawn")
    nW = folded // batch
    w = lambda: weights.detach().float().reshape(batch, nW, heads, T, T).cpu()   # noqa: E731
    for area, m, shape in _frames_attr(running, "patch_area"):        # timm MobileViT: unfolded patches
        ph, pw = _pair(getattr(m, "patch_size", None)) or (0, 0)
        if area == nW and len(shape) == 4 and ph and shape[2] % ph == 0 and shape[3] % pw == 0 \
                and (shape[2] // ph) * (shape[3] // pw) == T:
            return WindowAttention(w(), (shape[2], shape[3]), (shape[2], shape[3]),
                                   (shape[2] // ph, shape[3] // pw), (0, 0), "dilated")
        return f"{nW} groups of {T} tokens do not fit {type(m).__name__}'s {ph}×{pw} patches of a {shape} input"
    for block, m, shape in _frames_attr(running, "partition_block"):  # timm MaxViT: block or grid partition
        ps = _pair(getattr(m, "partition_size", None))
        if ps is None or len(shape) != 4 or ps[0] * ps[1] != T:
            return f"{type(m).__name__}: partition {ps} does not fit {T} tokens of a {shape} input"
        H, W = shape[1], shape[2]                                         # MaxViT's partitions are NHWC
        if H % ps[0] or W % ps[1] or (H // ps[0]) * (W // ps[1]) != nW:
            return f"{type(m).__name__}: {nW} partitions of {ps} do not tile a {H}×{W} grid"
        if block:
            return WindowAttention(w(), (H, W), (H, W), ps, (0, 0))
        return WindowAttention(w(), (H, W), (H, W), ps, (0, 0), "dilated")
    sizes = [_pair(getattr(m, "window_size", None)) for m, _ in reversed(running)]
    window = next((s for s in sizes if s is not None and s[0] * s[1] == T), None)
    if window is None:
        return (f"{nW} groups of {T} tokens folded into the batch, and no running module says their "
                f"layout (window_size, patch_area, partition_size): not drawn")
    n = math.isqrt(nW)
    if n * n != nW:
        return f"{nW} windows per image do not tile a square grid"
    padded = (n * window[0], n * window[1])
    shifts = [_pair(getattr(m, "shift_size", None)) for m, _ in reversed(running)]
    shift = next((s for s in shifts if s is not None), (0, 0))
    # a window that covers the whole grid is never shifted (as every Swin implementation does)
    shift = tuple(0 if w_ >= p else s for s, w_, p in zip(shift, window, padded))
    return WindowAttention(w(), padded, padded, window, shift)   # type: ignore[arg-type]
