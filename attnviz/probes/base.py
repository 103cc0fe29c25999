"""Probe base class (owns hook handles, removes them even on error) and the layer tap."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

__all__ = ["Probe", "LayerTap"]


class Probe:
    """Attach hooks on __enter__, remove every one on __exit__, never swallow exceptions."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._handles: list[Any] = []

    def attach(self) -> None:
        """Register this probe's hooks with `self.hook(...)`; subclasses implement it."""
        raise NotImplementedError

    def hook(self, module: nn.Module, fn: Callable, *, pre: bool = False,
             with_kwargs: bool = False) -> None:
        """Register a forward (pre-)hook on `module` and keep its handle for removal."""
        register = module.register_forward_pre_hook if pre else module.register_forward_hook
        self._handles.append(register(fn, with_kwargs=with_kwargs))

    def remove(self) -> None:
        """Remove every hook this probe registered."""
        while self._handles:
            self._handles.pop().remove()

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
