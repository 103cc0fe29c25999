"""Capture by behaviour: gates and attention found by what the model computes, not by module class.

While a `BehaviourCapture` is open, a TorchFunctionMode sees every call of sigmoid / hard-sigmoid
(functional, method or module of any class), softmax and `scaled_dot_product_attention` (however
it was imported), and a module stack (forward pre/post hooks) attributes each call to the innermost
module running it; a parameter-free leaf module (nn.Sigmoid, timm's Sigmoid, nn.Softmax) stands for
its caller. Results are read from the call's own output (sigmoid, softmax) or recomputed exactly
from its arguments (SDPA); the model's outputs are never touched. `nn.MultiheadAttention` and
torchvision's Swin keep their exact hooks (`probes.attention`); calls inside them are left to those.
The mode and every hook are gone after the block, also when the forward raises. Captures are
per thread: calls from other threads are ignored; nest contexts only LIFO.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from attnviz.probes.attention import (
    _MHA_ARGS, _SDPA_ARGS, _SWIN_ARGS, _bind, _heads_first, _swin_module, find_attention_modules,
    mha_weights, sdpa_weights,
)
from attnviz.probes.base import Probe
from attnviz.probes.gates import Gate, classify_gate, gate_values
from attnviz.probes.windows import WindowAttention, _pair, swin_window_weights, window_attention

__all__ = ["BehaviourCapture", "AttentionCapture", "GateTap", "SIGMOIDS", "SOFTMAXES"]

SIGMOIDS = frozenset({torch.sigmoid, torch.sigmoid_, torch.Tensor.sigmoid, torch.Tensor.sigmoid_,
                      torch.special.expit, F.hardsigmoid})
SOFTMAXES = frozenset({F.softmax, torch.softmax, torch.Tensor.softmax})
SDPA = torch._C._nn.scaled_dot_product_attention     # what F.scaled_dot_product_attention is
_WATCHED = SIGMOIDS | SOFTMAXES | {SDPA}


class _Watch(TorchFunctionMode):
    """Run every torch call unchanged; hand the watched ones and their output to `seen`."""

    def __init__(self, seen: Callable[[Any, tuple, dict, Any], None]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)          # torch disables this mode inside the handler
        try:
            watched = func in _WATCHED
        except TypeError:                    # an unhashable callable: not one of ours
            watched = False
        if watched:
            self.seen(func, args, kwargs, out)
        return out


@dataclass
class _Frame:
    """One running module: its name, its input's shape, and how many sigmoid calls it made so far."""

    name: str
    module: nn.Module
    sigmoids: int = 0
    softmaxes: int = 0
    shape: tuple[int, ...] = ()


