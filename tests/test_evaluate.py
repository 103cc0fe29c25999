"""Pointing game and energy-in-box, on a hand-made run with known answers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from attnviz.errors import AttnvizError
from attnviz.metrics import Box, energy_in_boxes, pointing_hit
from attnviz.report.evaluate import evaluate_run, load_boxes


def _run(tmp_path, maps: dict[str, np.ndarray], prompt_of: dict[str, str] | None = None):
    """A fake OUT with one 100×50 image and the given raw maps (manifest peaks computed as attnviz does)."""
    out = tmp_path / "out"
    (out / "img").mkdir(parents=True, exist_ok=True)
    np.savez(out / "img" / "maps.npz", **maps)
    entries = []
    for name, m in maps.items():
        r, c = np.unravel_index(m.argmax(), m.shape)
        entry = {"kind": "cross" if name.startswith("cross") else name, "name": name, "npz_key": name,
                 "peak": [(c + 0.5) * 100 / m.shape[1], (r + 0.5) * 50 / m.shape[0]]}
        if prompt_of and name in prompt_of:
            entry["prompt"] = prompt_of[name]
        entries.append(entry)
    manifest = {"images": [{"source": "a/img.png", "output": "img", "status": "ok", "size": [100, 50],
                            "maps": entries}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_pointing_and_energy_numbers(tmp_path):
    right = np.zeros((5, 10), np.float32)
    right[1, 8] = 1.0                                    # peak at cell (1, 8): x=85, y=15
    wrong = np.zeros((5, 10), np.float32)
    wrong[4, 0] = 1.0                                    # bottom-left: a miss
    out = _run(tmp_path, {"spatial": right, "self": wrong})
    boxes = {"img.png": [Box(80, 10, 90, 20)]}           # matched by file name
    ev = evaluate_run(out, boxes)
    assert ev.pointing_game == {"spatial": 1.0, "self": 0.0}
    # energy: normalised map upsampled to 100×50; a single hot cell of a 5×10 map spreads bilinearly
    up_share = energy_in_boxes(right, (100, 50), [Box(80, 10, 90, 20)])
    assert ev.energy_in_box["spatial"] == pytest.approx(up_share, abs=1e-4) and 0.3 < up_share < 1.0
    man = json.loads((out / "manifest.json").read_text())
    assert man["pointing_game"] == {"spatial": 1.0, "self": 0.0}
    assert json.loads((out / "evaluation.json").read_text())["counts"] == {"spatial": 1, "self": 1}


def test_a_transposed_map_fails(tmp_path):
    m = np.zeros((10, 10), np.float32)
    m[1, 8] = 1.0                                        # top-right
    boxes = {"a/img.png": [Box(80, 5, 100, 15)]}
    assert evaluate_run(_run(tmp_path, {"spatial": m}), boxes, write=False).pointing_game["spatial"] == 1.0
    assert evaluate_run(_run(tmp_path, {"spatial": m.T.copy()}), boxes, write=False).pointing_game["spatial"] == 0.0


def test_cross_maps_must_hit_the_named_object(tmp_path):
    left = np.zeros((4, 4), np.float32)
    left[2, 0] = 1.0                                     # x=12.5, y=31.25
    out = _run(tmp_path, {"cross-the-red-ring": left, "cross-the-blue-star": left},
               {"cross-the-red-ring": "the red ring", "cross-the-blue-star": "the blue star"})
    boxes = {"a/img.png": [Box(0, 20, 30, 45, "the red ring"), Box(60, 0, 100, 50, "the blue star")]}
    ev = evaluate_run(out, boxes, write=False)
    assert ev.pointing_game == {"cross": 0.5} and ev.counts == {"cross": 2}


def test_tolerance_and_edges():
    assert pointing_hit([10, 10], [Box(0, 0, 10, 10)])
    assert not pointing_hit([12, 10], [Box(0, 0, 10, 10)])
    assert pointing_hit([12, 10], [Box(0, 0, 10, 10)], tolerance=2)


def test_load_simple_and_coco(tmp_path):
    simple = tmp_path / "b.json"
    simple.write_text(json.dumps({"x.jpg": [[1, 2, 3, 4], {"box": [5, 6, 7, 8], "label": "dog"}]}))
    assert load_boxes(simple) == {"x.jpg": [Box(1, 2, 3, 4), Box(5, 6, 7, 8, "dog")]}
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 3, "file_name": "y.jpg"}],
                                "annotations": [{"image_id": 3, "bbox": [10, 20, 30, 40], "category_id": 1}],
                                "categories": [{"id": 1, "name": "cat"}]}))
    assert load_boxes(coco) == {"y.jpg": [Box(10, 20, 40, 60, "cat")]}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AttnvizError, match="cannot read it as JSON"):
        load_boxes(bad)
