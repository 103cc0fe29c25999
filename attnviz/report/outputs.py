"""Per-image outputs (original, overlays, bar chart, grid, raw maps) and their manifest entry."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from attnviz.maps import cell_centre, is_flat, query_point
from attnviz.render import GridCell, GridRow, blender, channel_bars, channel_depth, fit, grid
from attnviz.render.band import banded
from attnviz.render.draw import ring
from attnviz.report.atomic import FORMATS, save_image, save_npz
from attnviz.results import AttentionMap, Result
from attnviz.settings import MAX_SIZE, SCHEMA, check, group
from attnviz.text import shown

__all__ = ["MAX_SIZE", "Style", "write_outputs", "image_entry", "map_entry", "map_picture",
           "overlay_picture", "grid_pictures"]


@dataclass(frozen=True)
class Style:
    """How maps are drawn: the schema's style settings (attnviz.settings.SCHEMA, help and limits there)."""

    size: int = SCHEMA["size"].default           # longest side of every overlay, in pixels
    colormap: str = SCHEMA["colormap"].default
    alpha: float = SCHEMA["alpha"].default
    top_k: int = SCHEMA["top_k"].default         # bars in channel_weights.png
    format: str = SCHEMA["format"].default       # overlays (and original); charts and grids stay PNG
    banner: str = ""          # a warning across every grid (the random-weights band)

    def mark(self, image: Image.Image) -> Image.Image:
        """`image` with the band above it when there is a banner (grids draw theirs in their layout)."""
        return banded(image, self.banner) if self.banner else image

    @property
    def ext(self) -> str:
        """File suffix of the overlays."""
        return FORMATS[self.format][0]

    def __post_init__(self) -> None:
        """One-line errors for values no picture can be drawn with."""
        for s in group("style"):
            check(s.name, getattr(self, s.name))


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


