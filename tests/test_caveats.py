"""Caveats travel with every picture: the random-weights band (every PNG, both HTML pages), the
chance level beside every pointing game, and the demo model's warning on images unlike its world."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

import attnviz.compare as cmp
from attnviz.backbones import load_backbone
from attnviz.explain import explain, write_explained
from attnviz.metrics import Box
from attnviz.pipeline import Analyser, run
from attnviz.render.band import BAND_COLOUR, band_height, banded, has_band, unbanded
from attnviz.report.evaluate import evaluate_run
from attnviz.zoo.palette import MAX_OFF_PALETTE, MIN_OBJECT, palette_shares, unlike_world
from attnviz.zoo.world import make_scenes
from tests.clirun import cli
from tests.conftest import photo


def _demo(weights: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone("demo", weights, seed=0)


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    """A random-init demo model (native SE, CBAM, self-attention heads, cross) and a derived
    resnet18 on two scenes and a photo, with --stats: every kind of picture a run writes."""
    root = tmp_path_factory.mktemp("imgs")
    for i, s in enumerate(make_scenes(2, seed=5)):
        Image.fromarray(s.image).save(root / f"scene{i}.png")
    photo(90, 60, 1).save(root / "photo.png")
    out = tmp_path_factory.mktemp("o") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                       # the photo is unlike the demo's world
        run([root], out, backbone=_demo("none"), stats=True, batch_size=2)
    return root, out


def test_the_band_is_added_above_and_taken_off_again():
    img = photo(120, 80, 3)
    b = banded(img)
    assert b.size == (120, 80 + band_height(120)) and has_band(b) and not has_band(img)
    assert np.array_equal(np.asarray(unbanded(b)), np.asarray(img)) and unbanded(img) is img
    top = np.asarray(b)[:band_height(120)]
    assert (top == BAND_COLOUR).all(-1).mean() > 0.6 and (top == 255).all(-1).any()   # red, white text
    assert has_band(banded(photo(16, 16)))                  # the narrowest picture still gets it


def test_every_png_of_a_random_run_carries_the_band(random_run):
    _, out = random_run
    pngs = sorted(out.rglob("*.png"))
    names = {p.name for p in pngs}
    # every kind of picture is there, so the enumeration below covers each of them
    assert {"original.png", "grid.png", "channel_weights.png", "channel_depth.png", "agreement.png",
            "self-heads.png", "spatial.png", "self.png"} <= names, names
    assert [p.relative_to(out) for p in pngs if not has_band(Image.open(p))] == []
    assert 'id="random"' in (out / "index.html").read_text(encoding="utf-8")
    # the overlay under its band is the original's size (the band adds rows, covers nothing)
    original = Image.open(out / "scene0" / "original.png")
    assert Image.open(out / "scene0" / "spatial.png").size == original.size
    assert unbanded(original).height == original.height - band_height(original.width)


def test_compare_of_a_random_run_carries_the_band_and_drops_it_from_the_originals(random_run, tmp_path):
    _, out = random_run
    report = cmp.compare([out], tmp_path / "sheet.png", cell=96, per_page=2)
    assert report.random and len(report.files) == 2
    assert all(has_band(Image.open(p)) for p in report.files)
    seen = []
    real = cmp.render_pages
    cmp.render_pages = lambda columns, rows, **kw: seen.extend(rows) or real(columns, rows, **kw)
    try:
        cmp.compare([out], tmp_path / "again.png", cell=96)
    finally:
        cmp.render_pages = real
    assert seen and not any(has_band(r.image) for r in seen)   # the originals' band is not part of the image


def test_explain_of_random_weights_bands_every_strip_and_the_page(tmp_path):
    scene = Image.fromarray(make_scenes(1, seed=3)[0].image)
    ex = explain(scene, "all", backbone=_demo("none"))
    files = write_explained(ex, tmp_path / "ex")
    pngs = sorted((tmp_path / "ex").glob("*.png"))
    assert len(pngs) == 5 and all(has_band(Image.open(p)) for p in pngs)
    assert 'id="random"' in (tmp_path / "ex" / "explain.html").read_text(encoding="utf-8")
    svg = write_explained(ex, tmp_path / "svg", fmt="svg")
    assert all("random weights" in p.read_text(encoding="utf-8") for p in svg if p.suffix == ".svg")
    trained = explain(scene, "spatial", backbone=_demo("DEFAULT"))
    write_explained(trained, tmp_path / "t")
    assert not has_band(Image.open(tmp_path / "t" / "spatial.png"))
    assert 'id="random"' not in (tmp_path / "t" / "explain.html").read_text(encoding="utf-8")
    assert files


def test_a_trained_run_has_no_band(tmp_path):
    Image.fromarray(make_scenes(1, seed=9)[0].image).save(tmp_path / "s.png")
    out = tmp_path / "run"
    run([tmp_path / "s.png"], out, backbone=_demo("DEFAULT"), kinds=["channel", "spatial"])
    pngs = list(out.rglob("*.png"))
    assert pngs and not any(has_band(Image.open(p)) for p in pngs)
    assert 'id="random"' not in (out / "index.html").read_text(encoding="utf-8")


def test_evaluate_gives_the_chance_level_and_says_the_weights_were_random(random_run):
    root, out = random_run
    manifest = json.loads((out / "manifest.json").read_text())
    size = {i["source"]: i["size"] for i in manifest["images"]}
    boxes = {src: [Box(0, 0, w / 2, h)] for src, (w, h) in size.items()}     # the left half of each image
    ev = evaluate_run(out, boxes, write=False)
    assert ev.random_weights and set(ev.chance) == set(ev.pointing_game)
    for kind, value in ev.chance.items():
        # independent: the share of each map's cell centres (as recorded in the manifest's geometry or
        # at block centres) in the left half is about one half; exactly half on an even grid
        assert 0.35 <= value <= 0.65, (kind, value)
    everything = {src: [Box(0, 0, w, h)] for src, (w, h) in size.items()}
    assert set(evaluate_run(out, everything, write=False).chance.values()) == {1.0}


def test_cli_evaluate_prints_chance_beside_every_pointing_game(random_run, tmp_path):
    _, out = random_run
    manifest = json.loads((out / "manifest.json").read_text())
    boxes = {i["source"]: [[0, 0, i["size"][0] / 2, i["size"][1]]] for i in manifest["images"]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    r = cli("evaluate", out, "--boxes", tmp_path / "boxes.json")
    assert r.code == 0, r.stderr
    assert "chance" in r.stderr and "random weights:" in r.stderr
    rows = [ln for ln in r.stderr.splitlines() if ln.startswith("│ spatial")]
    assert rows and rows[0].count("%") == 3                   # pointing game, chance, energy in box


def test_summary_csv_names_the_backbone_and_its_weights(random_run):
    _, out = random_run
    import csv
    with (out / "summary.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {(r["backbone"], r["weights"]) for r in rows} == {("demo", "none")}


def test_palette_shares_count_pixels_by_hand():
    img = np.full((10, 10, 3), 128, np.float32)               # grey: neither share
    img[:2] = (220, 35, 35)                                   # 20 % object red
    img[2:5] = (150, 90, 40)                                  # 30 % saturated brown, no world colour
    objects, off = palette_shares(img)
    assert objects == pytest.approx(0.2) and off == pytest.approx(0.3)
    assert unlike_world(img) is not None                      # 0.3 > MAX_OFF_PALETTE
    img[2:5] = 128
    assert unlike_world(img) is None
    grey = np.full((10, 10, 3), 90, np.float32)
    assert palette_shares(grey) == (0.0, 0.0) and "object colours" in unlike_world(grey)
    assert MIN_OBJECT < 0.01 and MAX_OFF_PALETTE == 0.2


def test_demo_model_warns_once_on_photos_and_never_on_its_scenes():
    scenes = [Image.fromarray(s.image) for s in make_scenes(40, seed=777)]
    a = Analyser(_demo("DEFAULT"), ["spatial"])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        a.analyse_batch(scenes)
        assert not [w for w in seen if "unlike" in str(w.message)]
        a.analyse_batch([photo(96, 96, 1), photo(80, 120, 2)])
        a.analyse_batch([photo(96, 96, 3)])
    unlike = [str(w.message) for w in seen if "unlike" in str(w.message)]
    assert len(unlike) == 1 and "demo" in unlike[0]
