"""Plain result types returned by the Python API (float32 NumPy arrays on the CPU)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from attnviz.geometry import Geometry

Provenance = Literal["native", "derived"]
OUTLIER_MODES = ("keep", "mask", "interpolate")   # what --outliers does to high-norm patch tokens


@dataclass
class AttentionMap:
    """One attention map at feature resolution, with where it came from."""

    kind: str                      # registered kind that made it: "channel", "self", "cross" ...
    name: str                      # unique within an image; file stem and npz key ("cross-tabby-cat")
    provenance: Provenance         # "native": a trained attention module was read; "derived": a formula
    layer: str                     # module the map was computed from
    data: np.ndarray               # (H, W) float32, raw (not normalised for display)
    weights: np.ndarray | None = None          # (C,) channel weights, for the channel kind
    meta: dict[str, Any] = field(default_factory=dict)  # prompt, query, classes ...
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # "heads" (h, H, W), "gate:<name>" (C,)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the map."""
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def geometry(self) -> Geometry | None:
        """Where its cells lie in the image (meta "geometry", set by the Analyser); None: their blocks' centres."""
        g = Geometry.from_record(self.meta.get("geometry"))
        return g if g is not None and g.fits(self.shape) else None


@dataclass
class Prediction:
    """One of the backbone's top-k classes for an image."""

    index: int
    label: str
    probability: float


@dataclass
class Result:
    """Everything attnviz learned about one image."""

    source: str                    # path relative to its input root, as shown to the user
    path: Path                     # absolute path read
    output: str                    # output folder relative to OUT ("sub/cat")
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    size: tuple[int, int] | None = None        # (width, height) after EXIF orientation
    predictions: list[Prediction] = field(default_factory=list)
    maps: list[AttentionMap] = field(default_factory=list)
    source_bytes: str | None = None            # hex of the file name's bytes when not UTF-8

    def map(self, name: str) -> AttentionMap:
        """The map called `name` ("spatial", "cross-tabby-cat" ...)."""
        for m in self.maps:
            if m.name == name:
                return m
        raise KeyError(f"no map {name!r}; have {[m.name for m in self.maps]}")


@dataclass(frozen=True)
class Options:
    """Settings the kinds read (all optional)."""

    tau: float = 0.1                            # temperature of derived self-attention
    query: tuple[float, float] | None = None    # (x, y) in image pixels; default: spatial peak
    texts: tuple[str, ...] = ()                 # cross-attention prompts
    self_layer: str | None = None               # attention module for per-head maps (default: last)
    per_word: bool = False                      # native cross: a map per content word of each prompt
    contrast: bool = False                      # native cross: also each prompt minus the others' mean
    variant: str = "value"                      # CLIP patch tokens: a variant (value, clear, sclip, naclip, plain) or "all"
    slide: tuple[int, int, int] | None = None   # CLIP --slide: (window, stride, short side) in pixels
    outliers: str = "keep"                      # high-norm patch tokens: keep | mask (NaN) | interpolate
    targets: tuple[str, ...] = ()               # gradient kinds: class names or indices (default: top-1)
