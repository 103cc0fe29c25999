"""Attention inside the autograd graph, for the gradient-weighted kinds (GAE, LeGrad).

The ordinary capture (`probes.behaviour`) keeps detached copies; ∂y/∂A needs the very tensor the
model multiplies with its values. While a `GradCapture` is open:
- a fused `F.scaled_dot_product_attention` call of a chosen module runs as an explicit
  softmax(q·kᵀ·scale + mask)·v whose softmax output A is kept with its graph; every call compares
  its output with the fused one (no gradient) and raises past 1e-5 of the output's scale;
- a softmax over the last dim of a (B, heads, Nq, Nk) tensor (unfused timm, HF eager) is kept as is;
- a chosen `nn.MultiheadAttention` (self-attention, no bias_k / zero attention) runs an explicit
  forward (checked against the module's own output the same way);
- the outputs of the chosen blocks (the token tensors z_l that LeGrad reads) are kept with their graph.
Nothing of the model changes outside the block: hooks, the mode and the patched forwards are undone
on exit, also when the forward raises. Run the forward under `torch.enable_grad()`.
"""
from __future__ import annotations

import math
import threading
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from attnviz.probes.attention import _SDPA_ARGS, _bind
from attnviz.probes.base import Probe

__all__ = ["GradCapture", "explicit_sdpa", "TOLERANCE", "block_of"]

TOLERANCE = 1e-5            # explicit vs fused attention output, relative to the output's largest value
_SDPA = torch._C._nn.scaled_dot_product_attention
_SOFTMAX = frozenset({F.softmax, torch.softmax, torch.Tensor.softmax})


def explicit_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                  scale: float | None = None, enable_gqa: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`F.scaled_dot_product_attention` written out (no dropout): (output, A) with A in the graph."""
    L, S = query.size(-2), key.size(-2)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa and key.size(-3) != query.size(-3):
        rep = query.size(-3) // key.size(-3)
        key, value = key.repeat_interleave(rep, dim=-3), value.repeat_interleave(rep, dim=-3)
    scores = query @ key.transpose(-2, -1) * scale
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask
    a = torch.softmax(scores, dim=-1)
    return a @ value, a


def _check(out: torch.Tensor, ref: torch.Tensor, where: str) -> None:
    """Raise when the explicit output strays from the model's own by more than TOLERANCE."""
    err = float((out.detach() - ref).abs().max()) if out.numel() else 0.0
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    if not err <= TOLERANCE * scale:
        raise RuntimeError(f"explicit attention of {where} differs from its own output by {err:.3g} "
                           f"(> {TOLERANCE:g} of {scale:.3g}); gradients through it would not be the model's")


