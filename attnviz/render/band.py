"""The random-weights band: one red strip with one warning, drawn the same way on every picture.

`banded` puts it above a picture (nothing of the picture is covered); `draw_band` paints it into
space a layout has reserved (grids, sheets). `unbanded` takes it off again (compare re-reads a
run's original.png). Its HTML twin is attnviz.report.gallery.random_band_html.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from attnviz.render.draw import clip, font, width

__all__ = ["RANDOM_BAND", "BAND_COLOUR", "band_height", "draw_band", "banded", "unbanded", "has_band"]

RANDOM_BAND = "random weights — maps mean nothing"
BAND_COLOUR = (176, 0, 32)
_SHORTER = ("random weights", "random")          # what a narrow picture shows instead (after RANDOM_BAND)


def _font_size(picture_width: int) -> int:
    return min(20, max(9, picture_width // 30))


def band_height(picture_width: int) -> int:
    """Rows of the band above a picture `picture_width` pixels wide (a function of the width only)."""
    size = _font_size(picture_width)
    return size + size // 2 + 8


def draw_band(image: Image.Image, top: int, height: int, note: str = RANDOM_BAND, size: int | None = None) -> None:
    """Paint the band over rows top … top+height−1 of `image`, the note centred (shortened to fit)."""
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, top, image.width - 1, top + height - 1), fill=BAND_COLOUR)
    f = font(size or _font_size(image.width), bold=True)
    room = image.width - 8
    tries = (f"⚠ {note} ⚠", note, f"⚠ {RANDOM_BAND} ⚠", RANDOM_BAND, *_SHORTER)
    shown = next((s for s in tries if width(s, f) <= room), "")
    shown = shown or clip("random", f, room)
    if shown:
        draw.text((image.width / 2, top + height / 2), shown, font=f, fill=(255, 255, 255), anchor="mm")


def banded(image: Image.Image, note: str = RANDOM_BAND) -> Image.Image:
    """`image` (RGB) with the band added above it: `band_height(width)` rows taller, nothing covered."""
    h = band_height(image.width)
    out = Image.new("RGB", (image.width, image.height + h), BAND_COLOUR)
    out.paste(image.convert("RGB"), (0, h))
    draw_band(out, 0, h, note)
    return out


def has_band(image: Image.Image) -> bool:
    """True when the picture's first row is the band's colour from edge to edge."""
    row = np.asarray(image.convert("RGB"))[0]
    return bool((row == BAND_COLOUR).all())


def unbanded(image: Image.Image) -> Image.Image:
    """`image` without the band `banded` added (unchanged when it has none)."""
    if not has_band(image) or image.height <= band_height(image.width):
        return image
    return image.crop((0, band_height(image.width), image.width, image.height))
