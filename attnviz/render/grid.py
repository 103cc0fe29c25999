"""Comparison grids: one row per image, one column per map (original first), with a shared colour bar."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from attnviz.geometry import Geometry
from attnviz.maps import is_flat
from attnviz.render.band import draw_band
from attnviz.render.draw import AnyFont, clip, font, ring, text, width
from attnviz.render.overlay import blender, colorize, colormap_lut, fit

__all__ = ["GridCell", "GridRow", "GridLayout", "grid_layout", "grid_size", "grid",
           "BACKGROUND", "LETTERBOX", "BOX_COLOUR"]

BACKGROUND = (255, 255, 255)      # sheet
LABEL_BAND = (232, 235, 240)      # behind each row label
LETTERBOX = (128, 128, 128)       # around an image that does not fill its square cell
BOX_COLOUR = (255, 255, 255)      # ground-truth box outline, edged in black
TEXT = (20, 20, 20)
TITLE_LINES = 2                   # a cell title is at most this many lines (longer ones are cut)
CAPTION = "each map min–max normalised to [0, 1]"


@dataclass
class GridCell:
    """One cell: a title and a raw (h, w) map, or None for the original image; where its cells lie
    (`geometry`), and the query it is the row of (`point`, fractions of the image) to mark."""

    title: str
    map: np.ndarray | None = None
    geometry: Geometry | None = None
    point: tuple[float, float] | None = None


@dataclass
class GridRow:
    """One image, its cells, an optional row label and ground-truth boxes in original pixels."""

    image: Image.Image
    cells: list[GridCell]
    label: str = ""
    boxes: Sequence[tuple[float, float, float, float]] = ()


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a grid; every quantity follows from `cell` alone."""

    cell: int
    pad: int          # margin around the sheet and gap between cells
    font: int         # font size in pixels
    line: int         # height of one line of text
    label_h: int      # row-label band above each row
    title_h: int      # TITLE_LINES lines of cell title above each cell
    bar_h: int        # colour bar thickness

    @property
    def row_h(self) -> int:
        """Height of one row: label band, titles, cell and the gap below."""
        return self.label_h + self.title_h + self.cell + self.pad

    @property
    def legend_h(self) -> int:
        """Height of the colour-bar block at the bottom: gap, bar, tick labels, caption, margin."""
        return self.pad + self.bar_h + 2 * self.line + self.pad


