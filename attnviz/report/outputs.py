"""Per-image outputs (original, overlays, bar chart, grid, raw maps) and their manifest entry."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from attnviz.errors import AttnvizError
from attnviz.maps import cell_centre, is_flat, query_point
from attnviz.render import GridCell, GridRow, blender, channel_bars, channel_depth, fit, grid
from attnviz.render.band import banded
from attnviz.render.draw import ring
from attnviz.report.atomic import FORMATS, save_image, save_npz, save_png
from attnviz.results import AttentionMap, Result
from attnviz.text import shown

__all__ = ["MAX_SIZE", "Style", "write_outputs", "written", "image_entry", "map_entry"]


MAX_SIZE = 8192   # longest side of a written picture: 67 MP, under Pillow's decompression-bomb limit


@dataclass(frozen=True)
class Style:
    """How maps are drawn."""

    size: int = 512           # longest side of every overlay, in pixels
    colormap: str = "jet"
    alpha: float = 0.5
    top_k: int = 20           # bars in channel_weights.png
    format: str = "png"       # overlays (and original): png, jpg or webp; charts and grids stay PNG
    banner: str = ""          # a warning on every picture (the random-weights band, render/band.py)

    def mark(self, image: Image.Image) -> Image.Image:
        """`image` with the band above it when there is a banner (grids draw theirs in their layout)."""
        return banded(image, self.banner) if self.banner else image

    @property
    def ext(self) -> str:
        """File suffix of the overlays."""
        return FORMATS[self.format][0]

    def __post_init__(self) -> None:
        """One-line errors for values no picture can be drawn with."""
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 16 <= self.size <= MAX_SIZE:
            raise AttnvizError(f"--size {self.size!r}: use a whole number from 16 to {MAX_SIZE}")
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha <= 1):
            raise AttnvizError(f"--alpha {self.alpha!r}: use a number from 0 to 1")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise AttnvizError(f"--top-k {self.top_k!r}: use a whole number ≥ 1")
        if self.format not in FORMATS:
            names = list(FORMATS)
            raise AttnvizError(f"--format {self.format!r}: use {', '.join(names[:-1])} or {names[-1]}")


def map_entry(m: AttentionMap, size: tuple[int, int], ext: str = "png") -> dict[str, Any]:
    """The manifest record of one map: provenance, files and statistics."""
    d = m.data
    finite = d[np.isfinite(d)] if d.size else d
    row, col = np.unravel_index(int(np.nanargmax(d)), d.shape) if finite.size else (0, 0)
    return {"kind": m.kind, "name": m.name, "provenance": m.provenance, "layer": m.layer,
            "file": f"{m.name}.{ext}", "npz_key": m.name, "shape": list(d.shape),
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "mean": float(finite.mean()) if finite.size else None,
            "peak": cell_centre((int(row), int(col)), size, d.shape, m.geometry),
            "npz_extras": [f"{m.name}_weights"] * (m.weights is not None) + [f"{m.name}_{k}" for k in m.extras],
            **_jsonable(m.meta)}


def image_entry(r: Result, ext: str = "png") -> dict[str, Any]:
    """The manifest record of one image (ok or error)."""
    return {"source": r.source, **({"source_bytes": r.source_bytes} if r.source_bytes else {}),
            **({"input": r.input} if r.input else {}),
            "output": r.output, "status": r.status, "error": r.error,
            "size": list(r.size) if r.size else None,
            "predictions": [{"index": p.index, "label": p.label, "probability": p.probability}
                            for p in r.predictions],
            "maps": [map_entry(m, r.size, ext) for m in r.maps] if r.size else []}


def write_outputs(out: Path, r: Result, image: Image.Image, style: Style,
                  boxes: Sequence[Sequence[float]] = ()) -> list[str]:
    """Write every file of one image under OUT/<r.output>/ (each file atomically); their names."""
    folder = out / r.output
    if not folder.resolve().is_relative_to(out.resolve()):   # image names never escape OUT
        raise OSError(f"output folder {r.output!r} would lie outside {out}")
    fitted = fit(image, style.size)                # resized once, shared by every overlay
    save_image(folder / f"original.{style.ext}", style.mark(fitted), style.format)
    paint = blender(fitted, style.colormap, style.alpha)    # the image's share computed once
    arrays: dict[str, np.ndarray] = {}
    cells = [GridCell("original", None)]
    for m in r.maps:
        point = query_point(m.kind, m.name, m.meta, image.size)
        painted = paint(m.data, m.geometry)
        if point is not None:                       # the query this map is the row of
            ring(ImageDraw.Draw(painted), point[0] * painted.width, point[1] * painted.height,
                 max(4, min(painted.size) // 40))
        save_image(folder / f"{m.name}.{style.ext}", style.mark(painted), style.format)
        arrays[m.name] = m.data.astype(np.float32)
        flat = " · flat" if is_flat(m.data) else ""
        cells.append(GridCell(f"{_title(m)}\n{m.provenance}{flat}", m.data, m.geometry, point))
        if m.weights is not None:
            arrays[f"{m.name}_weights"] = m.weights.astype(np.float32)
            title = f"{m.name} weights · {m.layer} · {m.provenance} · {len(m.weights)} channels"
            save_png(folder / f"{m.name}_weights.png", style.mark(channel_bars(m.weights, style.top_k, title)))
        arrays.update({f"{m.name}_{k}": v.astype(np.float32) for k, v in m.extras.items()})
        _write_extras(folder, m, image, style)
    for name, rows in zip(grid_names(len(cells)), _grid_pages(image, cells, shown(r.source), boxes)):
        save_png(folder / name, grid(rows, style.colormap, style.alpha, banner=style.banner))
    save_npz(folder / "maps.npz", arrays)
    return written(r, style.ext)


def written(r: Result, ext: str = "png") -> list[str]:
    """The files `write_outputs` writes for `r`, relative to its folder (the manifest's "files")."""
    files = [f"original.{ext}"]
    for m in r.maps:
        files.append(f"{m.name}.{ext}")
        if m.weights is not None:
            files.append(f"{m.name}_weights.png")
        if any(k.startswith("gate:") for k in m.extras):
            files.append("channel_depth.png")
        if m.extras.get("heads") is not None:
            files.append(f"{m.name}-heads.png")
    return list(dict.fromkeys([*files, *grid_names(len(r.maps) + 1), "maps.npz"]))


GRID_COLUMNS = 12           # cells per grid row; more maps wrap onto further rows
GRID_ROWS = 40              # rows per grid picture (about 15 MP at 256 px cells); more: grid-2.png …


def grid_names(n_cells: int) -> list[str]:
    """grid.png, then grid-2.png, grid-3.png … when the cells need more than GRID_ROWS rows, so that
    no picture passes Pillow's decompression-bomb limit (2,500 prompts make 6 pictures, not one)."""
    rows = -(-n_cells // GRID_COLUMNS)
    return ["grid.png"] + [f"grid-{k}.png" for k in range(2, -(-rows // GRID_ROWS) + 1)]


def _grid_pages(image: Image.Image, cells: list[GridCell], label: str, boxes) -> list[list[GridRow]]:
    rows = [GridRow(image, cells[i:i + GRID_COLUMNS], label=label if i == 0 else "",
                    boxes=[tuple(b) for b in boxes]) for i in range(0, len(cells), GRID_COLUMNS)]
    return [rows[i:i + GRID_ROWS] for i in range(0, len(rows), GRID_ROWS)]


def _title(m: AttentionMap) -> str:
    """Grid title: the map name, or for cross maps the prompt (and which variant of it)."""
    if m.kind != "cross":
        return m.name
    return "cross · " + _prompt_title(m)


def _prompt_title(m: AttentionMap) -> str:
    variant = f" · {m.meta['variant']}" if len(m.meta.get("variants", ())) > 1 else ""   # CLIP side by side
    if "word" in m.meta:
        return f"{shown(m.meta['prompt'])} · word: {shown(m.meta['word'])}{variant}"
    return shown(m.meta.get("prompt", m.name)) + variant + (" · contrast" if m.meta.get("contrast") else "")


def _write_extras(folder: Path, m: AttentionMap, image: Image.Image, style: Style) -> None:
    """channel_depth.png from every gate's weights; <name>-heads.png with one map per head."""
    gates = [(k.removeprefix("gate:"), v) for k, v in m.extras.items() if k.startswith("gate:")]
    if gates:
        title = f"native channel gates of the model, first (top) to last · {len(gates)} gates"
        save_png(folder / "channel_depth.png", style.mark(channel_depth(gates, title)))
    heads = m.extras.get("heads")
    if heads is not None:
        cells = [GridCell(f"head {h}", heads[h]) for h in range(len(heads))]
        rows = [GridRow(image, cells[i:i + 6], label=f"{m.name} · {m.layer} · {m.provenance}"
                        if i == 0 else "") for i in range(0, len(cells), 6)]
        save_png(folder / f"{m.name}-heads.png", grid(rows, style.colormap, style.alpha, cell=160,
                                                      banner=style.banner))


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in meta.items()}
