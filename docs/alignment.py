"""Redraw docs/alignment.png: one map drawn three ways, against the back-projection through the true
receptive fields.

resnet18 layer4 (random init with BatchNorm calibrated on the sample photos — no weights are
downloaded here), 224 px, the derived spatial map of sample_images/cat.jpg. Panels: block centres
(--no-align), the measured centres fitted per axis and clamped at the border (attnviz before
drawing by receptive field: flat bands), receptive fields (now), and R = Σ m_i·E_i / Σ E_i through
every cell's measured |∂cell/∂input| (8 random inputs). r: correlation of each heat with R, over
the image and over its border ring (outer eighth).
Run from the repository root: python docs/alignment.py
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from attnviz.backbones import load_backbone  # noqa: E402
from attnviz.geometry import Axis, Geometry  # noqa: E402
from attnviz.maps import normalise  # noqa: E402
from attnviz.pipeline import Analyser  # noqa: E402
from attnviz.render.overlay import blend, heat  # noqa: E402
from tests.conftest import calibrate_bn  # noqa: E402
from tests.test_receptive import _erf, _ring, _square  # noqa: E402

SIZE, SCALE = 224, 2


def clamped(g: Geometry) -> Geometry:
    """The drawing before: each axis's affine fit of the centroids, linear between, flat outside."""
    return Geometry(*(Axis(a.n, a.a, a.b, 0.0, a.table) for a in (g.rows, g.cols)), g.input_size)


def panel(base: Image.Image, up: np.ndarray, title: str, r: tuple[float, float] | None) -> Image.Image:
    """The heat (already at the image's size) in jet over the photo, with its title and r."""
    out = blend(base, up, "jet", 0.5)             # same size: drawn as is, one pixel per value
    d = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=15)
    d.rectangle([0, 0, out.width, 44], fill="white")
    d.text((6, 4), title, fill="black", font=font)
    if r is not None:
        d.text((6, 24), f"r with R: {r[0]:.3f} · border ring {r[1]:.3f}", fill="black", font=font)
    return out


def main() -> None:
    photos = [_square(p, SIZE) for p in sorted((ROOT / "sample_images").glob("*.jpg"))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone("resnet18", "none", input_size=SIZE, seed=0)
    prep = Analyser(bb, ["spatial"], align=False)
    calibrate_bn(bb.model, prep.preprocess(photos + [p.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in photos]))
    image = _square(ROOT / "sample_images" / "cat.jpg", SIZE)
    (_, maps), = Analyser(bb, ["spatial"]).analyse_batch([image])
    m, g = maps[0].data, maps[0].geometry
    fields = _erf(bb.model, "layer4", SIZE, m.shape)
    v = normalise(m)
    reference = np.tensordot(v.ravel(), fields, 1) / fields.sum(axis=0)
    ring = _ring(SIZE)
    corr = lambda up: tuple(float(np.corrcoef(a.ravel(), b.ravel())[0, 1])   # noqa: E731
                            for a, b in ((up, reference), (up[ring], reference[ring])))
    big = lambda up: np.asarray(Image.fromarray(up.astype(np.float32), "F").resize(   # noqa: E731
        (SIZE * SCALE, SIZE * SCALE), Image.Resampling.BILINEAR))
    base = image.resize((SIZE * SCALE, SIZE * SCALE), Image.Resampling.LANCZOS)
    heats = [("block centres (--no-align)", heat(v, SIZE, SIZE)),
             ("before: measured centres, clamped", heat(v, SIZE, SIZE, clamped(g))),
             ("now: by receptive field", heat(v, SIZE, SIZE, g))]
    tiles = [panel(base, big(up), title, corr(up)) for title, up in heats]
    tiles.append(panel(base, big(reference), "R: through every cell's true field", None))
    sheet = Image.new("RGB", (2 * tiles[0].width + 8, 2 * tiles[0].height + 8), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % 2) * (tile.width + 8), (k // 2) * (tile.height + 8)))
    sheet.save(Path(__file__).with_name("alignment.png"), optimize=True)
    for (title, up) in heats:
        print(f"{title}: r {corr(up)[0]:.3f}, ring {corr(up)[1]:.3f}")


if __name__ == "__main__":
    main()
