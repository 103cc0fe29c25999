"""Probe base class (one undo stack for hooks, patches and modes, unwound even on error) and the layer tap."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Callable, Iterable

import torch
from torch import nn

__all__ = ["Probe", "LayerTap"]


class Probe:
    """Attach hooks on __enter__, undo every one on __exit__, never swallow exceptions.

    Subclasses implement `attach` with `hook`, `patch` and `enter`; each registers its own undo,
    so a failure half-way through `attach` (or the forward) leaves the model as it was.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._undo: list[Callable[[], Any]] = []

    def attach(self) -> None:
        """Register this probe's hooks with `self.hook(...)`; subclasses implement it."""
        raise NotImplementedError

    def hook(self, module: nn.Module, fn: Callable, *, pre: bool = False,
             with_kwargs: bool = False, always_call: bool = False) -> None:
        """Register a forward (pre-)hook on `module` and keep its handle for removal."""
        if pre:
            handle = module.register_forward_pre_hook(fn, with_kwargs=with_kwargs)
        else:
            handle = module.register_forward_hook(fn, with_kwargs=with_kwargs, always_call=always_call)
        self._undo.append(handle.remove)

    def patch(self, owner: Any, attr: str, value: Any) -> None:
        """Set `owner.attr = value` until the probe exits."""
        original = getattr(owner, attr)
        setattr(owner, attr, value)
        self._undo.append(lambda: setattr(owner, attr, original))

    def enter(self, context: AbstractContextManager) -> None:
        """Enter `context` (e.g. a TorchFunctionMode) until the probe exits."""
        context.__enter__()
        self._undo.append(lambda: context.__exit__(None, None, None))

    def remove(self) -> None:
        """Undo everything this probe attached, last first, whatever fails."""
        try:
            while self._undo:
                self._undo.pop()()
        finally:
            if self._undo:          # an undo raised: still undo the rest
                self.remove()

    def __enter__(self) -> "Probe":
        try:
            self.attach()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class LayerTap(Probe):
    """Record the outputs of named modules (their last call) during forward passes."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        super().__init__(model)
        self.names = list(dict.fromkeys(names))
        self.outputs: dict[str, torch.Tensor] = {}

    def attach(self) -> None:
        for name in self.names:
            self.hook(self.model.get_submodule(name), self._record(name))

    def _record(self, name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                # a copy: later in-place ops (ResNet's `out += identity`) must not change it
                self.outputs[name] = output.detach().clone()
        return fn
