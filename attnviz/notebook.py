"""attnviz in a notebook: `Analyser(model)(x)` — a model instance and a tensor batch (or images) in,
Results that draw exactly the pictures `attnviz run` and `attnviz explain` write.

    analyser = attnviz.Analyser(torchvision.models.resnet50(weights=...), categories=...)
    [r] = analyser(x)                  # x: (B, 3, S, S) in [0, 1]; normalized=True if mean/std applied
    r.overlay("spatial")               # the CLI's spatial.png, as a PIL image
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from attnviz.backbones.weights import RANDOM_NOTE
from attnviz.errors import AttnvizError
from attnviz.images import to_rgb
from attnviz.pipeline.analyser import Analyser as Engine
from attnviz.pipeline.api import analyse_with
from attnviz.report.atomic import encode_png
from attnviz.report.outputs import Style, grid_pictures, overlay_picture
from attnviz.results import AttentionMap, Result

__all__ = ["Analyser", "Drawer", "Results"]


class Results(list):
    """The Results of one call, in input order; a notebook shows each one's predictions and grid."""

    def _repr_html_(self) -> str:
        return "".join(r._repr_html_() or html.escape(repr(r)) for r in self)


class Analyser(Engine):
    """A model (an nn.Module instance, a backbone name or a Backbone) and the chosen kinds.

    `Analyser(model, kinds, *, mean, std, categories, tokens, name, **settings)`; the settings are the
    keywords of `attnviz.settings.SCHEMA` (`targets`, `texts`, `layer`, `tau` …, the CLI's options).
    """

    def __call__(self, x: Any, *, normalized: bool = False, images: Sequence[Image.Image] | None = None,
                 targets: Any = None, batch_size: int = 8) -> Results:
        """Maps and predictions of `x`, one Result per image, in order (one forward pass per batch).

        `x`: a float tensor (B, 3, S, S) or (3, S, S) with S the model's input side — by default in
        [0, 1] and NOT normalised (attnviz applies the model's mean/std, as the CLI does);
        `normalized=True` when mean/std are already applied (what the model's own transform gives).
        Or: a PIL image, a path, a folder, or a list of them (read and resized as `attnviz run` does).
        `images`: the originals a tensor was made from (sizes, and what the pictures are drawn on);
        default: the tensor itself, un-normalised. `targets`: a class index or name for every image,
        or a list with one per image (the derived cross map's class; default: the top-1 class).
        """
        if isinstance(x, torch.Tensor):
            results = self._tensor(x, normalized, images, targets)
        else:
            if images is not None or normalized:
                raise AttnvizError("images= and normalized= go with a tensor input; these are images already")
            if isinstance(targets, (int, str)):
                targets = [targets] * len(_count(x))
            results = analyse_with(self, x, batch_size, keep_images=True, targets=targets)
        drawer = Drawer(self)
        for r in results:
            r.drawer = drawer
        return Results(results)

    def _tensor(self, x: torch.Tensor, normalized: bool, images: Sequence[Image.Image] | None,
                targets: Any) -> list[Result]:
        bb = self.backbone
        if x.dim() == 3:
            x = x[None]
        s = bb.input_size
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise AttnvizError(f"x: expected a float tensor (B, 3, {s}, {s}), got {x.dtype} {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (s, s):
            raise AttnvizError(f"x is {x.shape[-2]}×{x.shape[-1]}; {bb.name} reads {s}×{s} inputs here "
                               f"(resize it, or build the Analyser with input_size={x.shape[-1]})")
        x = x.detach()
        mean = torch.tensor(bb.mean, device=x.device)[None, :, None, None]
        std = torch.tensor(bb.std, device=x.device)[None, :, None, None]
        if normalized:
            raw, xn = x * std + mean, x.to(bb.device)
        else:
            lo, hi = float(x.min()), float(x.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise AttnvizError(f"x holds values from {lo:.3g} to {hi:.3g}, outside [0, 1]: if mean/std "
                                   f"are already applied, pass normalized=True")
            raw, xn = x, self.normalise(x)
        n = x.shape[0]
        if images is not None:
            pictures = [to_rgb(im) for im in images]
            if len(pictures) != n:
                raise AttnvizError(f"images: {len(pictures)} for a batch of {n}; give one per tensor image")
        else:
            pictures = [_picture(t) for t in raw]
        per_image = None
        if targets is not None:
            per_image = [targets] * n if isinstance(targets, (int, str)) else list(targets)
            if len(per_image) != n:
                raise AttnvizError(f"targets: {len(per_image)} for a batch of {n}; give one, or one per image")
            per_image = [(t,) for t in per_image]
        out = []
        for i, (preds, maps) in enumerate(self.forward_batch(xn.float(), pictures, None, per_image)):
            out.append(Result(f"<tensor {i}>", Path(f"<tensor {i}>"), f"image_{i}", size=pictures[i].size,
                              predictions=preds, maps=maps, image=pictures[i]))
        return out


def _count(x: Any) -> list[Any]:
    from attnviz.images import discover
    items = [x] if isinstance(x, (str, Path, Image.Image)) else list(x)
    return [u for it in items for u in ([it] if isinstance(it, Image.Image) else discover([it]))]


def _picture(t: torch.Tensor) -> Image.Image:
    """A (3, S, S) tensor in [0, 1] as an 8-bit RGB image."""
    a = (t.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().contiguous().numpy()
    return Image.fromarray(a, "RGB")


class Drawer:
    """Draws a Result of one Analyser with the CLI's own functions (same pixels as its files)."""

    def __init__(self, analyser: Engine) -> None:
        self.analyser = analyser
        self.device = analyser.backbone.device

    def style(self, **style: Any) -> Style:
        """The run's Style with `size`, `colormap`, `alpha` (and the random-weights banner, as the CLI)."""
        unknown = set(style) - {"size", "colormap", "alpha", "top_k"}
        if unknown:
            raise AttnvizError(f"unknown style option {sorted(unknown)[0]!r}; use size, colormap, alpha, top_k")
        banner = "" if self.analyser.backbone.pretrained else RANDOM_NOTE
        return Style(**style, banner=banner)

    def overlay(self, r: Result, m: AttentionMap, **style: Any) -> Image.Image:
        """`<name>.png` of `attnviz run`."""
        return overlay_picture(m, r.image, self.style(**style))

    def grid(self, r: Result, **style: Any) -> Image.Image:
        """`grid.png` of `attnviz run` (its first page)."""
        return grid_pictures(r, r.image, self.style(**style))[0]

    def explain(self, r: Result, kind: str) -> Image.Image:
        """`<kind>.png` of `attnviz explain` on this image, with this analyser's model and settings."""
        from attnviz.explain import explain, strip_bytes
        config = self.analyser.config
        settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        source = Path(r.source).name if r.path.is_file() else None
        image = r.path if source else r.image
        ex = explain(image, kind, backbone=self.analyser.backbone, **settings)
        return Image.open(io.BytesIO(strip_bytes(ex, ex.strip(kind), "png")))

    def png(self, r: Result) -> bytes:
        """The grid as PNG bytes (a notebook's inline picture)."""
        return encode_png(self.grid(r))

    def html(self, r: Result) -> str:
        """Predictions, then the grid inline."""
        top = ", ".join(f"{html.escape(p.label)} {100 * p.probability:.1f} %" for p in r.predictions[:3])
        head = f"<b>{html.escape(r.source)}</b>" + (f" · top: {top}" if top else "")
        if r.status != "ok" or not r.maps:
            return f"<div>{head} · {html.escape(r.error or 'no maps')}</div>"
        data = base64.b64encode(self.png(r)).decode("ascii")
        return f'<div>{head}<br><img src="data:image/png;base64,{data}"/></div>'
