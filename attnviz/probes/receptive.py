"""Measure where a layer's cells look: centroid and spread of mean |∂cell/∂input| over random inputs.

One forward per chunk of inputs (stopped at the measured layer), then one backward per cell
through the kept graph. Cells along a diagonal give rows' y and columns' x at once (the fields
of a convolutional stack are separable to first order); only the cells near each border are
measured (`sampled`), the ones between interpolated. Cached in memory by backbone,
weights, layer and input size (and a fingerprint of the weights, so two random inits never
share an entry); `pipeline.align` adds the disk cache.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from attnviz.geometry import Axis, Geometry, gaussian_field
from attnviz.maps import Layout, to_grid
from attnviz.probes.base import Probe

__all__ = ["measure_fields", "measure_centres", "sampled", "measure_geometry", "fingerprint", "weights_hash",
           "geometry_cache"]

INPUTS = 2        # random inputs averaged per cell (resnet18 layer4: r ≥ 0.97 against 8, see tests)
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


def measure_fields(model: nn.Module, layer: str, layout: Layout, size: int, cells: list[tuple[int, int]],
                   inputs: int = INPUTS, seed: int = 0, device: torch.device | str = "cpu",
                   chunk: int = CHUNK) -> torch.Tensor:
    """Centroid (x, y) and spread (σx, σy), in model-input pixels, of mean |∂(Σ_c F[c, r, k])/∂x|
    over `inputs` standard-normal inputs, for each cell: (n, 4). One forward per chunk of inputs,
    then one backward per cell through the kept graph."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(inputs, 3, size, size, generator=g).to(device)          # normalised-space noise
    heat = torch.zeros(len(cells), 2, size, dtype=torch.float64)              # x- and y-marginals
    training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for start in range(0, inputs, chunk):
                x = x0[start:start + chunk].clone().requires_grad_(True)      # (b, 3, S, S)
                f = to_grid(_forward_to(model, layer, x), layout)            # (b, C, H, W)
                for k, (r, c) in enumerate(cells):
                    (grad,) = torch.autograd.grad(f[:, :, r, c].sum(), x, retain_graph=k < len(cells) - 1)
                    g_abs = grad.abs().sum(dim=(0, 1)).double().cpu()        # (S, S), rows y, columns x
                    heat[k, 0] += g_abs.sum(dim=0)
                    heat[k, 1] += g_abs.sum(dim=1)
                del f
    finally:
        model.train(training)
    pos = torch.arange(size, dtype=torch.float64) + 0.5                     # pixel centres
    w = heat / heat.sum(dim=2, keepdim=True).clamp_min(1e-30)                # (n, 2, S), unit mass
    mean = (w * pos).sum(dim=2)                                              # (n, 2)
    spread = ((w * (pos - mean[..., None]) ** 2).sum(dim=2)).sqrt()
    return torch.cat([mean, spread], dim=1)


def measure_centres(model: nn.Module, layer: str, layout: Layout, size: int, cells: list[tuple[int, int]],
                    inputs: int = INPUTS, seed: int = 0, device: torch.device | str = "cpu",
                    chunk: int = CHUNK) -> torch.Tensor:
    """Centroid (x, y), in model-input pixels, of mean |∂(Σ_c F[c, r, k])/∂x| for each cell: (n, 2)."""
    return measure_fields(model, layer, layout, size, cells, inputs, seed, device, chunk)[:, :2]


def sampled(n: int) -> list[int]:
    """The indices measured along an axis of n cells: two at each border (three from 10 cells on),
    where the padding bends the fields; the cells between are interpolated linearly (inside, the
    fields are translates of each other: resnet18 layer4 at 224 px, ≤ 0.06 cell off)."""
    edge = (0, 1, 2, n - 3, n - 2, n - 1) if n >= 10 else (0, 1, n - 2, n - 1)
    return sorted({i for i in edge if 0 <= i < n})


def fingerprint(model: nn.Module) -> float:
    """A cheap number that changes with the weights (random inits differ; the same file agrees)."""
    with torch.no_grad():   # buffers too: BatchNorm statistics move the fields
        tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        return round(float(sum(t.double().abs().sum() * (i + 1) for i, t in enumerate(tensors))), 6)


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of every weight and buffer (names, dtypes, shapes, bytes): the disk cache's key."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
            if not t.numel():
                continue
            t = t.detach().cpu()
            try:
                h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())    # no copy of the bytes
            except (RuntimeError, TypeError):      # quantized and other exotic tensors: their values
                h.update((t.dequantize() if t.is_quantized else t).double().numpy().tobytes())
    return h.hexdigest()


def measure_geometry(model: nn.Module, layer: str, layout: Layout, grid: tuple[int, int], size: int,
                     key: tuple = (), device: torch.device | str = "cpu",
                     progress: Callable[[str], None] | None = None) -> Geometry:
    """The geometry of `layer` at input size `size` (cached by `key` + layer + size + weights)."""
    full = (*key, layer, size, tuple(grid), fingerprint(model))
    if full in geometry_cache:
        return geometry_cache[full]
    h, w = grid
    ys, xs = sampled(h), sampled(w)
    k = max(len(ys), len(xs))
    cells = [(ys[min(i, len(ys) - 1)], xs[min(i, len(xs) - 1)]) for i in range(k)]   # a diagonal
    if progress:
        progress(f"measuring the receptive fields of {layer} ({len(cells)} cells)")
    f = measure_fields(model, layer, layout, size, cells, device=device).numpy()      # (k, 4)

    def axis(idx: list[int], n: int, col: int) -> Axis:
        at = lambda v: np.interp(np.arange(n), idx, v[:len(idx)])   # noqa: E731
        mean, std = at(f[:, col]), at(f[:, col + 2])
        return Axis.fit(mean.tolist(), *gaussian_field(mean, std, size))
    geometry = Geometry(rows=axis(ys, h, 1), cols=axis(xs, w, 0), input_size=size)
    geometry_cache[full] = geometry
    return geometry
