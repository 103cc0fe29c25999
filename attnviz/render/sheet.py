"""Comparison sheets: rows = images, columns = kinds, layers or backbones; one colour scale rule.

Scales (`--scale`): "cell" — each map min–max on its own (shapes comparable, values not);
"row" — one scale per row over its maps' raw values; "shared" — one scale per group (the kind)
over the raw values of every map of that group on the sheet: equal values get equal colours.
A map whose range is at most FLAT_RTOL of its magnitude (or FLAT_ATOL) is float noise: it is
drawn in one colour and labelled "flat", never stretched to full contrast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence, Union

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from attnviz.geometry import Geometry
from attnviz.maps import FLAT_ATOL, FLAT_RTOL, is_flat
from attnviz.render.band import RANDOM_BAND, draw_band
from attnviz.render.draw import ring
from attnviz.render.overlay import blend, colorize, colormap_lut, fit

__all__ = ["SCALES", "FLAT_RTOL", "FLAT_ATOL", "RANDOM_BAND", "SheetCell", "SheetRow", "SheetLayout",
           "sheet_layout", "sheet_size", "is_flat", "cell_ranges", "render_pages"]

SCALES = ("cell", "row", "shared")
BACKGROUND, TEXT, MISSING = (255, 255, 255), (20, 20, 20), (200, 200, 200)
LETTERBOX, HEADER = (128, 128, 128), (232, 235, 240)
HEADER_LINES = 3

AnyFont = Union[ImageFont.FreeTypeFont, ImageFont.ImageFont]


@dataclass
class SheetCell:
    """One map (raw, feature resolution) and its scale group (for "shared": the kind)."""

    map: np.ndarray
    group: str = ""
    point: tuple[float, float] | None = None   # a self map's query, as fractions (x/width, y/height)
    geometry: Geometry | None = None           # where its cells look (drawn as `attnviz run` draws it)


@dataclass
class SheetRow:
    """One image, its label lines, and one cell per column (None: no such map for this image)."""

    image: Image.Image
    label: str
    cells: list[SheetCell | None] = field(default_factory=list)


@dataclass(frozen=True)
class SheetLayout:
    """Pixel geometry of a sheet page; everything follows from `cell` and `random`."""

    cell: int
    pad: int
    font: int
    line: int
    label_w: int       # row-label column on the left
    top: int           # title line, random band, column headers
    legend_h: int
    random_h: int

    @property
    def row_h(self) -> int:
        """One row: the square cell and the gap below it."""
        return self.cell + self.pad


def sheet_layout(cell: int = 256, random: bool = False) -> SheetLayout:
    """The geometry of pages with square cells of `cell` pixels (fonts ≥ 12 px: readable at 100 %)."""
    if cell < 64:
        raise ValueError(f"cell must be at least 64 pixels, got {cell}")
    pad, font = max(4, cell // 32), min(20, max(12, cell // 16))
    line = font + font // 3 + 2
    random_h = 2 * line if random else 0
    top = pad + line + pad + random_h + HEADER_LINES * line + pad
    legend_h = pad + max(12, cell // 14) + 3 * line + pad
    return SheetLayout(cell, pad, font, line, max(160, cell), top, legend_h, random_h)


def sheet_size(n_rows: int, n_cols: int, cell: int = 256, random: bool = False) -> tuple[int, int]:
    """(width, height) of a page with n_rows rows and n_cols map columns (plus the original)."""
    g = sheet_layout(cell, random)
    return (g.pad + g.label_w + g.pad + (n_cols + 1) * (g.cell + g.pad),
            g.top + n_rows * g.row_h + g.legend_h)


def cell_ranges(rows: Sequence[SheetRow], scale: str) -> list[list[tuple[float, float] | None]]:
    """The (lo, hi) each cell's colours span under `scale` (None where a row has no map)."""
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r}: use one of {', '.join(SCALES)}")
    span = lambda ms: (float(min(np.nanmin(m) for m in ms)), float(max(np.nanmax(m) for m in ms)))  # noqa: E731
    groups: dict[str, list[np.ndarray]] = {}
    for row in rows:
        for c in row.cells:
            if c is not None:
                groups.setdefault(c.group, []).append(c.map)
    shared = {g: span(ms) for g, ms in groups.items()}
    out = []
    for row in rows:
        maps = [c.map for c in row.cells if c is not None]
        per_row = span(maps) if maps else None
        out.append([None if c is None else span([c.map]) if scale == "cell" else
                    per_row if scale == "row" else shared[c.group] for c in row.cells])
    return out