def map_picture(m: AttentionMap, image: Image.Image, paint: Callable[..., Image.Image]) -> Image.Image:
    """The overlay `<name>.<ext>` of map `m`: `paint` (a `blender` over the fitted image) and the query's ring."""
    point = query_point(m.kind, m.name, m.meta, image.size)
    shown = paint(m.data, m.geometry)
    if point is not None:                       # the query this map is the row of
        ring(ImageDraw.Draw(shown), point[0] * shown.width, point[1] * shown.height,
             max(4, min(shown.size) // 40))
    return shown


def overlay_picture(m: AttentionMap, image: Image.Image, style: Style) -> Image.Image:
    """The picture `write_outputs` writes for map `m` over `image` (the original, any size)."""
    return style.mark(map_picture(m, image, blender(fit(image, style.size), style.colormap, style.alpha)))


def grid_pictures(r: Result, image: Image.Image, style: Style, boxes: Sequence[Sequence[float]] = (),
                  painter: Callable[..., Callable[..., Image.Image]] = blender) -> list[Image.Image]:
    """grid.png (and grid-2.png … for many maps): the original and every map side by side
    (`painter`: the cells' blender, see `render.grid`)."""
    cells = [GridCell("original", None)]
    for m in r.maps:
        point = query_point(m.kind, m.name, m.meta, image.size)
        flat = " · flat" if is_flat(m.data) else ""
        cells.append(GridCell(f"{_title(m)}\n{m.provenance}{flat}", m.data, m.geometry, point))
    return [grid(rows, style.colormap, style.alpha, banner=style.banner, painter=painter)
            for rows in _grid_pages(image, cells, shown(r.source), boxes)]


def write_outputs(out: Path, r: Result, image: Image.Image, style: Style,
                  boxes: Sequence[Sequence[float]] = (), device: Any = None) -> list[str]:
    """Write every file of one image under OUT/<r.output>/ (each file atomically); their names, as written.

    `device`: a CUDA device draws the overlays there (`render.device`; JPEG by the GPU's encoder);
    None or the CPU draws them with numpy (the same pictures)."""
    folder = out / r.output
    if not folder.resolve().is_relative_to(out.resolve()):   # image names never escape OUT
        raise OSError(f"output folder {r.output!r} would lie outside {out}")
    files: list[str] = []

    def save(name: str, picture: Image.Image, fmt: str = "png") -> None:
        save_image(folder / name, picture, fmt)
        files.append(name)

    fitted = fit(image, style.size)                # resized once, shared by every overlay
    painter: Callable[..., Callable[..., Image.Image]] = blender
    if device is not None and _on_device(device):
        overlays = _device_overlays(r, image, fitted, style, device)
        painter = _device_painter(device)
    else:
        paint = blender(fitted, style.colormap, style.alpha)    # the image's share computed once
        overlays = ((f"{m.name}.{style.ext}", lambda path, m=m: save_image(
            path, style.mark(map_picture(m, image, paint)), style.format)) for m in r.maps)
    save_image(folder / f"original.{style.ext}", style.mark(fitted), style.format)
    files.append(f"original.{style.ext}")
    arrays: dict[str, np.ndarray] = {}
    for m, (name, write) in zip(r.maps, overlays):
        write(folder / name)
        files.append(name)
        arrays[m.name] = m.data.astype(np.float32)
        if m.weights is not None:
            arrays[f"{m.name}_weights"] = m.weights.astype(np.float32)
            title = f"{m.name} weights · {m.layer} · {m.provenance} · {len(m.weights)} channels"
            save(f"{m.name}_weights.png", style.mark(channel_bars(m.weights, style.top_k, title)))
        arrays.update({f"{m.name}_{k}": v.astype(np.float32) for k, v in m.extras.items()})
        for name, picture in _extras(m, image, style):
            save(name, picture)
    for name, picture in zip(grid_names(len(r.maps) + 1), grid_pictures(r, image, style, boxes, painter)):
        save(name, picture)
    save_npz(folder / "maps.npz", arrays)
    files.append("maps.npz")
    return list(dict.fromkeys(files))


def _on_device(device: Any) -> bool:
    from attnviz.render.device import on_device   # torch: imported only for a device run
    return on_device(device)


def _device_painter(device: Any) -> Callable[..., Callable[..., Image.Image]]:
    """A `blender` whose cells are blended on `device` (the grid's text stays with PIL)."""
    from attnviz.render.device import DevicePainter, to_image

    def painter(base: Image.Image, colormap: str, alpha: float) -> Callable[..., Image.Image]:
        paint = DevicePainter(base, colormap, alpha, device)
        return lambda *a, **k: to_image(paint(*a, **k))
    return painter


def _device_overlays(r: Result, image: Image.Image, fitted: Image.Image, style: Style, device: Any
                     ) -> Iterator[tuple[str, Callable[[Path], None]]]:
    """(file name, writer) of each map's overlay drawn on `device`; a query's ring is drawn on the host."""
    from attnviz.render.device import DevicePainter, band_strip, to_image
    from attnviz.report.atomic import save_pixels
    paint = DevicePainter(fitted, style.colormap, style.alpha, device)
    for m in r.maps:
        def write(path: Path, m: AttentionMap = m) -> None:
            if query_point(m.kind, m.name, m.meta, image.size) is not None:      # PIL draws the ring
                save_image(path, style.mark(map_picture(m, image, lambda d, g: to_image(paint(d, g)))),
                           style.format)
                return
            picture = paint(m.data, m.geometry)
            save_pixels(path, band_strip(picture, style.banner) if style.banner else picture, style.format)
        yield f"{m.name}.{style.ext}", write


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


def _extras(m: AttentionMap, image: Image.Image, style: Style) -> list[tuple[str, Image.Image]]:
    """channel_depth.png from every gate's weights; <name>-heads.png with one map per head."""
    out = []
    gates = [(k.removeprefix("gate:"), v) for k, v in m.extras.items() if k.startswith("gate:")]
    if gates:
        title = f"native channel gates of the model, first (top) to last · {len(gates)} gates"
        out.append(("channel_depth.png", style.mark(channel_depth(gates, title))))
    heads = m.extras.get("heads")
    if heads is not None:
        cells = [GridCell(f"head {h}", heads[h]) for h in range(len(heads))]
        rows = [GridRow(image, cells[i:i + 6], label=f"{m.name} · {m.layer} · {m.provenance}"
                        if i == 0 else "") for i in range(0, len(cells), 6)]
        out.append((f"{m.name}-heads.png", grid(rows, style.colormap, style.alpha, cell=160, banner=style.banner)))
    return out


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in meta.items()}
