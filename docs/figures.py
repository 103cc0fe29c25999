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


def native_vs_derived(n: int = 3, seed: int = 7) -> Path:
    """Demo scenes: each native map of the trained demo model beside its derived counterpart."""
    from attnviz.zoo.world import make_scenes
    from attnviz.pipeline import Analyser
    scenes = make_scenes(n, seed)
    images = [Image.fromarray(s.image) for s in scenes]
    prompts = [[s.objects[0].caption] for s in scenes]
    native = Analyser("demo", ["spatial", "self", "cross"]).analyse_batch(images, prompts)
    derived = Analyser("demo", ["spatial", "self"], native=False).analyse_batch(images, prompts)
    rows = []
    for scene, image, (_, nat), (_, der) in zip(scenes, images, native, derived):
        by_n, by_d = {m.name: m for m in nat}, {m.name: m for m in der}
        cross = next(m for m in nat if m.kind == "cross")
        cells = [attnviz.GridCell("original", None),
                 attnviz.GridCell(f"spatial\nnative ({by_n['spatial'].layer})", by_n["spatial"].data),
                 attnviz.GridCell(f"spatial\nderived ({by_d['spatial'].layer})", by_d["spatial"].data),
                 attnviz.GridCell("self: class token\nnative", by_n["self"].data),
                 attnviz.GridCell("self: peak query\nderived", by_d["self"].data),
                 attnviz.GridCell(f"cross “{cross.meta['prompt']}”\nnative", cross.data)]
        rows.append(attnviz.GridRow(image, cells, label=f"demo scene · target “{scene.objects[0].caption}”",
                                    boxes=[o.box for o in scene.objects]))
    return _save(attnviz.grid(rows, cell=170), "native_vs_derived.jpg")


def explain_strips(seed: int = 7, index: int = 2) -> list[Path]:
    """One `attnviz explain` strip per kind on a demo scene (docs/explain-<kind>.png, each < 200 KB)."""
    import tempfile
    from attnviz.explain import explain, write_explained
    from attnviz.zoo.world import make_scenes
    scene = make_scenes(index + 1, seed)[index]
    image = Image.fromarray(scene.image)
    ex = explain(image, "all", backbone="demo", texts=(scene.objects[-1].caption,))
    ex.source = f"demo scene {index} (seed {seed})"
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        write_explained(ex, tmp)
        for s in ex.strips:
            with Image.open(Path(tmp) / f"{s.kind}.png") as im:   # 256 dithered colours: a third of the bytes
                out.append(_palette_png(im, f"explain-{s.kind}.png"))
    return out


def gradient_kinds(seed: int = 7, n: int = 3) -> Path:
    """demo-vit on two-object scenes: raw class-token attention and rollout (one map for every
    class) beside self-gae and self-legrad targeted at each object's class."""
    import numpy as np
    from attnviz.pipeline import Analyser
    from attnviz.zoo.world import make_scenes
    scenes = [s for s in make_scenes(60, seed) if len(s.objects) >= 2][:n]
    rows = []
    for scene in scenes:
        image = Image.fromarray(np.asarray(scene.image, np.uint8))
        a, b = scene.objects[0].category, scene.objects[1].category
        (_, raw), = Analyser("demo-vit", ["self"]).analyse_batch([image])
        (_, grad), = Analyser("demo-vit", ["self-gae", "self-legrad"], targets=(a, b)).analyse_batch([image])
        by = {m.name: m for m in [*raw, *grad]}
        cells = [attnviz.GridCell("original", None), attnviz.GridCell("self (class token)", by["self"].data),
                 attnviz.GridCell("self-rollout", by["self-rollout"].data)]
        for kind in ("self-gae", "self-legrad"):
            for c in (a, b):
                cells.append(attnviz.GridCell(f"{kind}\n→ {c}", by[f"{kind}-{c.replace(' ', '-')}"].data))
        rows.append(attnviz.GridRow(image, cells, label=f"demo-vit · scene with {a} and {b}"))
    return _save(attnviz.grid(rows, cell=150), "gradient_kinds.png")


def _palette_png(image: Image.Image, name: str) -> Path:
    """A PNG in 256 dithered colours (sheets and screenshots hold text: no JPEG), well under 300 KB."""
    rgb = image.convert("RGB")
    palette = rgb.quantize(256, method=Image.Quantize.MEDIANCUT)
    out = DOCS / name
    rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
    return out


def compare_and_gallery(scenes: int = 3, sheet: bool = True) -> list[Path]:
    """`attnviz compare` on a demo run (three scenes), and the run's gallery in headless Chromium
    (a 1,000 px wide window: the page fits it); `sheet=False`: the gallery only."""
    import shutil
    import tempfile
    from attnviz.compare import compare
    from attnviz.demo.run import run_demo
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        out = Path(tmp) / "demo"
        run_demo(out, scenes, command=f"attnviz demo -o demo_out/ --scenes {scenes}")
        done = []
        if sheet:
            pages = compare([out], Path(tmp) / "sheet.png", kinds=["channel", "spatial", "self"], cell=160)
            done.append(_palette_png(Image.open(pages.files[0]), "compare_sheet.png"))
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            return done                                   # the screenshot needs playwright + chromium
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1000, "height": 720})
            page.goto((out / "index.html").as_uri())
            page.screenshot(path=str(Path(tmp) / "gallery.png"))
            browser.close()
        return done + [_palette_png(Image.open(Path(tmp) / "gallery.png"), "gallery.png")]


def _save(image: Image.Image, name: str) -> Path:
    """README pictures are JPEGs: a tenth of the PNG's size, and only people look at them."""
    out = DOCS / name
    image.save(out, quality=85)
    return out


if __name__ == "__main__":
    print(gradient_kinds())
    print(native_vs_derived())
    print(explain_strips())
    print(*compare_and_gallery())
    print(clip_value_vs_plain())
