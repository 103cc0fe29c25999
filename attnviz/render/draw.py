"""PIL drawing primitives shared by the charts and the grid: fonts, text, ticks, data → pixel axes."""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

from PIL import Image, ImageDraw, ImageFont

from attnviz.render.colormap_tables import matplotlib_folder

__all__ = ["AnyFont", "font", "safe", "width", "clip", "text", "vtext", "nice_ticks", "tick_label",
           "Axes", "mix"]

AnyFont = Union[ImageFont.FreeTypeFont, ImageFont.ImageFont]
INK = (20, 20, 20)


_LOCAL = threading.local()    # one font object per thread: a FreeType face is not thread-safe


def font(size: int, bold: bool = False) -> AnyFont:
    """DejaVu Sans at `size` pixels (cached per thread)."""
    cache = _LOCAL.__dict__.setdefault("fonts", {})
    if (size, bold) not in cache:
        cache[size, bold] = _load_font(size, bold)
    return cache[size, bold]


def _load_font(size: int, bold: bool) -> AnyFont:
    """DejaVu Sans from matplotlib's data folder (wide Unicode coverage), else Pillow's default font."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    root = matplotlib_folder()          # found without importing matplotlib: the fonts only
    if root is not None:
        try:
            return ImageFont.truetype(str(root / "mpl-data" / "fonts" / "ttf" / name), size)   # get_data_path()
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)          # scalable, Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError, AttributeError):
        return ImageFont.load_default()


def safe(s: str, f: AnyFont) -> str:
    """`s` as the font can draw it (the bitmap fallback font is Latin-1 only)."""
    if isinstance(f, ImageFont.FreeTypeFont):
        return s
    return s.encode("latin-1", "replace").decode("latin-1")


def width(s: str, f: AnyFont) -> float:
    """Advance width of `s` in pixels."""
    return _length(s, f)


@lru_cache(maxsize=8192)
def _length(s: str, f: AnyFont) -> float:
    # charts and sheets measure the same titles, ticks and labels for every image
    return f.getlength(safe(s, f))


def clip(s: str, f: AnyFont, room: float) -> str:
    """`s` cut with an ellipsis so that it fits in `room` pixels."""
    if width(s, f) <= room:
        return s
    lo, hi = 0, len(s)
    while lo < hi:                                            # longest prefix that fits with "…"
        mid = (lo + hi + 1) // 2
        if width(s[:mid].rstrip() + "…", f) <= room:
            lo = mid
        else:
            hi = mid - 1
    return s[:lo].rstrip() + "…" if lo else ""


def text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], s: str, f: AnyFont,
         fill: tuple[int, int, int] = INK, anchor: str = "la") -> None:
    """Draw `s` at `xy` (PIL anchor: 'la' left-top, 'ma' centre-top, 'rm' right-middle …)."""
    s = safe(s, f)
    core = getattr(draw, "draw", None)
    if (not isinstance(f, ImageFont.FreeTypeFont) or "\n" in s or getattr(draw, "fontmode", None) != "L"
            or not hasattr(core, "draw_bitmap") or not hasattr(draw, "_getink")):
        draw.text(xy, s, font=f, fill=fill, anchor=anchor)
        return
    # what ImageDraw.text does for one line, with the rendered glyphs cached: the grid's titles and the
    # charts' ticks are the same for every image (tests/test_render.py: the same pixels as draw.text)
    x, y = xy
    mask, (dx, dy) = _glyphs(s, f, anchor, math.modf(x)[0], math.modf(y)[0])
    core.draw_bitmap((int(x) + dx, int(y) + dy), mask, draw._getink(fill)[0])


@lru_cache(maxsize=4096)
def _glyphs(s: str, f: ImageFont.FreeTypeFont, anchor: str, fx: float, fy: float) -> tuple:
    """`s` rendered as ImageDraw.text renders it at a position with fractional part (fx, fy)."""
    return f.getmask2(s, "L", anchor=anchor, start=(fx, fy))


def vtext(img: Image.Image, centre: tuple[float, float], s: str, f: AnyFont,
          fill: tuple[int, int, int] = INK) -> None:
    """Text turned 90° anticlockwise (read bottom to top), centred on `centre`."""
    mask = _turned(s, f)
    h, w = mask.size
    img.paste(fill, (round(centre[0] - h / 2), round(centre[1] - w / 2)), mask)


@lru_cache(maxsize=2048)
def _turned(s: str, f: AnyFont) -> Image.Image:
    """`s` drawn in white on black, turned 90° anticlockwise: (h, w) in size; only read by paste."""
    s = safe(s, f)
    w = max(1, math.ceil(f.getlength(s)))
    h = f.size + f.size // 2 if isinstance(f, ImageFont.FreeTypeFont) else 12
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).text((w / 2, h / 2), s, font=f, fill=255, anchor="mm")
    return mask.transpose(Image.Transpose.ROTATE_90)


def nice_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """At most `most`+1 round tick values (steps 1, 2, 2.5, 5 × 10ⁿ) inside [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / most
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw * (1 - 1e-9))
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def tick_label(v: float, ticks: list[float]) -> str:
    """A tick value with as many decimals as its neighbours need (0.0, 0.2 … or 400, 800 …)."""
    step = min((abs(b - a) for a, b in zip(ticks, ticks[1:])), default=1.0) or 1.0
    decimals = next(d for d in range(9) if abs(round(step, d) - step) <= 1e-9 * max(1.0, step) or d == 8)
    s = f"{v:.{decimals}f}"
    return s.replace("-", "\u2212") if v < 0 and float(s) != 0 else s.lstrip("-")