def _mha_forward(module: nn.MultiheadAttention, record: Callable[[torch.Tensor], None],
                 original: Callable[..., Any]) -> Callable[..., Any]:
    """An explicit forward of one self-attention nn.MultiheadAttention that records A with its graph."""
    def forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask=None,
                need_weights: bool = True, attn_mask=None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_padding_mask is not None or is_causal or not (query is key is value) or query.is_nested:
            raise RuntimeError("gradients through nn.MultiheadAttention need plain self-attention "
                               "(no key padding mask, no causal mask)")
        x = query.transpose(0, 1) if not module.batch_first and query.dim() == 3 else query
        unbatched = x.dim() == 2
        x = x.unsqueeze(0) if unbatched else x                        # (B, N, E)
        b, n, e = x.shape
        h = module.num_heads
        q, k, v = F.linear(x, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, h, e // h).transpose(1, 2) for t in (q, k, v))
        mask = attn_mask
        if mask is not None and mask.dim() == 3:                     # (B·heads, N, N)
            mask = mask.reshape(b, h, n, n)
        out, a = explicit_sdpa(q, k, v, mask)
        out = F.linear(out.transpose(1, 2).reshape(b, n, e), module.out_proj.weight, module.out_proj.bias)
        with torch.no_grad():
            ref = original(query, key, value, need_weights=False, attn_mask=attn_mask)[0]
        out = out[0] if unbatched else out
        out = out.transpose(0, 1) if not module.batch_first and not unbatched else out
        _check(out, ref, type(module).__name__)
        record(a)
        weights = None
        if need_weights:
            weights = a.mean(dim=1) if average_attn_weights else a
            weights = weights[0] if unbatched else weights
        return out, weights
    return forward


def block_of(attention: str, names: Sequence[str], modules: dict[str, nn.Module]) -> str:
    """The block of an attention module: its outermost ancestor holding no other chosen attention."""
    parts = attention.split(".")
    best = attention
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix not in modules or any(o != attention and o.startswith(prefix + ".") for o in names):
            break
        best = prefix
    return best


class _Explicit(TorchFunctionMode):
    """Replace fused SDPA by the explicit path and keep softmax outputs, inside chosen modules."""

    def __init__(self, owner: "GradCapture") -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        cap = self.owner
        inside = threading.get_ident() == cap._thread and cap._stack
        try:
            sdpa, softmax = func is _SDPA, func in _SOFTMAX
        except TypeError:
            sdpa = softmax = False
        if inside and sdpa:
            a = _bind(_SDPA_ARGS, args, kwargs)
            out, w = explicit_sdpa(a["query"], a["key"], a["value"], a.get("attn_mask"), 0.0,
                                   bool(a.get("is_causal", False)), a.get("scale"), bool(a.get("enable_gqa", False)))
            with torch.no_grad():
                ref = func(*args, **{**kwargs, "dropout_p": 0.0}) if "dropout_p" in kwargs else func(*args, **kwargs)
            _check(out, ref, cap._stack[-1])
            cap._record(cap._stack[-1], w)
            return out
        out = func(*args, **kwargs)
        if inside and softmax and isinstance(out, torch.Tensor) and out.dim() == 4:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim in (-1, 3):
                cap._record(cap._stack[-1], out)
        return out


class GradCapture(Probe):
    """Attention weights (B, heads, N, N) of `names` and the outputs of their blocks, graph kept."""

    def __init__(self, model: nn.Module, names: Sequence[str], blocks: bool = False,
                 layers: Sequence[str] = ()) -> None:
        super().__init__(model)
        self.names = list(names)
        self.want_blocks = blocks
        self.layers = list(dict.fromkeys(layers))

    def attach(self) -> None:
        modules = dict(self.model.named_modules())
        missing = [n for n in [*self.names, *self.layers] if n not in modules]
        if missing:
            raise ValueError(f"no modules named {missing} in the model")
        self.attention: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, torch.Tensor] = {}          # block output z_l, by attention module name
        self.outputs: dict[str, torch.Tensor] = {}         # outputs of `layers` (Grad-CAM's F), graph kept
        self.versions: dict[str, int] = {}                 # their version counters when recorded
        self.blocks = {n: block_of(n, self.names, modules) for n in self.names}
        self._stack: list[str] = []
        self._thread = threading.get_ident()
        for name in self.names:
            m = modules[name]
            if isinstance(m, nn.MultiheadAttention):
                if "forward" in m.__dict__:
                    raise RuntimeError(f"{name}.forward is already patched")
                m.forward = _mha_forward(m, lambda a, n=name: self._record(n, a), m.forward)
                self._undo.append(lambda m=m: m.__dict__.pop("forward", None))
                continue
            self.hook(m, self._push(name), pre=True)
            self.hook(m, self._pop(name), always_call=True)
        if self.want_blocks:
            for name, block in self.blocks.items():
                self.hook(modules[block], self._block(name))
        for name in self.layers:
            self.hook(modules[name], self._layer(name))
        self.enter(_Explicit(self))

    def _layer(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if isinstance(output, torch.Tensor) and threading.get_ident() == self._thread:
                self.outputs[name] = output
                self.versions[name] = output._version      # a later in-place change shows as another
        return hook

    def _push(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            if threading.get_ident() == self._thread:
                self._stack.append(name)
        return hook

    def _pop(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if threading.get_ident() == self._thread and self._stack and self._stack[-1] == name:
                self._stack.pop()
        return hook

    def _block(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if isinstance(output, (tuple, list)):       # HF layers may return (hidden_states, ...)
                output = output[0] if output else None
            if isinstance(output, torch.Tensor) and threading.get_ident() == self._thread:
                self.tokens[name] = output
        return hook

    def _record(self, name: str, a: torch.Tensor) -> None:
        """Keep the first call of each module (the graph's own tensor, not a copy)."""
        self.attention.setdefault(name, a)

    def require(self) -> None:
        """Raise when a chosen module's attention did not pass through this capture."""
        missing = [n for n in self.names if n not in self.attention]
        if missing:
            raise RuntimeError(f"no attention with gradients was seen in {missing}")
