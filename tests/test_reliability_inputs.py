"""Reliability (issue 8), part 3: ordinary bad input is exit 2 in one line (never 3), NaN weights are
per-image errors with strict JSON, batches stay within the pixel budget, and the Python API checks
its arguments before loading a model and turns one bad image into one error Result."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import attnviz
import attnviz.pipeline.analyser as analyser_module
import attnviz.pipeline.runner as runner
from attnviz.errors import AttnvizError
from attnviz.pipeline import run
from attnviz.report.outputs import Style
from tests.clirun import FAST, cli, strict_json
from tests.conftest import photo

SPATIAL = ["--kinds", "spatial"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished run (two images) to evaluate, and its input folder."""
    root = tmp_path_factory.mktemp("ev")
    src = root / "in"
    src.mkdir()
    photo(60, 40, 1).save(src / "a.png")
    photo(40, 60, 2).save(src / "b.png")
    run([src], root / "out", backbone="resnet18", weights="none", input_size=64, seed=0,
        style=Style(size=96), kinds=["spatial"])
    return root


# ---- malformed --boxes and manifests for `evaluate` ------------------------------------------

COCO = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}]}
BAD_BOXES = {
    "string coordinates": ('{"a.png": [["1", 2, 3, 4]]}', "expected finite numbers"),
    "NaN": ('{"a.png": [[NaN, 2, 3, 4]]}', "expected finite numbers"),
    "three numbers": ('{"a.png": [[1, 2, 3]]}', "expected [x0, y0, x1, y1], got [1, 2, 3]"),
    "COCO without bbox": (json.dumps({**COCO, "annotations": [{"image_id": 1}]}), "needs image_id and bbox"),
    "COCO unknown image_id": (json.dumps({**COCO, "annotations": [{"image_id": 9, "bbox": [1, 2, 3, 4]}]}),
                              "image_id 9 is not in the file's images"),
    "not JSON": ("boxes: a.png 1 2 3 4", "cannot read it as JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_BOXES))
def test_malformed_boxes_are_exit_2_in_one_line(done, tmp_path, case):
    text, expected = BAD_BOXES[case]
    (tmp_path / "boxes.json").write_text(text)
    res = cli("evaluate", done / "out", "--boxes", tmp_path / "boxes.json")
    assert res.code == 2 and expected in res.one_error()
    assert not (done / "out" / ".attnviz.lock").exists()


@pytest.mark.parametrize("manifest", ["{not json", "[]"])
def test_malformed_manifest_for_evaluate_is_exit_2(tmp_path, manifest):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text(manifest)
    (tmp_path / "boxes.json").write_text('{"a.png": [[0, 0, 10, 10]]}')
    res = cli("evaluate", tmp_path / "out", "--boxes", tmp_path / "boxes.json")
    assert res.code == 2 and "manifest" in res.one_error() + "maps.npz"


def test_a_record_without_its_files_is_a_skipped_line_for_evaluate(tmp_path):
    """A damaged record is that image's note (exit 1), never the whole evaluation's (issue 21)."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text('{"images": [{"source": "a.png", "output": "a", "status": "ok"}]}')
    (tmp_path / "boxes.json").write_text('{"a.png": [[0, 0, 10, 10]]}')
    res = cli("evaluate", tmp_path / "out", "--boxes", tmp_path / "boxes.json")
    assert res.code == 1 and "skipped: a.png: files damaged: maps.npz is missing" in res.stderr, res.stderr


def test_good_boxes_still_evaluate(done, tmp_path):
    (tmp_path / "boxes.json").write_text('{"a.png": [[0, 0, 60, 40]], "b.png": [{"box": [0, 0, 1, 1]}]}')
    res = cli("evaluate", done / "out", "--boxes", tmp_path / "boxes.json")
    assert res.code == 0, res.stderr
    ev = strict_json(done / "out" / "evaluation.json")
    assert ev["pointing_game"] == {"spatial": 0.5} and ev["counts"] == {"spatial": 2}   # a: whole image; b: 1 px


# ---- bad options and weights files -----------------------------------------------------------

def _demo_weights(path, kind: str):
    from attnviz.zoo.model import load_demo_model
    obj = {"empty": None, "tensor": torch.zeros(3), "list": [1, 2, 3],
           "wrapped": {"state_dict": load_demo_model().state_dict()}}[kind]
    if obj is None:
        path.write_bytes(b"")
    else:
        torch.save(obj, path)


@pytest.mark.parametrize("kind", ["empty", "tensor", "list", "wrapped"])
def test_demo_weights_files(done, tmp_path, kind):
    _demo_weights(tmp_path / "w.pt", kind)
    res = cli("run", done / "in" / "a.png", "-o", tmp_path / "out", "--backbone", "demo",
              "--weights", tmp_path / "w.pt", "--size", "96", *SPATIAL)
    if kind == "wrapped":
        assert res.code == 0, res.stderr
        assert [e["status"] for e in strict_json(tmp_path / "out" / "manifest.json")["images"]] == ["ok"]
    else:
        assert res.code == 2 and f"--weights {tmp_path / 'w.pt'}" in res.one_error()


BAD_OPTIONS = {
    "seed 2^70": (["--seed", str(2 ** 70)], "seed"),
    "device meta": (["--device", "meta"], "meta"),
    "size 30000": (["--size", "30000"], "'--size': Input should be less than or equal to 8192"),
    "input-size 5000": (["--input-size", "5000"], "'--input-size': Input should be less than or equal to 2048"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_options_are_exit_2_in_one_line(done, tmp_path, case):
    extra, named = BAD_OPTIONS[case]
    base = [a for a in FAST if a not in ("--seed", "0")] if "seed" in case else FAST
    res = cli("run", done / "in", "-o", tmp_path / "out", *base, *SPATIAL, *extra)
    assert res.code == 2 and named in res.one_error()


def test_huge_query_is_each_images_one_line_error_never_a_crash(done, tmp_path):
    res = cli("run", done / "in", "-o", tmp_path / "out", *FAST, "--kinds", "spatial,self", "--query", "1.7e308,1")
    assert res.code == 1, res.stderr                      # not 3: every image is recorded, none drawn
    images = strict_json(tmp_path / "out" / "manifest.json")["images"]
    assert [e["status"] for e in images] == ["error", "error"]
    assert all("lies outside this" in e["error"] and e["maps"] == [] for e in images)
    inside = cli("run", done / "in", "-o", tmp_path / "in", *FAST, "--kinds", "spatial,self", "--query", "3,2")
    assert inside.code == 0, inside.stderr                # a query inside every image is drawn


# ---- NaN in the weights ----------------------------------------------------------------------

@pytest.mark.parametrize("param", ["fc.weight", "layer1.0.conv1.weight"])
def test_nan_weights_are_per_image_errors_and_strict_json(done, tmp_path, param):
    sd = torchvision.models.resnet18().state_dict()
    sd[param].view(-1)[0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    res = cli("run", done / "in", "-o", tmp_path / "out", "--backbone", "resnet18", "--weights",
              tmp_path / "nan.pt", "--input-size", "64", "--size", "96", "-q")
    assert res.code == 1, res.stderr
    failed = [ln for ln in res.stderr.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 2 and all("not finite" in ln for ln in failed)
    images = strict_json(tmp_path / "out" / "manifest.json")["images"]      # no bare NaN anywhere
    assert [(e["status"], e["maps"]) for e in images] == [("error", []), ("error", [])]


# ---- the pixel budget ------------------------------------------------------------------------

def test_pixel_budget_splits_batches_with_the_same_results(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        photo(120, 100, i).save(src / f"big{i}.png")          # 12,000 px each
    kw = dict(backbone="resnet18", weights="none", input_size=64, seed=0, style=Style(size=96),
              kinds=["spatial", "self"], batch_size=8)
    whole = run([src], tmp_path / "whole", **kw)
    monkeypatch.setattr(runner, "PIXEL_BUDGET", 25_000)        # two images per batch
    split = run([src], tmp_path / "split", **kw)
    monkeypatch.setattr(runner, "PIXEL_BUDGET", 5_000)         # each image over it: alone
    alone = run([src], tmp_path / "alone", **kw)
    assert (whole.forwards, split.forwards, alone.forwards) == (1, 2, 4)
    for r in ("split", "alone"):
        for i in range(4):
            a, b = np.load(tmp_path / "whole" / f"big{i}" / "maps.npz"), np.load(tmp_path / r / f"big{i}" / "maps.npz")
            assert a.files == b.files
            for k in a.files:      # other batch sizes round differently in the last bits only
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7)


# ---- the Python API --------------------------------------------------------------------------

def _truncated_jpeg() -> Image.Image:
    buf = io.BytesIO()
    photo(80, 60, 3).save(buf, format="JPEG")
    return Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2]))    # lazy: not loaded


def test_api_one_bad_image_is_one_error_result():
    closed = photo(30, 30, 4)
    closed.close()
    good1, good2 = photo(50, 40, 1), photo(40, 50, 2)
    items = [good1, closed, Image.new("La", (20, 20)), Image.new("RGB", (0, 0)), _truncated_jpeg(), good2]
    kw = dict(backbone="resnet18", weights="none", input_size=64, seed=0, kinds=["spatial"], batch_size=4)
    results = attnviz.analyse(items, **kw)
    assert [r.status for r in results] == ["ok", "error", "error", "error", "error", "ok"]
    assert [r.source for r in results] == [f"<image {n}>" for n in range(6)]
    assert all(r.error and "\n" not in r.error for r in results[1:5])
    assert "0×0" in results[3].error
    alone = attnviz.analyse([good1, good2], **kw)
    for a, b in zip([results[0], results[5]], alone):
        np.testing.assert_allclose(a.map("spatial").data, b.map("spatial").data, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [dict(batch_size=0), dict(batch_size=-1), dict(colour="red"),
                                 dict(query=(1, float("nan"))), dict(images=[3])], ids=str)
def test_api_arguments_are_checked_before_any_model_is_loaded(monkeypatch, bad):
    def no(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")
    monkeypatch.setattr(analyser_module, "load_backbone", no)
    bad = dict(bad)
    images = bad.pop("images", [photo(20, 20)])
    with pytest.raises(AttnvizError) as e:
        attnviz.analyse(images, backbone="no-such-net", **bad)
    assert "no-such-net" not in str(e.value) and "\n" not in str(e.value)


def test_api_single_strings_are_one_kind_and_one_prompt():
    [r] = attnviz.analyse([photo(40, 40)], backbone="resnet18", weights="none", input_size=64, seed=0,
                          kinds="spatial,cross", texts="tabby cat")
    assert r.status == "ok" and [m.kind for m in r.maps] == ["spatial", "cross"]
    assert r.maps[1].meta["prompt"] == "tabby cat" and r.maps[1].meta["prompt_source"] == "--text"
    assert math.isfinite(r.maps[1].meta["probability"])


def test_decompression_bomb_warning_names_the_file(tmp_path, monkeypatch):
    photo(40, 40).save(tmp_path / "big-one.png")        # 1,600 px: over the limit, under twice it
    photo(60, 60).save(tmp_path / "bomb.png")           # 3,600 px: over twice the limit, refused
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.warns(UserWarning, match="big-one.png"):
        results = attnviz.analyse([tmp_path], backbone="resnet18", weights="none", input_size=64, seed=0,
                                  kinds=["spatial"])
    assert [(r.source, r.status) for r in results] == [("big-one.png", "ok"), ("bomb.png", "error")]
    assert "decompression bomb" in results[1].error