def mix(colour: tuple[int, int, int], alpha: float, under: tuple[int, int, int] = (255, 255, 255)
        ) -> tuple[int, int, int]:
    """`colour` at opacity `alpha` over `under` (one RGB triple)."""
    return tuple(round(alpha * c + (1 - alpha) * u) for c, u in zip(colour, under))


@dataclass(frozen=True)
class Axes:
    """A data rectangle [x0, x1] × [y0, y1] drawn into the pixel box (left, top, right, bottom)."""

    box: tuple[int, int, int, int]
    x0: float
    x1: float
    y0: float
    y1: float

    def px(self, x: float) -> float:
        """Data x → pixel column."""
        left, _, right, _ = self.box
        return left + (x - self.x0) / (self.x1 - self.x0) * (right - left)

    def py(self, y: float) -> float:
        """Data y → pixel row (y grows upwards in data, downwards in pixels)."""
        _, top, _, bottom = self.box
        return bottom - (y - self.y0) / (self.y1 - self.y0) * (bottom - top)

    def frame(self, img: Image.Image, draw: ImageDraw.ImageDraw, xticks: list[float],
              yticks: list[float], xlabels: list[str], f: AnyFont, *, grid_x: bool = False,
              grid_y: bool = True, rotate_x: bool = False, xlabel: str = "", ylabel: str = "",
              label_font: AnyFont | None = None, ylabels: list[str] | None = None,
              yfont: AnyFont | None = None) -> None:
        """Grid lines, left and bottom spines, ticks with labels, axis labels (matplotlib's look)."""
        left, top, right, bottom = self.box
        grid_colour = mix((176, 176, 176), 0.35)
        lf, yf = label_font or f, yfont or f
        ylabels = ylabels if ylabels is not None else [tick_label(v, yticks) for v in yticks]
        for v, s in zip(yticks, ylabels):
            y = round(self.py(v))
            if grid_y:
                draw.line((left, y, right, y), fill=grid_colour)
            draw.line((left - 4, y, left - 1, y), fill=(0, 0, 0))
            text(draw, (left - 6, y), s, yf, anchor="rm")
        tall = 0
        for v, s in zip(xticks, xlabels):
            x = round(self.px(v))
            if grid_x:
                draw.line((x, top, x, bottom), fill=grid_colour)
            draw.line((x, bottom + 1, x, bottom + 4), fill=(0, 0, 0))
            if rotate_x:
                vtext(img, (x, bottom + 7 + width(s, f) / 2), s, f)
                tall = max(tall, width(s, f))
            else:
                text(draw, (x, bottom + 6), s, f, anchor="ma")
                tall = max(tall, f.size)
        draw.line((left, top, left, bottom), fill=(0, 0, 0))
        draw.line((left, bottom, right, bottom), fill=(0, 0, 0))
        if xlabel:
            text(draw, ((left + right) / 2, bottom + 10 + tall), xlabel, lf, anchor="ma")
        if ylabel:
            room = max((width(s, yf) for s in ylabels), default=0)
            vtext(img, (left - 12 - room - lf.size * 0.7, (top + bottom) / 2), ylabel, lf)


def ring(draw: ImageDraw.ImageDraw, x: float, y: float, r: float) -> None:
    """A query marker: a black ring on a white one, visible on any colour."""
    draw.ellipse((x - r - 1, y - r - 1, x + r + 1, y + r + 1), outline=(255, 255, 255), width=4)
    draw.ellipse((x - r, y - r, x + r, y + r), outline=(0, 0, 0), width=2)
