"""The Backbone record every family returns, and a one-forward description of its layers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from attnviz.maps import Layout
from attnviz.results import AttentionMap, Options

__all__ = ["Backbone", "LayerInfo", "describe_layers", "find_classifier", "last_linear", "last_stage",
           "logits_of", "POOLING", "checked_token_head"]

POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


def logits_of(output: Any) -> torch.Tensor:
    """A model's logits: the tensor itself, `.logits` (HF ModelOutput), key "logits", or the first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        values = [output["logits"]] if "logits" in output else list(output.values())
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        values = []
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"the model returned {type(output).__name__} with no logits tensor in it")


@dataclass(frozen=True)
class LayerInfo:
    """A module whose output is a spatial feature map, as seen in one dummy forward."""

    name: str
    type: str
    shape: tuple[int, ...]         # output shape without the batch dimension
    layout: Layout
    channels: int
    grid: tuple[int, int]          # (H, W) feature resolution


@dataclass
class Backbone:
    """A loaded model plus everything attnviz needs to know about it."""

    name: str                      # "resnet50", "clip:ViT-B-16", "demo"
    model: nn.Module               # eval mode, on `device`
    weights: str                   # what was loaded: enum name, file path, or "none"
    pretrained: bool               # False: random init, maps mean nothing
    categories: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int                # the model sees the whole image squashed to input_size²
    default_layer: str
    layers: dict[str, LayerInfo]   # every layer `--layer` accepts, in execution order
    classifier: nn.Linear | None = None   # linear head over pooled features (derived cross)
    classifier_layer: str | None = None   # the layer that head pools
    tokens: tuple[int, tuple[int, int]] | None = None   # self-attention tokens: (prefix, patch grid)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    notes: list[str] = field(default_factory=list)
    interpolation: str = "bilinear"       # resampling the weights were trained with (timm, HF configs)
    # block output tokens (B, N, C) -> logits through the model's own final norm, pooling and head
    # (self-legrad); None where the family cannot say
    token_head: Callable[[torch.Tensor], torch.Tensor] | None = None

    native_cross: bool = False            # True: `cross_maps` reads the model's own text→image attention
    own_prompts: bool = False             # True: with no --text it finds prompts itself (top-1 class)

    def prepare(self, options: Options) -> None:
        """Read the run's options before any image (a text model encodes its prompts here)."""

    def set_images(self, images: list[Any]) -> None:
        """The decoded images of the next forward, for a backbone that reads more than the squashed input."""

    def forward(self, x: torch.Tensor, prompts: list[list[str]] | None = None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Class logits (B, K) for a normalised batch (B, 3, S, S), and anything else it computed.

        `prompts` (one list per image) reaches text backbones only; classifiers ignore it.
        """
        return logits_of(self.model(x)), {}

    def cross_maps(self, batch: Any) -> list[list[AttentionMap]]:
        """Native cross-attention maps of a batch (only when `native_cross`)."""
        raise NotImplementedError(f"{self.name} has no native cross-attention")

    def layer(self, name: str) -> LayerInfo:
        """The LayerInfo for `name`; unknown names raise KeyError."""
        return self.layers[name]


def _layout_of(shape: tuple[int, ...], vit: tuple[int, tuple[int, int]] | None,
               other: tuple[int, ...] | None = None) -> Layout | None:
    """The layout of one module output, from its shape (and its shape at another input size)."""
    if len(shape) == 4:
        _, a, b, c = shape
        if a == b == c and other is not None and len(other) == 4:   # H == W == C: see what grew
            return Layout("NHWC") if other[1] != a and other[3] == c else Layout("NCHW")
        if b == c:                       # inputs are square, so NCHW maps have H == W
            return Layout("NCHW")
        if a == b:
            return Layout("NHWC")
        return None
    if len(shape) == 3 and vit is not None:
        prefix, grid = vit
        if shape[1] == prefix + grid[0] * grid[1]:
            return Layout("NLC", prefix=prefix, grid=grid)
    return None


def _trace(model: nn.Module, size: int, device: torch.device
           ) -> tuple[dict[str, tuple[int, ...]], list[tuple[str, nn.Module]]]:
    """Output shape of every module (at its last call) and the completion order, for one forward."""
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[tuple[str, nn.Module]] = []
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, args, output) -> None:
            order.append((name, module))
            if isinstance(output, torch.Tensor):
                shapes.pop(name, None)          # a module called twice counts at its last call
                shapes[name] = tuple(output.shape)
        return fn

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook(name)))
        model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
    return shapes, order


@torch.no_grad()
def describe_layers(model: nn.Module, input_size: int, device: torch.device,
                    vit: tuple[int, tuple[int, int]] | None = None
                    ) -> tuple[dict[str, LayerInfo], list[tuple[str, nn.Module]]]:
    """Run one dummy forward; return the spatial layers and the modules in completion order."""
    shapes, order = _trace(model, input_size, device)
    others: dict[str, tuple[int, ...]] = {}
    if any(len(sh) == 4 and sh[1] == sh[2] == sh[3] for sh in shapes.values()):
        try:   # C == H == W somewhere: a second size tells channels from space
            others, _ = _trace(model, input_size + 32, device)
        except Exception:  # noqa: BLE001  (a model fixed to one input size: keep the first guess)
            pass
    modules = dict(model.named_modules())
    seen: dict[str, LayerInfo] = {}
    for name, shape in shapes.items():
        layout = _layout_of(shape, vit, others.get(name))
        if layout is None:
            continue
        inner = shape[1:]
        if layout.kind == "NCHW":
            c, grid = inner[0], (inner[1], inner[2])
        elif layout.kind == "NHWC":
            c, grid = inner[2], (inner[0], inner[1])
        else:
            c, grid = inner[1], layout.grid
        seen[name] = LayerInfo(name, type(modules[name]).__name__, inner, layout, c, grid)
    return seen, order


def last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The last nn.Linear of the model by registration order, with its name."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return found[-1] if found else None


def find_classifier(order: list[tuple[str, nn.Module]], layers: dict[str, LayerInfo], n_classes: int):
    """The linear head over a pooled spatial layer: (Linear, layer) or (None, None) for MLP heads."""
    linears = [i for i, (_, m) in enumerate(order) if isinstance(m, nn.Linear)]
    if not linears:
        return None, None
    last = linears[-1]
    head = order[last][1]
    if head.out_features != n_classes:
        return None, None
    for i in range(last - 1, -1, -1):
        name, module = order[i]
        if isinstance(module, nn.Linear):
            return None, None      # another linear layer in between: an MLP head, not CAM-able
        info = layers.get(name)
        if info is not None and info.grid != (1, 1) and not isinstance(module, POOLING):
            if info.layout.kind == "NLC":
                return None, None  # a token head reads the class token: it pools no feature map
            return (head, name) if info.channels == head.in_features else (None, None)
    return None, None


def last_stage(model: nn.Module, layers: dict[str, LayerInfo], n_classes: int) -> str:
    """The last spatial feature map before the head (pools and conv classifiers skipped)."""
    modules = dict(model.named_modules())
    stages = [n for n, i in layers.items() if i.grid != (1, 1) and i.channels != n_classes
              and not isinstance(modules[n], POOLING)]
    if not stages:
        raise ValueError("the model produces no spatial feature map")
    return stages[-1]


def checked_token_head(model: nn.Module, head: Callable[[torch.Tensor], torch.Tensor], last_block: nn.Module,
                       size: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """`head` if, on the last block's output for a random input, it gives the model's own logits; else None."""
    seen: dict[str, Any] = {}

    def keep(module: nn.Module, args: tuple, output: Any) -> None:
        seen["z"] = output[0] if isinstance(output, (tuple, list)) else output

    handle = last_block.register_forward_hook(keep)
    try:
        with torch.no_grad():
            x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
            logits = logits_of(model(x)).float()
            got = head(seen["z"]).float()
    except Exception:  # noqa: BLE001  (a head that does not fit this model: self-legrad says so)
        return None
    finally:
        handle.remove()
    if got.shape != logits.shape:
        return None
    return head if float((got - logits).abs().max()) <= 1e-4 * max(1.0, float(logits.abs().max())) else None
