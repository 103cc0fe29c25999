"""Plain result types returned by the Python API (float32 NumPy arrays on the CPU)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from attnviz.geometry import Geometry
from attnviz.settings import OUTLIER_MODES, SCHEMA

__all__ = ["AttentionMap", "Prediction", "Result", "Options", "OUTLIER_MODES", "Provenance"]

Provenance = Literal["native", "derived"]


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

    def numpy(self) -> np.ndarray:
        """The raw map (H, W) as a float32 NumPy array (not normalised for display)."""
        return np.asarray(self.data, dtype=np.float32)

    def tensor(self, device: Any = "cpu") -> Any:
        """The raw map as a torch tensor (H, W) on `device`."""
        import torch
        return torch.from_numpy(self.numpy().copy()).to(device)


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
    input: dict[str, Any] | None = None        # the file's identity: {"bytes": n, "sha256": hex} (resume)
    image: Any = field(default=None, repr=False, compare=False)   # the decoded RGB image (Python API only)
    drawer: Any = field(default=None, repr=False, compare=False)  # draws it as the CLI does (attnviz.notebook)

    def map(self, name: str) -> AttentionMap:
        """The map called `name` ("spatial", "cross-tabby-cat" ...), or the first map of kind `name`."""
        for m in self.maps:
            if m.name == name:
                return m
        for m in self.maps:
            if m.kind == name:
                return m
        raise KeyError(f"no map {name!r}; have {[m.name for m in self.maps]}")

    def numpy(self, name: str) -> np.ndarray:
        """Map `name` (a name or a kind) as a float32 NumPy array (H, W), raw."""
        return self.map(name).numpy()

    def tensor(self, name: str) -> Any:
        """Map `name` as a torch tensor (H, W) on the model's device."""
        return self.map(name).tensor(getattr(self.drawer, "device", "cpu"))

    def _draw(self) -> Any:
        if self.drawer is None or self.image is None:
            raise ValueError("this Result cannot draw: make it with attnviz.Analyser(model)(images or tensor)")
        return self.drawer

    def overlay(self, name: str | None = None, **style: Any) -> Any:
        """The CLI's `<name>.png` of map `name` (a name or a kind; default: the first map), as a PIL image.

        `style`: size, colormap, alpha (the `attnviz run` options of the same names)."""
        return self._draw().overlay(self, self.map(name) if name else self.maps[0], **style)

    def grid(self, **style: Any) -> Any:
        """The CLI's `grid.png` (the original and every map, titled), as a PIL image."""
        return self._draw().grid(self, **style)

    def explain(self, kind: str) -> Any:
        """The CLI's `attnviz explain` picture `<kind>.png` for this image, as a PIL image."""
        return self._draw().explain(self, kind)

    def _repr_png_(self) -> bytes | None:
        """Notebooks show the grid."""
        return None if self.drawer is None or self.image is None or not self.maps else self.drawer.png(self)

    def _repr_html_(self) -> str | None:
        """Notebooks show the predictions above the grid."""
        return None if self.drawer is None or self.image is None else self.drawer.html(self)

    def __dir__(self) -> list[str]:
        """Tab completion: the fields and methods, then the maps by attribute name (`r.cross_tabby`)."""
        public = [k for k in (*type(self).__dict__, *(f.name for f in dataclasses.fields(self))) if not k.startswith("_")]
        return sorted(set(public)) + [m.name.replace("-", "_") for m in self.maps]

    def __getattr__(self, key: str) -> AttentionMap:
        if key.startswith("_") or key in ("maps",):
            raise AttributeError(key)
        for m in self.__dict__.get("maps", ()):
            if m.name.replace("-", "_") == key:
                return m
        raise AttributeError(f"'Result' has no attribute or map {key!r}")


# the settings the kinds read: the schema's `kinds` settings (attnviz.settings), all optional
Options = dataclasses.make_dataclass(
    "Options", [(s.name, Any, field(default=s.default)) for s in SCHEMA.values() if s.kinds], frozen=True)
Options.__module__ = __name__          # pickles by name (Ray actors receive it)
Options.__doc__ = "Settings the kinds read (all optional): " + ", ".join(
    f"{s.name} ({s.help})" for s in SCHEMA.values() if s.kinds)