@lru_cache(maxsize=8)
def _font(size: int, bold: bool = False) -> AnyFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)
    except OSError:
        return ImageFont.load_default()


def _fit_text(text: str, font: AnyFont, width: float) -> str:
    if not isinstance(font, ImageFont.FreeTypeFont):
        text = text.encode("latin-1", "replace").decode("latin-1")
    while text and font.getlength(text) > width:
        text = text[:-2] + "…" if len(text) > 1 else ""
    return text


def _wrap(text: str, font: AnyFont, width: float, max_lines: int) -> list[str]:
    """Words wrapped into at most `max_lines` lines of `width` pixels (the last one cut with …)."""
    lines: list[str] = []
    for para in text.split("\n"):
        current = ""
        for word in para.split(" "):
            trial = f"{current} {word}".strip()
            if current and font.getlength(trial) > width:
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [" ".join(lines[max_lines - 1:])]
    return [_fit_text(s, font, width) for s in lines]


def _draw_map(base: Image.Image, c: SheetCell, lo_hi: tuple[float, float], colormap: str, alpha: float,
              scale: str) -> Image.Image:
    """The map over the fitted image (the one drawing path), colours spanning lo_hi unless each
    map has its own scale ("cell"); a flat map is one colour."""
    return blend(base, c.map, colormap, alpha, c.geometry, span=None if scale == "cell" else lo_hi)


