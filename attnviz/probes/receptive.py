"""Measure where a layer's cells look: the centroid of mean |∂cell/∂input| over random inputs.

One backward per (cell, input), batched; cells (k, k) along the diagonal give every row's y and
every column's x at once (the fields of a convolutional stack are separable to first order).
The forward stops at the measured layer. Cached in memory by backbone, weights, layer and input
size (and a fingerprint of the weights, so two random inits never share an entry).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from attnviz.geometry import Axis, Geometry
from attnviz.maps import Layout, to_grid
from attnviz.probes.base import Probe

__all__ = ["measure_centres", "measure_geometry", "fingerprint", "geometry_cache"]

INPUTS = 3        # random inputs averaged per cell
CHUNK = 8         # samples per backward (memory)

geometry_cache: dict[tuple, Geometry] = {}


class _Stop(Exception):
    """Raised by the tap once the layer has run: nothing after it is needed."""


class _GradTap(Probe):
    """Keep one module's output with its graph (not detached), then stop the forward; inputs only need grad."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__(model)
        self.name = name
        self.output: torch.Tensor | None = None

    def attach(self) -> None:
        for p in self.model.parameters():        # gradients w.r.t. the input only
            if p.requires_grad:
                p.requires_grad_(False)
                self._undo.append(lambda p=p: p.requires_grad_(True))
        self.hook(self.model.get_submodule(self.name), self._keep)

    def _keep(self, module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            self.output = output
            raise _Stop


def _forward_to(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of module `name` for input x, with its graph."""
    with _GradTap(model, name) as tap:
        try:
            model(x)
        except _Stop:
            pass
    if tap.output is None:
        raise RuntimeError(f"layer {name!r} did not run")
    return tap.output


def measure_centres(model: nn.Module, layer: str, layout: Layout, size: int, cells: list[tuple[int, int]],
                    inputs: int = INPUTS, seed: int = 0, device: torch.device | str = "cpu",
                    chunk: int = CHUNK) -> torch.Tensor:
    """Centroid (x, y), in model-input pixels, of mean |∂(Σ_c F[c, r, k])/∂x| for each cell: (n, 2)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(inputs, 3, size, size, generator=g).to(device)          # normalised-space noise
    jobs = [(cell, j) for cell in cells for j in range(inputs)]
    heat = torch.zeros(len(cells), size, size, dtype=torch.float64)
    training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for start in range(0, len(jobs), chunk):
                part = jobs[start:start + chunk]
                x = x0[[j for _, j in part]].clone().requires_grad_(True)   # (b, 3, S, S)
                f = to_grid(_forward_to(model, layer, x), layout)          # (b, C, H, W)
                rows = torch.tensor([c[0] for c, _ in part])
                cols = torch.tensor([c[1] for c, _ in part])
                f[torch.arange(len(part)), :, rows, cols].sum().backward()
                g_abs = x.grad.abs().sum(dim=1).double().cpu()             # (b, S, S)
                for (cell, _), gmap in zip(part, g_abs):
                    heat[cells.index(cell)] += gmap
    finally:
        model.train(training)
    pos = torch.arange(size, dtype=torch.float64) + 0.5                     # pixel centres
    total = heat.sum(dim=(1, 2)).clamp_min(1e-30)
    cx = (heat.sum(dim=1) * pos).sum(dim=1) / total
    cy = (heat.sum(dim=2) * pos).sum(dim=1) / total
    return torch.stack([cx, cy], dim=1)


def fingerprint(model: nn.Module) -> float:
    """A cheap number that changes with the weights (random inits differ; the same file agrees)."""
    with torch.no_grad():   # buffers too: BatchNorm statistics move the fields
        tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        return round(float(sum(t.double().abs().sum() * (i + 1) for i, t in enumerate(tensors))), 6)


def measure_geometry(model: nn.Module, layer: str, layout: Layout, grid: tuple[int, int], size: int,
                     key: tuple = (), device: torch.device | str = "cpu",
                     progress: Callable[[str], None] | None = None) -> Geometry:
    """The geometry of `layer` at input size `size` (cached by `key` + layer + size + weights)."""
    full = (*key, layer, size, tuple(grid), fingerprint(model))
    if full in geometry_cache:
        return geometry_cache[full]
    h, w = grid
    cells = [(min(k, h - 1), min(k, w - 1)) for k in range(max(h, w))]
    if progress:
        progress(f"measuring where the cells of {layer} look ({len(cells)} cells)")
    c = measure_centres(model, layer, layout, size, cells, device=device)
    geometry = Geometry(rows=Axis.fit(c[:h, 1].tolist()), cols=Axis.fit(c[:w, 0].tolist()), input_size=size)
    geometry_cache[full] = geometry
    return geometry
