"""StageTap: the inputs and outputs of named modules during one forward, hooks removed on exit."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from attnviz.probes.base import Probe

__all__ = ["StageTap"]


def _copy(x: Any) -> Any:
    """Tensors detached and cloned (later in-place ops must not change them), other values as they are."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_copy(v) for v in x)
    return x


class StageTap(Probe):
    """Record each named module's positional inputs, keyword inputs and output (its last call)."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        super().__init__(model)
        self.names = list(dict.fromkeys(names))
        self.args: dict[str, tuple] = {}
        self.kwargs: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, Any] = {}

    def attach(self) -> None:
        for name in self.names:
            module = self.model.get_submodule(name)
            self.hook(module, self._pre(name), pre=True, with_kwargs=True)
            self.hook(module, self._post(name))

    def _pre(self, name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            self.args[name], self.kwargs[name] = _copy(args), {k: _copy(v) for k, v in kwargs.items()}
        return fn

    def _post(self, name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, output: Any) -> None:
            self.outputs[name] = _copy(output)
        return fn

    def input(self, name: str) -> torch.Tensor:
        """The first positional input of `name` as float32."""
        return self.args[name][0].float()

    def output(self, name: str) -> torch.Tensor:
        """The output of `name` (the first element when it returned a tuple) as float32."""
        out = self.outputs[name]
        return (out[0] if isinstance(out, (tuple, list)) else out).float()
