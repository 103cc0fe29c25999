"""Read a transformer's own attention weights during an ordinary forward pass, outputs untouched.

Three sources are captured while an `AttentionCapture` context is open:
- every `nn.MultiheadAttention`: a forward pre-hook recomputes the module's own weights with
  `F.multi_head_attention_forward(..., need_weights=True, average_attn_weights=False)`;
- calls to `F.scaled_dot_product_attention` (timm-style fused attention), patched for the
  duration; the original still produces the output. Code that bound the function at import
  time (`from torch.nn.functional import scaled_dot_product_attention`) keeps its own
  reference and is NOT captured;
- torchvision's Swin window attention (`swin_transformer.shifted_window_attention`, v1 and v2),
  patched for the duration; weights are kept per window (`WindowAttention`).
Weights are read before attention dropout and without drawing random numbers. The patches are
process-wide: do not run two captures at once from different threads; nest contexts only LIFO.
torch itself turns off `nn.TransformerEncoderLayer`'s fused kernel while any hook is attached, so
such layers run their Python path under capture; a nested-tensor batch (`nn.TransformerEncoder`
with a padding mask, eval, no grad) cannot be read and is listed in `unsupported`.
"""
from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttentionCapture", "WindowAttention", "find_attention_modules", "mha_weights", "sdpa_weights",
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


@dataclass
class WindowAttention:
    """Swin window attention of one call: weights per window and the geometry to place them."""

    weights: torch.Tensor        # (B, nW, heads, T, T) float32, T = wh·ww, windows row-major
    grid: tuple[int, int]        # (H, W) token grid of the layer
    padded: tuple[int, int]      # (Hp, Wp) after padding to a multiple of the window
    window: tuple[int, int]      # (wh, ww)
    shift: tuple[int, int]       # cyclic shift actually applied (0 where the window covers the grid)

    def query_map(self, y: int, x: int) -> torch.Tensor:
        """Weights that the token at (y, x) gives every token of the grid: (B, heads, H, W)."""
        (H, W), (Hp, Wp), (wh, ww), (sh, sw) = self.grid, self.padded, self.window, self.shift
        if not (0 <= y < H and 0 <= x < W):
            raise IndexError(f"query ({y}, {x}) outside the {H}x{W} grid")
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