def _factors(n: int) -> set[tuple[int, int]]:
    """Every (a, b) with a·b = n."""
    return {(a, n // a) for a in range(1, n + 1) if n % a == 0}


def _wrapper(module: nn.Module) -> bool:
    """A parameter-free leaf module (nn.Sigmoid, nn.Softmax, timm's Sigmoid) stands for its caller."""
    return not any(True for _ in module.children()) and not any(True for _ in module.parameters(recurse=False))


class BehaviourCapture(Probe):
    """Record gates and attention during forward passes, by what the model computes.

    `gates`: None finds every gate (`found`, for `locate`); a list records those gates' outputs
    (`gates`, by `Gate.key`) and the features each channel gate scales (`gate_inputs`).
    `attention`: True every attention, a list only these modules, False none. `heads`: keep
    per-head weights only for these modules (the others are averaged, (B, 1, Nq, Nk)).
    """

    def __init__(self, model: nn.Module, *, gates: Sequence[Gate] | None = (),
                 attention: bool | Sequence[str] = False, heads: Sequence[str] | None = None) -> None:
        super().__init__(model)
        self.discover = gates is None
        self.wanted_gates = list(gates or [])
        self.names = None if attention is True else list(attention or [])
        self.heads = None if heads is None else set(heads)
        self._reset()

    def _reset(self) -> None:
        """Empty every result (a capture can be entered again)."""
        self.gates: dict[str, torch.Tensor] = {}          # key -> (B, C) or (B, H, W)
        self.gate_inputs: dict[str, torch.Tensor] = {}    # key -> (B, C, H, W) features it scales
        self.found: dict[tuple[str, int], Gate] = {}      # discover: (module, call) -> gate
        self.maps: dict[str, torch.Tensor] = {}           # name -> (B, heads, Nq, Nk) float32 CPU
        self.windows: dict[str, WindowAttention] = {}     # window attention, by module name
        self.order: list[str] = []                        # every captured attention, in order
        self.unsupported: list[str] = []                  # attention that ran but cannot be read
        self.sources: dict[str, tuple[int, ...]] = {}     # capture -> input shape of the module running it
        self.cross: set[str] = set()                      # MHA captures whose queries are not their keys
        self.splits: dict[str, tuple[int, ...]] = {}      # discover: split attention (softmax over branches)
        self.reasons: dict[str, str] = {}                 # ... and why
        self.positions: dict[str, int] = {}               # module -> completion order (last call)
        self.batch: int | None = None                     # images in the forward (outermost input)
        self._inputs: dict[str, tuple[int, ...]] = {}     # discover: module -> input shape
        self._stack: list[_Frame] = []
        self._calls: dict[str, int] = {}
        self._ran: set[str] = set()
        self._clock = itertools.count()

    @property
    def attention_on(self) -> bool:
        """Whether any attention is to be recorded."""
        return self.names is None or bool(self.names)

    def attach(self) -> None:
        if self._undo:
            raise RuntimeError("BehaviourCapture is not re-entrant")
        modules = dict(self.model.named_modules())
        missing = [n for n in self.names or [] if n not in modules]
        if missing:
            raise ValueError(f"no modules named {missing} in the model")
        self._reset()
        self._thread = threading.get_ident()
        self._sites = {g.site: g for g in self.wanted_gates}
        self._blocks: dict[str, list[str]] = {}
        for g in self.wanted_gates:
            if g.kind == "channel":
                self._blocks.setdefault(g.name, []).append(g.key)
        for name, module in modules.items():
            self.hook(module, self._push(name), pre=True, with_kwargs=True)
            self.hook(module, self._pop(name), always_call=True)
            if isinstance(module, nn.MultiheadAttention) and self.attention_on and self._wanted(name):
                self.hook(module, self._mha_hook(name), pre=True, with_kwargs=True)
        swin = _swin_module()
        if self.attention_on and swin is not None and any(
                isinstance(m, swin.ShiftedWindowAttention) for m in modules.values()):
            self.patch(swin, "shifted_window_attention", self._swin_wrapper(swin.shifted_window_attention))
        self.enter(_Watch(self._seen))

    def __exit__(self, *exc: object) -> None:
        """Undo everything (also on error) and list the attention modules that ran unread."""
        try:
            self.remove()
        finally:
            self._stack.clear()
            captured = {n.split("#")[0] for n in self.order}
            modules = dict(self.model.named_modules())
            for n, _ in find_attention_modules(self.model):
                parent = n.rpartition(".")[0]
                # nn.TransformerEncoderLayer's fast path runs its attention without calling the module
                fast = parent in self._ran and isinstance(modules.get(parent), nn.TransformerEncoderLayer)
                if self.attention_on and self._wanted(n) and n not in captured and (n in self._ran or fast):
                    self._unreadable(n, "its input was a nested tensor (a padded batch on "
                                        "nn.TransformerEncoder's fast path)")

    def require(self) -> None:
        """Raise RuntimeError if no attention (or not every requested module) was captured."""
        if not self.order:
            found = [n for n, _ in find_attention_modules(self.model)]
            raise RuntimeError(
                "attention capture recorded nothing: no nn.MultiheadAttention, window attention, "
                "softmax over (B, heads, Nq, Nk) or scaled_dot_product_attention call was seen "
                f"(attention modules found: {found or 'none'}; ran but not readable: {self.unsupported or 'none'})")
        missing = [n for n in self.names or [] if n not in {c.split('#')[0] for c in self.order}]
        if missing:
            raise RuntimeError(f"attention capture recorded nothing for {missing}")

    # -- the module stack ---------------------------------------------------------------------
    def _push(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            if threading.get_ident() != self._thread:
                return
            # the first tensor argument (HF models take `pixel_values=` by keyword)
            x = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if not self._stack and x is not None and x.dim() > 0:
                self.batch = int(x.shape[0])
            self._stack.append(_Frame(name, module, shape=tuple(x.shape) if x is not None else ()))
            self._ran.add(name)
            if x is None:
                return
            if self.discover:
                self._inputs[name] = tuple(x.shape)
            elif name in self._blocks and x.dim() == 4:
                for key in self._blocks[name]:
                    self.gate_inputs[key] = x.detach().float().clone()
        return hook

    def _pop(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if threading.get_ident() != self._thread:
                return
            if self._stack and self._stack[-1].name == name:
                self._stack.pop()
            self.positions[name] = next(self._clock)
        return hook

    def _owner(self) -> _Frame:
        """The module a call belongs to: the innermost, or its caller when it is a mere wrapper."""
        if len(self._stack) > 1 and _wrapper(self._stack[-1].module):
            return self._stack[-2]
        return self._stack[-1]

    # -- what the mode sees ---------------------------------------------------------------------
    def _seen(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """One watched call: a gate (sigmoid) or attention (softmax, SDPA) of the running module."""
        if threading.get_ident() != self._thread or not self._stack or not isinstance(out, torch.Tensor):
            return
        owner = self._owner()
        try:
            if func in SIGMOIDS:
                self._sigmoid(func, out)
            elif func in SOFTMAXES and self._context(owner, out):
                pass                     # a global-context softmax over positions: a spatial gate
            elif self.attention_on and self._wanted(owner.name) and not self._own_hook(owner.module):
                if func is SDPA:
                    a = _bind(_SDPA_ARGS, args, kwargs)
                    w = sdpa_weights(a["query"], a["key"], a.get("attn_mask"), bool(a.get("is_causal", False)),
                                     a.get("scale"), bool(a.get("enable_gqa", False)))
                    self._attention(owner, w)
                else:
                    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
                    if out.dim() in (3, 4) and dim in (-1, out.dim() - 1):
                        self._attention(owner, out)
                    elif dim == 1 and out.dim() >= 3 and 1 < out.shape[1] <= 8 and self.discover:
                        self.splits.setdefault(owner.name, tuple(out.shape))   # weights over R branches
        except Exception as e:  # reading must never break the user's forward
            self._unreadable(owner.name, f"could not be read ({type(e).__name__}: {e})")

    def _own_hook(self, module: nn.Module) -> bool:
        """Modules whose attention an exact hook reads already (MHA, torchvision Swin)."""
        swin = _swin_module()
        return isinstance(module, nn.MultiheadAttention) or (
            swin is not None and isinstance(module, swin.ShiftedWindowAttention))

    def _sigmoid(self, func: Any, out: torch.Tensor) -> None:
        """A sigmoid call: a gate when its output has a gate's shape."""
        frame = self._stack[-1]
        call, frame.sigmoids = frame.sigmoids, frame.sigmoids + 1
        site = (frame.name, call, "sigmoid")
        if not self.discover:
            gate = self._sites.get(site)
            if gate is not None:
                self.gates[gate.key] = gate_values(out, gate.kind)
            return
        shape = classify_gate(out.shape)
        if shape is None:
            return
        kind, channels = shape
        wrapped = len(self._stack) > 1 and _wrapper(frame.module)
        # the gate block: the innermost running module that receives the feature map it gates
        # (an `nn.Sequential(Linear, ReLU, Linear, Sigmoid)` excitation receives a vector: go out)
        frames = self._stack[:-1] if wrapped else self._stack
        # the image itself is never gated: a sigmoid over the model's output (multi-label logits)
        # would match the model's own input channels
        image = self._stack[0].shape
        fits = [f for f in reversed(frames) if self._inputs.get(f.name, ()) != image and self._gates_input(
            self._inputs.get(f.name, ()), kind, channels, tuple(out.shape[2:]))]
        if not fits:
            return                       # a sigmoid over (B, K) logits, or a 1×1 map: not a gate
        block = fits[0]
        gated = self._inputs[block.name]
        fname = getattr(func, "__name__", "sigmoid").rstrip("_")
        activation = frame.name if wrapped else f"{frame.name}:{fname}" + (f"#{call}" if call else "")
        self.found[site] = Gate(block.name, activation, kind, channels, (gated[2], gated[3]),
                                type(block.module).__name__, next(self._clock), frame.name, call)

    def _context(self, owner: _Frame, out: torch.Tensor) -> bool:
        """A softmax (B, 1, H·W) over the positions of the owner's (B, C, H, W) input: a spatial gate."""
        frame = self._stack[-1]
        call, frame.softmaxes = frame.softmaxes, frame.softmaxes + 1
        site = (frame.name, call, "softmax")
        if not self.discover:
            gate = self._sites.get(site)
            if gate is not None:
                self.gates[gate.key] = out.detach().float().reshape(-1, *gate.grid).clone()
            return gate is not None
        shape = owner.shape
        if out.dim() != 3 or out.shape[1] != 1 or len(shape) != 4 or out.shape[2] != shape[2] * shape[3] \
                or shape[2] * shape[3] < 2 or shape == self._stack[0].shape:
            return False
        self.found[site] = Gate(owner.name, f"{frame.name}:softmax" + (f"#{call}" if call else ""), "spatial", 1,
                                (shape[2], shape[3]), type(owner.module).__name__, next(self._clock), frame.name,
                                call, op="softmax")
        return True

    @staticmethod
    def _gates_input(shape: tuple[int, ...], kind: str, channels: int, grid: tuple[int, ...]) -> bool:
        """Whether a module input of `shape` is the feature map a gate of this kind scales."""
        if len(shape) != 4 or shape[2] * shape[3] < 2:
            return False
        return shape[1] == channels if kind == "channel" else tuple(shape[2:]) == grid

    def _attention(self, owner: _Frame, w: torch.Tensor) -> None:
        """Attention weights (..., Nq, Nk) of `owner`: per image, or per window (Swin, MobileViT, MaxViT)."""
        b = self.batch
        shape = owner.shape
        if w.dim() == 3 and b:
            n = w.shape[-1]
            on_grid = len(shape) == 4 and n in (shape[2] * shape[3], shape[1] * shape[2])
            if w.shape[-2] == n and on_grid and w.shape[0] % b == 0:
                w = w.reshape(b, w.shape[0] // b, n, n)   # heads folded into the batch (BotNet): (B·h, N, N)
            elif w.shape[0] != b or not (w.shape[-2] == n or on_grid):
                return                                    # a 3-D softmax that is no attention over tokens
        running = [(f.module, f.shape) for f in self._stack]
        # a window-sized module (timm / HF Swin) marks window attention even with one window
        windowed = w.dim() == 4 and b and (w.shape[0] != b or any(
            _pair(getattr(m, "window_size", None)) in _factors(w.shape[-1]) for m, _ in running))
        if not windowed:
            self._record(owner.name, _heads_first(w), shape)
            return
        if w.shape[0] % b:
            self._unreadable(owner.name, f"its attention batch {w.shape[0]} is no multiple of the {b} images")
            return
        wa = window_attention(w, b, running)
        if isinstance(wa, str):
            self._unreadable(owner.name, f"attention folded into the batch {tuple(w.shape)}: {wa}")
        else:
            self._record(owner.name, wa, shape)

    # -- recording ------------------------------------------------------------------------------
    def _wanted(self, name: str) -> bool:
        return self.names is None or name in self.names

    def _unreadable(self, name: str, reason: str) -> None:
        if name not in self.unsupported:
            self.unsupported.append(name)
        self.reasons.setdefault(name, reason)

    def _record(self, name: str, weights: torch.Tensor | WindowAttention, source: tuple[int, ...] = (),
                cross: bool = False) -> None:
        """Store one capture, suffixing `#k` when `name` was already captured k times."""
        k = self._calls.get(name, 0)
        self._calls[name] = k + 1
        key = name if k == 0 else f"{name}#{k}"
        self.sources[key] = source
        if cross:
            self.cross.add(key)
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
            if threading.get_ident() != self._thread:
                return
            a = _bind(_MHA_ARGS, args, kwargs)
            if a["query"].is_nested:  # nn.TransformerEncoder's padded batches: left to `unsupported`
                return
            self._record(name, mha_weights(module, a["query"], a["key"], a["value"], a.get("key_padding_mask"),
                                           a.get("attn_mask"), bool(a.get("is_causal", False))),
                         tuple(a["query"].shape), cross=a["query"] is not a["key"])
        return hook

    def _swin_wrapper(self, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """torchvision's shifted_window_attention that also records its per-window weights."""
        def shifted_window_attention(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = original(*args, **kwargs)
            if threading.get_ident() == self._thread and self._stack and self._wanted(self._stack[-1].name):
                self._record(self._stack[-1].name, swin_window_weights(**_bind(_SWIN_ARGS, args, kwargs)))
            return out
        return shifted_window_attention


class AttentionCapture(BehaviourCapture):
    """Every attention weight matrix a forward pass computes (`names`: only these modules)."""

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None,
                 heads: Sequence[str] | None = None) -> None:
        super().__init__(model, gates=(), attention=True if names is None else list(names), heads=heads)


class GateTap(BehaviourCapture):
    """Record each gate's output (B, C) or (B, H, W), and the features a channel gate scales."""

    def __init__(self, model: nn.Module, gates: Sequence[Gate]) -> None:
        super().__init__(model, gates=gates)

    def _reset(self) -> None:
        super()._reset()
        self.outputs, self.inputs = self.gates, self.gate_inputs
