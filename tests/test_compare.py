"""`attnviz compare`: sheet geometry and pages, what a colour means under each scale, flat maps,
one forward pass per batch by layers, and sheets from a run folder without recomputing."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import attnviz.compare as cmp
from attnviz.errors import AttnvizError
from attnviz.pipeline import Analyser, run
from attnviz.render.band import has_band
from attnviz.render.overlay import colorize
from attnviz.render.sheet import (SheetCell, SheetRow, cell_ranges, is_flat, render_pages, sheet_layout,
                                  sheet_size)
from tests.conftest import photo


def _rows(n: int, cols: int = 3, seed: int = 0) -> list[SheetRow]:
    rng = np.random.default_rng(seed)
    return [SheetRow(photo(64, 64, i), f"img{i}.png", [SheetCell(rng.random((4, 4)).astype(np.float32), f"k{c}")
                                                        for c in range(cols)]) for i in range(n)]


def test_pages_and_geometry():
    pages = render_pages(["a", "b", "c"], _rows(5), per_page=2, cell=96)
    assert [p.size for p in pages] == [sheet_size(2, 3, 96)] * 2 + [sheet_size(1, 3, 96)]
    g = sheet_layout(96)
    assert sheet_size(2, 3, 96) == (g.pad + g.label_w + g.pad + 4 * (96 + g.pad), g.top + 2 * g.row_h + g.legend_h)
    random = render_pages(["a", "b", "c"], _rows(1), cell=96, random=True)[0]
    assert random.height == sheet_size(1, 3, 96, random=True)[1] > sheet_size(1, 3, 96)[1]
    assert has_band(random)                                   # the red "random weights" band, on top


def _pixel(page: Image.Image, row: int, col: int, x: int, y: int, cell: int = 96) -> tuple:
    """Pixel (x, y) of the square cell at (row, map column col) on a page."""
    g = sheet_layout(cell)
    left = g.pad + g.label_w + g.pad + (col + 1) * (g.cell + g.pad)
    return tuple(np.asarray(page)[g.top + row * g.row_h + y, left + x])


def test_shared_scale_gives_equal_values_equal_colours():
    # one kind, two images; value 1.0 is the right edge of row 0 and the left edge of row 1
    rows = [SheetRow(photo(64, 64, 1), "a", [SheetCell(np.array([[0.0, 1.0]], np.float32), "spatial")]),
            SheetRow(photo(64, 64, 2), "b", [SheetCell(np.array([[1.0, 3.0]], np.float32), "spatial")])]
    shared = render_pages(["spatial"], rows, scale="shared", alpha=1.0, cell=96)[0]
    right0, left1 = _pixel(shared, 0, 0, 94, 48), _pixel(shared, 1, 0, 1, 48)
    assert right0 == left1 == tuple(colorize(np.array([1 / 3]))[0])       # 1.0 on the shared 0…3 scale
    assert _pixel(shared, 1, 0, 94, 48) == tuple(colorize(np.array([1.0]))[0])
    cell = render_pages(["spatial"], rows, scale="cell", alpha=1.0, cell=96)[0]
    assert _pixel(cell, 0, 0, 94, 48) != _pixel(cell, 1, 0, 1, 48)         # per-map min–max: not comparable
    assert cell_ranges(rows, "row") == [[(0.0, 1.0)], [(1.0, 3.0)]]
    assert cell_ranges(rows, "shared") == [[(0.0, 3.0)], [(0.0, 3.0)]]


def test_flat_maps_are_drawn_in_one_colour_and_labelled():
    noise = np.random.default_rng(0).uniform(-6e-12, 6e-12, (7, 7)).astype(np.float32)   # random-init EfficientNet
    assert is_flat(noise) and is_flat(np.full((3, 3), 5.0)) and is_flat(1000 + 1e-3 * noise / 6e-12)
    assert not is_flat(np.array([[0.0, 1e-3]])) and not is_flat(np.array([[0.5, 0.5001]]))
    rows = [SheetRow(photo(64, 64), "a", [SheetCell(noise, "channel"),
                                          SheetCell(np.arange(49, dtype=np.float32).reshape(7, 7), "spatial")])]
    page = render_pages(["channel", "spatial"], rows, alpha=1.0, cell=96)[0]
    g = sheet_layout(96)
    flat = np.asarray(page)[g.top + 40:g.top + 90, g.pad + g.label_w + g.pad + (96 + g.pad) + 5:][:, :85]
    assert len(np.unique(flat.reshape(-1, 3), axis=0)) == 1                 # one colour, not stretched noise
    label = np.asarray(page)[g.top + 2:g.top + g.line, g.pad + g.label_w + g.pad + (96 + g.pad):][:, :40]
    assert (label == 255).all(axis=-1).any() and (label == 0).all(axis=-1).any()   # white "flat" on black


def test_by_layers_is_one_forward_and_equals_each_layer_alone(resnet18_small):
    layers = ["layer2", "layer3"]
    groups = cmp._analysers("layers", resnet18_small, ["spatial", "channel"], layers, [], {})
    images = [photo(80, 60, 1), photo(50, 70, 2)]
    first, *others = [a for _, a in groups]
    preds, per_layer = first.analyse_layers(images, others)
    assert sum(a.forwards for _, a in groups) == 1
    for name, maps in zip(layers, per_layer):
        alone = Analyser(resnet18_small, ["spatial", "channel"], layer=name, native=False).analyse_batch(images)
        for (p, ref), got in zip(alone, maps):
            assert [m.name for m in got] == [m.name for m in ref] and {m.layer for m in got} == {name}
            for a, b in zip(got, ref):
                np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)
        assert [q.index for q in preds[0]] == [q.index for q in alone[0][0]]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, resnet18_small):
    root = tmp_path_factory.mktemp("imgs")
    for i in range(3):
        photo(60 + 10 * i, 60, i).save(root / f"p{i}.png")
    out = tmp_path_factory.mktemp("o") / "run"
    run([root], out, backbone=resnet18_small, kinds=["spatial", "self", "cross"], layer="layer2")
    return root, out


def test_compare_from_a_run_folder_reads_its_maps(run_folder, tmp_path, monkeypatch):
    _, out = run_folder
    monkeypatch.setattr(cmp, "Analyser", None)              # nothing may be recomputed
    report = cmp.compare([out], tmp_path / "sheet.png", per_page=2, scale="shared", cell=96)
    assert report.rows == 3 and report.random
    assert report.columns == ["spatial · derived", "self · derived", "self-received · derived",
                              "cross · top-1 class · derived"]
    assert [p.name for p in report.files] == ["sheet-001.png", "sheet-002.png"]
    sizes = [Image.open(p).size for p in report.files]
    assert sizes == [sheet_size(2, 4, 96, random=True), sheet_size(1, 4, 96, random=True)]
    pdf = cmp.compare([out], tmp_path / "all.pdf", per_page=1, cell=96)
    data = pdf.files[0].read_bytes()
    assert pdf.files == [tmp_path / "all.pdf"] and len(re.findall(rb"/Type\s*/Page\b(?!s)", data)) == 3
    with pytest.raises(AttnvizError, match="by kinds"):
        cmp.compare([out], tmp_path / "x.png", by="layers", layers=["layer2"])
    with pytest.raises(AttnvizError, match=r"\.pdf"):
        cmp.compare([out], tmp_path / "x.jpg")


def test_compare_images_by_kinds_matches_a_run(run_folder, tmp_path, resnet18_small):
    root, out = run_folder
    fresh = cmp.compare([root], tmp_path / "fresh.png", backbone=resnet18_small, kinds=["spatial", "self", "cross"],
                        layer="layer2", cell=96, per_page=8, alpha=1.0)
    stored = cmp.compare([out], tmp_path / "stored.png", cell=96, per_page=8, alpha=1.0)
    assert fresh.forwards == 1 and fresh.columns == stored.columns
    a = np.asarray(Image.open(fresh.files[0]), np.int16)
    b = np.asarray(Image.open(stored.files[0]), np.int16)
    g = sheet_layout(96)
    body = slice(g.top, g.top + 3 * g.row_h)
    x0 = g.pad + g.label_w + g.pad + (96 + g.pad)           # map cells only (the originals differ in size)
    assert np.abs(a[body, x0:] - b[body, x0:]).mean() < 4   # same maps; originals resampled from 512 px vs source


def test_cli_compare_writes_sheets_and_refuses_bad_output(tmp_path):
    photo(64, 48, 1).save(tmp_path / "a.png")
    fast = ["--backbone", "resnet18", "--weights", "none", "--input-size", "64", "--seed", "0", "--cell", "96"]
    ok = subprocess.run([sys.executable, "-m", "attnviz.cli", "compare", str(tmp_path / "a.png"), "-o",
                         str(tmp_path / "s.png"), "--kinds", "spatial,self", "--scale", "row", *fast],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert Image.open(tmp_path / "s.png").size == sheet_size(1, 3, 96, random=True)
    bad = subprocess.run([sys.executable, "-m", "attnviz.cli", "compare", str(tmp_path / "a.png"), "-o",
                          str(tmp_path / "s.gif"), *fast], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: -o ")
    assert "Traceback" not in bad.stderr


def test_the_query_of_a_self_map_is_marked():
    m = np.random.default_rng(1).random((6, 6)).astype(np.float32)
    rows = [SheetRow(photo(64, 64), "a", [SheetCell(m, "self", point=(0.25, 0.75)), SheetCell(m, "self")])]
    page = np.asarray(render_pages(["self", "self-received"], rows, alpha=1.0, cell=96)[0])
    g = sheet_layout(96)
    x0, y0 = g.pad + g.label_w + g.pad + (96 + g.pad), g.top
    near = page[y0 + 72 - 7:y0 + 72 + 8, x0 + 24 - 7:x0 + 24 + 8].reshape(-1, 3)
    assert (near == 0).all(axis=1).any() and (near == 255).all(axis=1).any()    # a black ring edged in white
    plain = page[y0:y0 + 96, x0 + 96 + g.pad:x0 + 2 * 96 + g.pad].reshape(-1, 3)
    assert not (plain == 0).all(axis=1).any() and not (plain == 255).all(axis=1).any()   # jet has neither
