"""Regenerate the README's pictures: `python docs/figures.py` (offline, a minute on a laptop CPU)."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

from PIL import Image

import attnviz
from attnviz.images import load_image

DOCS = Path(__file__).parent
SAMPLES = DOCS.parent / "sample_images"


def clip_value_vs_plain(arch: str = "ViT-B-16", prompts: tuple[str, ...] = ("a cat", "a rocket")) -> Path:
    """One row per sample photo: the value-path and the plain-token cross map of each prompt."""
    from attnviz.backbones import load_backbone
    from attnviz.pipeline import Analyser
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone(f"clip:{arch}", "DEFAULT" if "--pretrained" in sys.argv else "none", seed=0)
    images = [load_image(p) for p in sorted(SAMPLES.glob("*.jpg"))]
    by_variant = {}
    for variant in ("value", "plain"):
        an = Analyser(bb, ["cross"], texts=prompts, variant=variant)
        by_variant[variant] = an.analyse_batch(images)
    rows = []
    for i, (path, image) in enumerate(zip(sorted(SAMPLES.glob("*.jpg")), images)):
        cells = [attnviz.GridCell("original", None)]
        for j, prompt in enumerate(prompts):
            for variant in ("value", "plain"):
                m = by_variant[variant][i][1][j]
                cells.append(attnviz.GridCell(f"“{prompt}”\n{variant} · {m.provenance}", m.data))
        rows.append(attnviz.GridRow(image, cells, label=f"{path.name} · clip:{arch} ({bb.weights})"))
    return _save(attnviz.grid(rows, cell=180), "clip_value_vs_plain.jpg")


def _save(image: Image.Image, name: str) -> Path:
    """README pictures are JPEGs: a tenth of the PNG's size, and only people look at them."""
    out = DOCS / name
    image.save(out, quality=85)
    return out


if __name__ == "__main__":
    print(clip_value_vs_plain())
