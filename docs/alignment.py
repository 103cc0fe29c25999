"""Redraw docs/alignment.png: a bright dot, resnet50 layer4's derived spatial map, block vs measured centres.

Random-init resnet50 (no weights are downloaded here), BatchNorm calibrated on dot scenes, 224 px,
the dot at the measured centre of cell (2, 4) — the scene of tests/test_alignment.py.
Run from the repository root: python docs/alignment.py
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnviz.maps import normalise, upsample  # noqa: E402
from attnviz.metrics import peak  # noqa: E402
from attnviz.pipeline import Analyser  # noqa: E402
from tests.conftest import calibrate_bn  # noqa: E402
from tests.test_alignment import _dot  # noqa: E402

SIZE, SCALE = 224, 2


def panel(base: Image.Image, m: np.ndarray, geometry, dot: tuple[float, float], title: str) -> Image.Image:
    """The map over the image (upsampled by `geometry`), the dot (white ring) and the drawn peak (cross)."""
    w, h = base.size
    heat = (matplotlib.colormaps["jet"](np.clip(upsample(normalise(m), h, w, geometry.drawn() if geometry else None), 0, 1))[..., :3] * 255)
    out = Image.blend(base, Image.fromarray(heat.astype(np.uint8)), 0.5)
    d = ImageDraw.Draw(out)
    x, y = dot[0] * SCALE, dot[1] * SCALE
    d.ellipse([x - 14, y - 14, x + 14, y + 14], outline="white", width=3)
    px, py = (v * SCALE for v in peak(m, (SIZE, SIZE), geometry))
    d.line([px - 10, py - 10, px + 10, py + 10], fill="black", width=4)
    d.line([px - 10, py + 10, px + 10, py - 10], fill="black", width=4)
    d.rectangle([0, 0, w, 24], fill="white")
    d.text((6, 6), title, fill="black")
    return out


def main() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        an = Analyser("resnet50", ["spatial"], weights="none", input_size=SIZE, seed=0)
    rng = np.random.default_rng(5)
    calibrate_bn(an.backbone.model, an.preprocess([_dot(*rng.uniform(20, SIZE - 20, 2), SIZE) for _ in range(16)]))
    g = an.aligner.geometry("layer4")
    xs, ys = g.centres((SIZE, SIZE))
    dot = (float(xs[4]), float(ys[2]))
    image = _dot(*dot, SIZE)
    (_, maps), = an.analyse_batch([image])
    m = maps[0].data
    base = image.resize((SIZE * SCALE, SIZE * SCALE), Image.Resampling.NEAREST)
    left = panel(base, m, None, dot, "before: cells at block centres (i + 1/2)*32 px")
    right = panel(base, m, g, dot, "after: cells at measured receptive-field centres")
    sheet = Image.new("RGB", (left.width * 2 + 8, left.height), "white")
    sheet.paste(left, (0, 0))
    sheet.paste(right, (left.width + 8, 0))
    sheet.save(Path(__file__).with_name("alignment.png"), optimize=True)


if __name__ == "__main__":
    main()
