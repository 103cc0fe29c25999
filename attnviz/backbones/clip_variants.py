"""Training-free CLIP localisation: the image tower's last block as MaskCLIP, ClearCLIP, SCLIP or NACLIP compute it.

Notation (README, CLIP section): for the last block, h = ln_1(x); per head q, k, v from its in-projection;
s = d_head^-½; O(A) = the block's attention branch with A as its attention: out_proj(A·v), through the
block's own head scale, inner norm, ln_attn and LayerScale ls_1, exactly as the block computes them.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnviz.errors import AttnvizError

__all__ = ["VARIANTS", "ALL", "CHOICES", "PARAMS", "NACLIP_SIGMA", "variants_of", "neighbourhood",
           "mixing", "last_block"]

VARIANTS = ("value", "clear", "sclip", "naclip", "plain")   # plain: the block's own output
ALL = "all"                                                 # every variant, side by side
CHOICES = (*VARIANTS, ALL)
NACLIP_SIGMA = 5.0                                          # NACLIP's Gaussian, in patches (its default)

# what the manifest records per map: the method and its parameters
PARAMS: dict[str, dict[str, Any]] = {
    "value": {"method": "MaskCLIP", "attention": "I (each patch's own value)", "residual": True, "mlp": True},
    "clear": {"method": "ClearCLIP", "attention": "softmax(s q qT)", "residual": False, "mlp": False},
    "sclip": {"method": "SCLIP", "attention": "softmax(s q qT) + softmax(s k kT)", "residual": True, "mlp": True},
    "naclip": {"method": "NACLIP", "attention": "softmax(s k kT + Omega)", "sigma": NACLIP_SIGMA,
               "residual": False, "mlp": False},
    "plain": {"method": "CLIP", "attention": "softmax(s q kT) (the block's own)", "residual": True, "mlp": True},
}


def variants_of(choice: str) -> tuple[str, ...]:
    """The variants a --clip-variant choice draws: the one named, or all of them for `all`."""
    if choice == ALL:
        return VARIANTS
    if choice not in VARIANTS:
        raise AttnvizError(f"unknown CLIP map variant {choice!r}; use one of {', '.join(CHOICES)}")
    return (choice,)


def neighbourhood(grid: tuple[int, int], sigma: float = NACLIP_SIGMA) -> torch.Tensor:
    """NACLIP's Ω (1+N, 1+N): exp(-‖p_i - p_j‖² / 2σ²) between patch positions, 0 in the class-token row and column."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    p = torch.stack([ys.flatten(), xs.flatten()], dim=-1).double()          # (N, 2) row-major
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)                              # (N, N)
    omega = torch.zeros(1 + h * w, 1 + h * w, dtype=torch.float64)
    omega[1:, 1:] = torch.exp(-d2 / (2 * sigma ** 2))
    return omega


def _heads(block: nn.Module, h: torch.Tensor, qk: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head q, k, v (B, H, L, d) of the block's attention from h = ln_1(x) (B, L, D); `qk`: q and k are used."""
    attn = block.attn
    B, L, D = h.shape
    if isinstance(attn, nn.MultiheadAttention):
        if attn.bias_k is not None:
            raise AttnvizError("CLIP variants: attention with extra key/value biases (add_bias_kv) is not supported")
        ws = attn.in_proj_weight.chunk(3) if attn.in_proj_weight is not None else \
            (attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight)
    else:                                         # open_clip's own Attention (CustomResidualAttentionBlock)
        if qk and getattr(attn, "logit_scale", None) is not None:
            raise AttnvizError("CLIP variants are defined for dot-product attention; this tower uses "
                               "scaled-cosine attention: use --clip-variant value or plain")
        ws = attn.in_proj_weight.chunk(3)
    bs = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None,) * 3
    q, k, v = (F.linear(h, w, b).view(B, L, attn.num_heads, -1).transpose(1, 2) for w, b in zip(ws, bs))
    ln_q, ln_k = getattr(attn, "ln_q", None), getattr(attn, "ln_k", None)   # open_clip qk_norm
    return (ln_q(q) if ln_q is not None else q), (ln_k(k) if ln_k is not None else k), v


def _branch(block: nn.Module, o: torch.Tensor) -> torch.Tensor:
    """The attention branch after A·v, as the block computes it: (B, H, L, d) -> (B, L, D)."""
    attn = block.attn
    B, H, L, d = o.shape
    head_scale = getattr(attn, "head_scale", None)                # custom blocks only
    if head_scale is not None:
        o = o * head_scale.view(1, H, 1, 1)
    o = o.transpose(1, 2).reshape(B, L, H * d)
    if hasattr(attn, "ln_inner"):
        o = attn.ln_inner(o)
    o = attn.out_proj(o)
    if hasattr(block, "ln_attn"):
        o = block.ln_attn(o)
    return block.ls_1(o)                                          # LayerScale (Identity without it)


def mixing(variant: str, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The attention A (B, H, L, L) a variant puts in place of softmax(s q kᵀ)."""
    s = q.shape[-1] ** -0.5
    if variant == "clear":
        return torch.softmax(s * q @ q.transpose(-1, -2), dim=-1)
    if variant == "sclip":
        return torch.softmax(s * q @ q.transpose(-1, -2), dim=-1) + torch.softmax(s * k @ k.transpose(-1, -2), dim=-1)
    if variant == "naclip":                       # Ω is added unscaled to the logits, as NACLIP's code does
        omega = neighbourhood(grid).to(k.device, k.dtype)
        return torch.softmax(s * k @ k.transpose(-1, -2) + omega, dim=-1)
    raise AttnvizError(f"CLIP variant {variant!r} has no attention of its own")


def last_block(block: nn.Module, x: torch.Tensor, variant: str, grid: tuple[int, int]) -> torch.Tensor:
    """The last block's output tokens (B, L, D) under `variant`, from its input x (B, L, D); not `plain`."""
    q, k, v = _heads(block, block.ln_1(x), qk=variant != "value")
    if variant == "value":                        # MaskCLIP: A = I, each patch's own value
        o = _branch(block, v)
    else:
        o = _branch(block, mixing(variant, q, k, grid) @ v)
    if not PARAMS[variant]["residual"]:           # ClearCLIP, NACLIP: residual and feed-forward dropped
        return o
    y = x + o
    return y + block.ls_2(block.mlp(block.ln_2(y)))
