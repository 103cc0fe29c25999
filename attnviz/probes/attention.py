"""Attention weights exactly as a module computes them, and the token maps read from them.

The capture itself lives in `probes.behaviour` (`AttentionCapture` is re-exported here):
- every `nn.MultiheadAttention`: a forward pre-hook recomputes the module's own weights with
  `F.multi_head_attention_forward(..., need_weights=True, average_attn_weights=False)`;
- every call of `F.scaled_dot_product_attention` (however it was imported) and every softmax over
  the last dim of a (B, heads, Nq, Nk) tensor, seen by a TorchFunctionMode during the forward;
- torchvision's Swin window attention, and window attention (B·nW, heads, T, T) of any Swin,
  kept per window (`WindowAttention`).
Weights are read before attention dropout and without drawing random numbers.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnviz.probes.windows import WindowAttention, swin_window_weights

__all__ = [
    "WindowAttention", "find_attention_modules", "mha_weights", "sdpa_weights",
    "swin_window_weights",
    "rollout", "cls_attention", "query_attention", "received_attention",
]




_MHA_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
             "average_attn_weights", "is_causal")
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SWIN_ARGS = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size",
              "num_heads", "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias",
              "logit_scale", "training")


def _bind(names: Sequence[str], args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional and keyword arguments as one dict keyed by parameter name."""
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def _swin_module() -> Any:
    """torchvision's swin_transformer module if it is imported, else None."""
    return sys.modules.get("torchvision.models.swin_transformer")


def find_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's `nn.MultiheadAttention` and torchvision Swin window-attention modules, by name."""
    swin = _swin_module()
    kinds: tuple[type, ...] = (nn.MultiheadAttention,)
    if swin is not None:
        kinds += (swin.ShiftedWindowAttention,)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]


@torch.no_grad()
def mha_weights(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    """Per-head weights (B, heads, L, S) exactly as `module(..., need_weights=True)` computes them."""
    batched = query.dim() == 3
    if module.batch_first and batched:  # (B, L, E) -> (L, B, E), as MultiheadAttention.forward does
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    separate: dict[str, Any] = {}
    if not module._qkv_same_embed_dim:
        separate = dict(use_separate_proj_weight=True, q_proj_weight=module.q_proj_weight,
                        k_proj_weight=module.k_proj_weight, v_proj_weight=module.v_proj_weight)
    _, weights = F.multi_head_attention_forward(
        query, key, value, module.embed_dim, module.num_heads, module.in_proj_weight,
        module.in_proj_bias, module.bias_k, module.bias_v, module.add_zero_attn, module.dropout,
        module.out_proj.weight, module.out_proj.bias, training=False,  # no dropout, no RNG draw
        key_padding_mask=key_padding_mask, need_weights=True, attn_mask=attn_mask,
        average_attn_weights=False, is_causal=is_causal, **separate)
    return weights if batched else weights.unsqueeze(0)  # (B, heads, L, S)


@torch.no_grad()
def sdpa_weights(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None = None,
                 is_causal: bool = False, scale: float | None = None,
                 enable_gqa: bool = False) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask) as `F.scaled_dot_product_attention` defines it: (..., L, S)."""
    L, S = query.size(-2), key.size(-2)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa and key.size(-3) != query.size(-3):  # grouped keys serve several query heads
        key = key.repeat_interleave(query.size(-3) // key.size(-3), dim=-3)
    scores = query @ key.transpose(-2, -1) * scale  # (..., L, S)
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:  # boolean: True = may attend; float: added to the scores
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    weights = torch.softmax(scores, dim=-1)
    return weights.masked_fill(torch.isneginf(scores).all(-1, keepdim=True), 0.0)  # rows fully masked


def _heads_first(w: torch.Tensor) -> torch.Tensor:
    """(..., L, S) weights as (B, heads, L, S): 3-D gets one head, leading dims fold into B."""
    if w.dim() == 2:
        return w[None, None]
    if w.dim() == 3:
        return w.unsqueeze(1)
    return w.reshape(-1, *w.shape[-3:])


def rollout(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout: Â = ½·mean_heads(A) + ½·I, rows renormalised, R = Â_L···Â_1: (B, N, N)."""
    if not layers:
        raise ValueError("rollout needs at least one layer of attention")
    result: torch.Tensor | None = None
    for A in layers:  # each (B, heads, N, N)
        if A.dim() != 4 or A.shape[-1] != A.shape[-2]:
            raise ValueError(f"expected (B, heads, N, N) self-attention, got {tuple(A.shape)}")
        a = 0.5 * A.double().mean(dim=1) + 0.5 * torch.eye(A.shape[-1], dtype=torch.float64, device=A.device)
        a = a / a.sum(dim=-1, keepdim=True)  # (B, N, N), rows sum to 1
        if result is not None and result.shape != a.shape:
            raise ValueError(f"layer shapes differ: {tuple(result.shape)} vs {tuple(a.shape)}")
        result = a if result is None else a @ result
    assert result is not None
    return result.to(layers[0].dtype)


def query_attention(A: torch.Tensor, index: int, prefix: int = 0) -> torch.Tensor:
    """Row `index` of A, mean over heads, keys from `prefix` on: (B, [heads,] N, N) -> (B, N - prefix)."""
    row = A[..., index, prefix:]  # (B, heads, N - prefix) or (B, N - prefix)
    return row.mean(dim=1) if A.dim() == 4 else row


def cls_attention(A: torch.Tensor, prefix: int = 1) -> torch.Tensor:
    """The class token's attention to the patch tokens, mean over heads: (B, N - prefix)."""
    return query_attention(A, 0, prefix)


def received_attention(A: torch.Tensor, prefix: int = 0) -> torch.Tensor:
    """Attention each key receives: column mean over all queries (and heads): (B, N - prefix)."""
    cols = A[..., :, prefix:].mean(dim=-2)  # (B, heads, N - prefix) or (B, N - prefix)
    return cols.mean(dim=1) if A.dim() == 4 else cols