class AttentionCapture:
    """Context manager recording every attention weight matrix that a forward pass computes."""

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None,
                 heads: Sequence[str] | None = None) -> None:
        """`names`: capture only these modules; `heads`: keep per-head weights only for these
        (the others are stored averaged over heads as (B, 1, Nq, Nk), a head-count less memory)."""
        self.model = model
        self.names = None if names is None else list(names)
        self.heads = None if heads is None else set(heads)
        self.maps: dict[str, torch.Tensor] = {}          # name -> (B, heads, N_query, N_key) float32 CPU
        self.windows: dict[str, WindowAttention] = {}    # Swin window attention, by module name
        self.order: list[str] = []                        # every captured name, in execution order
        self.unsupported: list[str] = []                  # attention modules that ran but could not be read
        self._handles: list[Any] = []
        self._patches: list[tuple[Any, str, Any]] = []   # (owner, attribute, original)
        self._stack: list[tuple[str, nn.Module]] = []    # modules currently running, innermost last
        self._ran: set[str] = set()
        self._calls: dict[str, int] = {}
        self._thread: int | None = None
        self._entered = False

    def __enter__(self) -> AttentionCapture:
        """Attach the hooks and patches; results from an earlier use are cleared."""
        if self._entered:
            raise RuntimeError("AttentionCapture is not re-entrant")
        modules = dict(self.model.named_modules())
        missing = [n for n in self.names or [] if n not in modules]
        if missing:
            raise ValueError(f"no modules named {missing} in the model")
        self.maps, self.windows, self.order, self.unsupported = {}, {}, [], []
        self._calls, self._ran = {}, set()
        self._entered, self._thread = True, threading.get_ident()
        try:
            for name, module in modules.items():
                self._handles.append(module.register_forward_pre_hook(self._push(name)))
                self._handles.append(module.register_forward_hook(self._pop(name), always_call=True))
                if isinstance(module, nn.MultiheadAttention) and self._wanted(name):
                    self._handles.append(module.register_forward_pre_hook(
                        self._mha_hook(name), with_kwargs=True))
            self._patch(F, "scaled_dot_product_attention", self._sdpa_wrapper)
            swin = _swin_module()
            if swin is not None and any(isinstance(m, swin.ShiftedWindowAttention) for m in modules.values()):
                self._patch(swin, "shifted_window_attention", self._swin_wrapper)
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        """Remove every hook and patch (also on error) and list what ran but could not be read."""
        try:
            self._detach()
        finally:
            captured = {n.split("#")[0] for n in self.order}
            self.unsupported = [n for n, _ in find_attention_modules(self.model)
                                if self._wanted(n) and n not in captured
                                and (n in self._ran or n.rpartition(".")[0] in self._ran)]
        return None  # never swallows an exception

    def require(self) -> None:
        """Raise RuntimeError if nothing (or not every requested module) was captured."""
        if not self.order:
            found = [n for n, _ in find_attention_modules(self.model)]
            raise RuntimeError(
                "attention capture recorded nothing: no nn.MultiheadAttention, Swin window attention "
                f"or F.scaled_dot_product_attention call was seen (attention modules found: {found or 'none'}; "
                f"ran but not readable: {self.unsupported or 'none'})")
        missing = [n for n in self.names or [] if n not in {c.split('#')[0] for c in self.order}]
        if missing:
            raise RuntimeError(f"attention capture recorded nothing for {missing}")

    # -- plumbing ---------------------------------------------------------------------------
    def _wanted(self, name: str) -> bool:
        """Whether the module `name` is to be captured."""
        return self.names is None or name in self.names

    def _patch(self, owner: Any, attr: str, wrapper: Callable[..., Any]) -> None:
        """Replace `owner.attr` by `wrapper(original)` until `_detach`."""
        original = getattr(owner, attr)
        self._patches.append((owner, attr, original))
        setattr(owner, attr, wrapper(original))

    def _detach(self) -> None:
        """Remove every hook and restore every patched function, whatever fails."""
        try:
            while self._handles:
                self._handles.pop().remove()
        finally:
            while self._patches:
                owner, attr, original = self._patches.pop()
                setattr(owner, attr, original)
            self._stack.clear()
            self._entered = False

    def _push(self, name: str) -> Callable[..., None]:
        """Forward pre-hook: note that `name` is running."""
        def hook(module: nn.Module, args: Any) -> None:
            self._stack.append((name, module))
            self._ran.add(name)
        return hook

    def _pop(self, name: str) -> Callable[..., None]:
        """Forward hook (also called on error): `name` has finished."""
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._stack and self._stack[-1][0] == name:
                self._stack.pop()
        return hook

    def _record(self, name: str, weights: torch.Tensor | WindowAttention) -> None:
        """Store one capture, suffixing `#k` when `name` was already captured k times."""
        k = self._calls.get(name, 0)
        self._calls[name] = k + 1
        key = name if k == 0 else f"{name}#{k}"
        if isinstance(weights, WindowAttention):
            self.windows[key] = weights
        else:
            w = weights.detach().float()
            if self.heads is not None and name not in self.heads:
                w = w.mean(dim=1, keepdim=True)           # (B, 1, Nq, Nk)
            self.maps[key] = w.cpu()
        self.order.append(key)

    def _mha_hook(self, name: str) -> Callable[..., None]:
        """Forward pre-hook for one nn.MultiheadAttention: recompute its weights, change nothing."""
        def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict[str, Any]) -> None:
            a = _bind(_MHA_ARGS, args, kwargs)
            if a["query"].is_nested:  # nn.TransformerEncoder's padded batches: left to `unsupported`
                return
            self._record(name, mha_weights(module, a["query"], a["key"], a["value"], a.get("key_padding_mask"),
                                           a.get("attn_mask"), bool(a.get("is_causal", False))))
        return hook

    def _innermost(self) -> tuple[str, nn.Module] | None:
        """The innermost running module of this model, if called from the capturing thread."""
        if threading.get_ident() != self._thread or not self._stack:
            return None
        return self._stack[-1]

    def _sdpa_wrapper(self, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """F.scaled_dot_product_attention that also records its weights."""
        def scaled_dot_product_attention(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = original(*args, **kwargs)
            where = self._innermost()
            # an nn.MultiheadAttention's own call is captured by its hook already
            if where is not None and not isinstance(where[1], nn.MultiheadAttention) and self._wanted(where[0]):
                a = _bind(_SDPA_ARGS, args, kwargs)
                w = sdpa_weights(a["query"], a["key"], a.get("attn_mask"), bool(a.get("is_causal", False)),
                                 a.get("scale"), bool(a.get("enable_gqa", False)))
                self._record(where[0] or "scaled_dot_product_attention", _heads_first(w))
            return out
        return scaled_dot_product_attention

    def _swin_wrapper(self, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """torchvision's shifted_window_attention that also records its per-window weights."""
        def shifted_window_attention(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = original(*args, **kwargs)
            where = self._innermost()
            if where is not None and self._wanted(where[0]):
                self._record(where[0], swin_window_weights(**_bind(_SWIN_ARGS, args, kwargs)))
            return out
        return shifted_window_attention


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