def grid_layout(cell: int = 256) -> GridLayout:
    """The geometry used by `grid` for square cells of `cell` pixels."""
    if cell < 16:
        raise ValueError(f"cell must be at least 16 pixels, got {cell}")
    pad = max(2, cell // 32)
    font = min(24, max(11, cell // 16))
    line = font + font // 3 + 2
    return GridLayout(cell=cell, pad=pad, font=font, line=line, label_h=line + pad,
                      title_h=TITLE_LINES * line, bar_h=max(10, cell // 14))


def grid_size(n_rows: int, n_cols: int, cell: int = 256, banner: bool = False) -> tuple[int, int]:
    """(width, height) of a grid: width = pad + cols*(cell+pad); height = pad + rows*row_h + legend_h
    (+ one label band for a banner)."""
    g = grid_layout(cell)
    return (g.pad + n_cols * (g.cell + g.pad),
            g.pad + n_rows * g.row_h + g.legend_h + (g.label_h if banner else 0))


_font, _width, _clip, _text = font, width, clip, text      # shared with the charts (render/draw.py)


def _draw_box(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float],
              scale: tuple[float, float], offset: tuple[int, int], size: tuple[int, int],
              width: int) -> None:
    """One box outline (original pixels -> cell pixels), white edged in black, clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    sx, sy = scale
    ox, oy = offset
    w, h = size
    a = ox + min(max(round(x0 * sx), 0), w - 1)
    b = oy + min(max(round(y0 * sy), 0), h - 1)
    c = ox + min(max(round(x1 * sx) - 1, 0), w - 1)
    d = oy + min(max(round(y1 * sy) - 1, 0), h - 1)
    draw.rectangle((a - 1, b - 1, c + 1, d + 1), outline=(0, 0, 0), width=width + 2)
    draw.rectangle((a, b, c, d), outline=BOX_COLOUR, width=width)


def _cell_image(base: Image.Image, row: GridRow, cell: GridCell, g: GridLayout,
                paint: Callable[[np.ndarray], Image.Image]) -> Image.Image:
    """The square cell: the (overlaid) fitted image centred on the letterbox colour, boxes drawn."""
    shown = base if cell.map is None else paint(cell.map, cell.geometry)
    square = Image.new("RGB", (g.cell, g.cell), LETTERBOX)
    offset = ((g.cell - base.width) // 2, (g.cell - base.height) // 2)
    square.paste(shown, offset)
    if cell.point is not None:                 # the query this map is the row of
        ring(ImageDraw.Draw(square), offset[0] + cell.point[0] * base.width,
             offset[1] + cell.point[1] * base.height, max(4, g.cell // 28))
    if cell.map is not None and is_flat(cell.map):      # drawn in one colour: say why
        draw = ImageDraw.Draw(square)
        f = _font(g.font)
        draw.rectangle((0, 0, _width("flat", f) + 2 * g.pad, g.line), fill=(0, 0, 0))
        draw.text((g.pad, 1), "flat", font=f, fill=(255, 255, 255))
    if row.boxes:
        draw = ImageDraw.Draw(square)
        scale = (base.width / row.image.width, base.height / row.image.height)
        width = max(1, g.cell // 128)
        for box in row.boxes:
            _draw_box(draw, box, scale, offset, base.size, width)
    return square


def _legend(sheet: Image.Image, draw: ImageDraw.ImageDraw, g: GridLayout, top: int,
            colormap: str) -> None:
    """A horizontal colour bar across the sheet, with 0 (min) / 0.5 / 1 (max) and a caption."""
    font = _font(g.font)
    x0, x1 = g.pad, sheet.width - g.pad
    span = max(1, x1 - x0)
    ramp = colorize(np.linspace(0.0, 1.0, span, dtype=np.float64)[None, :].repeat(g.bar_h, 0),
                    colormap)
    sheet.paste(Image.fromarray(ramp, "RGB"), (x0, top))
    draw.rectangle((x0 - 1, top - 1, x0 + span, top + g.bar_h), outline=(60, 60, 60))
    y = top + g.bar_h + 2
    ticks = [("0 (min)", 0.0, "l"), ("0.5", 0.5, "c"), ("1 (max)", 1.0, "r")]
    if _width("0 (min) 0.5 1 (max)", font) * 1.4 > span:
        ticks = [ticks[0], ticks[2]]
    for label, pos, align in ticks:
        x = x0 + pos * (span - 1)
        draw.line((x, top + g.bar_h, x, top + g.bar_h + 3), fill=(60, 60, 60))
        tw = _width(label, font)
        tx = x if align == "l" else x - tw / 2 if align == "c" else x - tw
        _text(draw, (tx, y), label, font)
    caption = f"{CAPTION} · colormap {colormap}"
    if _width(caption, font) > span:
        caption = CAPTION
    caption = _clip(caption, font, span)
    _text(draw, (x0 + (span - _width(caption, font)) / 2, y + g.line), caption, font)


def grid(rows: Sequence[GridRow], colormap: str = "jet", alpha: float = 0.5,
         cell: int = 256, banner: str = "", painter: Callable[..., Callable[..., Image.Image]] = blender
         ) -> Image.Image:
    """A comparison sheet of size `grid_size(len(rows), max cells per row, cell, bool(banner))`, RGB;
    `banner` (e.g. the random-weights warning) is a red band across the top. `painter(base, colormap,
    alpha)`: the cells' `blender` (the --device cuda writer passes one that blends on the GPU)."""
    if not rows:
        raise ValueError("a grid needs at least one row")
    n_cols = max(len(r.cells) for r in rows)
    if n_cols == 0:
        raise ValueError("a grid needs at least one cell")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colormap_lut(colormap)                                    # unknown name -> ValueError, early
    g = grid_layout(cell)
    sheet = Image.new("RGB", grid_size(len(rows), n_cols, cell, bool(banner)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(g.font)
    shift = g.label_h if banner else 0
    if banner:
        draw_band(sheet, 0, g.label_h, banner, g.font)
    for r, row in enumerate(rows):
        top = shift + g.pad + r * g.row_h
        if row.label:                                          # no empty bands between rows
            draw.rectangle((0, top - g.pad // 2, sheet.width - 1, top + g.label_h - g.pad // 2 - 1),
                           fill=LABEL_BAND)
        bold = _font(g.font, bold=True)
        label = _clip(row.label, bold, sheet.width - 2 * g.pad)
        _text(draw, (g.pad, top + (g.label_h - g.pad - g.line) // 2), label, bold)
        base = fit(row.image, cell)
        paint = painter(base, colormap, alpha)                 # the image's share, once per row
        for c, item in enumerate(row.cells):
            left = g.pad + c * (g.cell + g.pad)
            lines = item.title.split("\n")
            if len(lines) > TITLE_LINES:
                lines = lines[: TITLE_LINES - 1] + [" · ".join(lines[TITLE_LINES - 1:])]
            first = TITLE_LINES - len(lines)                   # bottom-aligned, next to the cell
            for i, text in enumerate(lines, start=first):
                text = _clip(text, font, g.cell)
                tx = left + (g.cell - _width(text, font)) / 2
                _text(draw, (tx, top + g.label_h + i * g.line - 2), text, font)
            sheet.paste(_cell_image(base, row, item, g, paint),
                        (left, top + g.label_h + g.title_h))
    _legend(sheet, draw, g, shift + 2 * g.pad + len(rows) * g.row_h, colormap)
    return sheet