def _cell(base: Image.Image, c: SheetCell | None, lo_hi, g: SheetLayout, colormap: str, alpha: float,
          scale: str) -> Image.Image:
    """One map cell over the row's fitted image; "no map" in grey; a flat map labelled "flat"."""
    font = _font(g.font, bold=True)
    if c is None:
        square = Image.new("RGB", (g.cell, g.cell), MISSING)
        ImageDraw.Draw(square).text((g.cell / 2, g.cell / 2), "no map", font=font, fill=TEXT, anchor="mm")
        return square
    flat = is_flat(c.map)
    square = _square(_draw_map(base, c, lo_hi, colormap, alpha, scale), g)
    draw = ImageDraw.Draw(square)
    if c.point is not None:                  # the query this self map is the row of: a ring, black on white
        x = (g.cell - base.width) // 2 + c.point[0] * base.width
        y = (g.cell - base.height) // 2 + c.point[1] * base.height
        ring(draw, x, y, max(4, g.cell // 28))
    if flat:
        draw.rectangle((0, 0, font.getlength("flat") + 2 * g.pad, g.line + g.pad // 2), fill=(0, 0, 0))
        draw.text((g.pad, g.pad // 4), "flat", font=font, fill=(255, 255, 255))
    return square


def _legend(page: Image.Image, draw: ImageDraw.ImageDraw, g: SheetLayout, top: int, colormap: str,
            ticks: Sequence[str], caption: str) -> None:
    font = _font(g.font)
    x0, x1 = g.pad + g.label_w + g.pad, page.width - g.pad
    bar_h = max(12, g.cell // 14)
    span = max(1, x1 - x0)
    ramp = colorize(np.linspace(0.0, 1.0, span)[None, :].repeat(bar_h, 0), colormap)
    page.paste(Image.fromarray(ramp, "RGB"), (x0, top))
    draw.rectangle((x0 - 1, top - 1, x0 + span, top + bar_h), outline=(60, 60, 60))
    y = top + bar_h + 2
    for k, label in enumerate(ticks):
        x = x0 + k * (span - 1) / max(1, len(ticks) - 1)
        anchor = "la" if k == 0 else "ra" if k == len(ticks) - 1 else "ma"
        draw.text((x, y), _fit_text(label, font, span / len(ticks)), font=font, fill=TEXT, anchor=anchor)
    for i, text in enumerate(_wrap(caption, font, page.width - 2 * g.pad, 2)):
        draw.text((g.pad, y + (i + 1) * g.line), text, font=font, fill=TEXT)


def render_pages(columns: Sequence[str], rows: Sequence[SheetRow], *, per_page: int = 8, scale: str = "cell",
                 colormap: str = "jet", alpha: float = 0.5, cell: int = 256, title: str = "",
                 random: bool = False) -> list[Image.Image]:
    """Pages of at most `per_page` rows; `columns` are the map columns' titles (the original comes
    first). Under "shared" one scale per group spans every page."""
    if not rows:
        raise ValueError("a sheet needs at least one row")
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}")
    colormap_lut(colormap)
    g = sheet_layout(cell, random)
    ranges = cell_ranges(rows, scale)
    groups = {c.group: r for row, rr in zip(rows, ranges) for c, r in zip(row.cells, rr) if c is not None}
    fmt = lambda v: f"{v:.3g}"   # noqa: E731
    heads = list(columns)
    if scale == "shared":        # each column's group range under its title
        for k in range(len(heads)):
            gr = next((rr[k] for row, rr in zip(rows, ranges) if row.cells[k] is not None), None)
            if gr is not None:
                heads[k] += f"\n{fmt(gr[0])} … {fmt(gr[1])}"
    if scale == "shared" and len(groups) == 1:
        lo, hi = next(iter(groups.values()))
        ticks = [fmt(lo), fmt((lo + hi) / 2), fmt(hi)]
        caption = (f"colour: one scale for every map on the sheet, raw values {fmt(lo)} to {fmt(hi)}: "
                   "equal values, equal colours")
    elif scale == "shared":
        ticks = ["low", "high"]
        caption = ("colour: one scale per kind over the whole sheet (its range under each column title): "
                   "equal values of a kind, equal colours")
    elif scale == "row":
        ticks = ["row's lowest", "row's highest"]
        caption = "colour: one scale per row, from its lowest to its highest raw value (under each row label)"
    else:
        ticks = ["0 (min)", "0.5", "1 (max)"]
        caption = "colour: each map min–max normalised on its own (shapes comparable, values not)"
    caption += f" · colormap {colormap} · flat: range ≤ {FLAT_RTOL:g} × magnitude, drawn in one colour"
    pages = []
    for start in range(0, len(rows), per_page):
        chunk, chunk_ranges = rows[start:start + per_page], ranges[start:start + per_page]
        page = Image.new("RGB", sheet_size(len(chunk), len(columns), cell, random), BACKGROUND)
        draw = ImageDraw.Draw(page)
        font, bold = _font(g.font), _font(g.font, bold=True)
        n = len(range(0, len(rows), per_page))
        head = f"{title} · page {start // per_page + 1} of {n}" if n > 1 else title
        if random:                                      # the band first: the top rows say it
            draw_band(page, 0, g.random_h - g.pad // 2, RANDOM_BAND, g.font + 4)
        draw.text((g.pad, g.random_h + g.pad), _fit_text(head, bold, page.width - 2 * g.pad), font=bold, fill=TEXT)
        y = g.random_h + g.pad + g.line + g.pad
        draw.rectangle((0, y, page.width, g.top - g.pad // 2), fill=HEADER)
        x_first = g.pad + g.label_w + g.pad
        for k, text in enumerate(["original", *heads]):
            lines = _wrap(text, font, g.cell, HEADER_LINES)
            for i, s in enumerate(lines, start=HEADER_LINES - len(lines)):
                draw.text((x_first + k * (g.cell + g.pad) + g.cell / 2, y + i * g.line), s, font=font,
                          fill=TEXT, anchor="ma")
        for r, (row, rr) in enumerate(zip(chunk, chunk_ranges)):
            top = g.top + r * g.row_h
            label = row.label
            if scale == "row" and any(x is not None for x in rr):
                lo, hi = next(x for x in rr if x is not None)
                label += f"\nscale {fmt(lo)} … {fmt(hi)}"
            for i, s in enumerate(_wrap(label, font, g.label_w, g.cell // g.line)):
                draw.text((g.pad, top + i * g.line), s, font=bold if i == 0 else font, fill=TEXT)
            base = fit(row.image, g.cell)                 # resized once per row
            page.paste(_square(base, g), (x_first, top))
            for k, (c, lo_hi) in enumerate(zip(row.cells, rr), start=1):
                page.paste(_cell(base, c, lo_hi, g, colormap, alpha, scale), (x_first + k * (g.cell + g.pad), top))
        _legend(page, draw, g, g.top + len(chunk) * g.row_h + g.pad, colormap, ticks, caption)
        pages.append(page)
    return pages


def _square(shown: Image.Image, g: SheetLayout) -> Image.Image:
    """`shown` centred on a letterboxed square cell."""
    square = Image.new("RGB", (g.cell, g.cell), LETTERBOX)
    square.paste(shown, ((g.cell - shown.width) // 2, (g.cell - shown.height) // 2))
    return square
