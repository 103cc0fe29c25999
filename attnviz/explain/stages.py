"""explain(): one forward pass with the Analyser and a StageTap, then a strip of stages per kind."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from attnviz.backbones import Backbone
from attnviz.errors import AttnvizError, ImageError
from attnviz.settings import split_list
from attnviz.explain import attend, gates, gradients, mixed
from attnviz.explain.capture import StageTap
from attnviz.explain.context import Context
from attnviz.explain.panels import Strip
from attnviz.images import load_image, to_rgb
from attnviz.pipeline import Analyser
from attnviz.results import Prediction

__all__ = ["EXPLAIN_KINDS", "Explained", "explain", "parse_kinds"]

Builder = tuple[list[str], Callable[[Analyser], list[str]], Callable[[Context], Strip]]

# explain kind -> (the Analyser kinds it draws, the modules to tap, the strip builder)
EXPLAIN_KINDS: dict[str, Builder] = {
    "channel": (["channel"], gates.channel_modules, gates.channel_strip),
    "spatial": (["spatial"], gates.spatial_modules, gates.spatial_strip),
    "mixed": (["mixed-serial", "mixed-parallel"], mixed.mixed_modules, mixed.mixed_strip),
    "self": (["self"], attend.self_modules, attend.self_strip),
    "cross": (["cross"], attend.cross_modules, attend.cross_strip),
    "self-gae": (["self-gae"], gradients.no_modules, gradients.gae_strip),
    "self-legrad": (["self-legrad"], gradients.no_modules, gradients.legrad_strip),
}


@dataclass
class Explained:
    """The strips of one image, and what produced them."""

    source: str
    image: Image.Image
    backbone: str
    weights: str
    pretrained: bool
    strips: list[Strip]
    predictions: list[Prediction] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def strip(self, kind: str) -> Strip:
        """The strip of `kind`."""
        return next(s for s in self.strips if s.kind == kind)


def parse_kinds(kinds: str | Sequence[str]) -> list[str]:
    """`all`, one kind or several (comma-separated or a list), in canonical order; unknown ones fail."""
    names = split_list(kinds)
    if not names:
        raise AttnvizError(f"--kind: name one of {', '.join(EXPLAIN_KINDS)} or all")
    if "all" in names:       # the raw kinds; the gradient strips only when named
        return [k for k in EXPLAIN_KINDS if not k.startswith("self-")]
    bad = [n for n in names if n not in EXPLAIN_KINDS]
    if bad:
        raise AttnvizError(f"--kind {bad[0]!r}: use one of {', '.join(EXPLAIN_KINDS)} or all")
    return [k for k in EXPLAIN_KINDS if k in names]


def _load(image: str | Path | Image.Image) -> tuple[str, Image.Image]:
    if isinstance(image, Image.Image):
        return "<image>", to_rgb(image)
    path = Path(image)
    if path.is_dir():
        raise AttnvizError(f"{path}: a folder; `attnviz explain` takes one image file")
    try:
        return path.name, load_image(path)
    except ImageError as e:
        raise AttnvizError(f"{path}: {e}") from None


def _place(strips: list[Strip], ctx: Context) -> None:
    """Give every overlay panel its layer's geometry, so it is drawn as `attnviz run` draws it: the
    final panel the geometry of the map it equals, the others that of their source layer."""
    for strip in strips:
        final = {id(p): ctx.maps[name] for name, p in strip.finals.items() if name in ctx.maps}
        for p in [q for row in strip.rows for q in row if q is not None] + ([strip.side] if strip.side else []):
            if p.view != "overlay" or p.geometry is not None:
                continue
            if id(p) in final and final[id(p)].shape == p.data.shape:
                p.geometry = final[id(p)].geometry
            elif p.source in ctx.bb.layers:
                p.geometry = ctx.analyser.aligner.geometry(p.source, p.data.shape)


def explain(image: str | Path | Image.Image, kinds: str | Sequence[str] = "all",
            backbone: str | Backbone = "resnet50", **options: Any) -> Explained:
    """Every stage of each kind's mechanism on one image, from the model's own forward pass."""
    chosen = parse_kinds(kinds)
    source, rgb = _load(image)
    wanted = [k for kind in chosen for k in EXPLAIN_KINDS[kind][0]]
    analyser = Analyser(backbone, wanted, **options)
    names = list(dict.fromkeys(n for kind in chosen for n in EXPLAIN_KINDS[kind][1](analyser)))
    bb = analyser.backbone
    with torch.no_grad(), StageTap(bb.model, names) as tap:   # the Analyser's own forward fills the tap
        [(predictions, maps)] = analyser.analyse_batch([rgb])
    ctx = Context(analyser, rgb, tap, {m.name: m for m in maps}, predictions)
    strips = [EXPLAIN_KINDS[kind][2](ctx) for kind in chosen]
    _place(strips, ctx)
    notes = list(analyser.notes) + ([] if bb.pretrained else
                                    ["random-init weights: the numbers are real, their meaning is not"])
    return Explained(source, rgb, bb.name, bb.weights, bb.pretrained, strips, predictions, notes)
