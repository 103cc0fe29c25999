"""The real `attnviz` entry point: output tree, manifest, exit codes, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnviz.geometry import Geometry
from attnviz.render.band import has_band, unbanded
from tests.conftest import photo

ATTNVIZ = str(Path(sys.executable).parent / "attnviz")
FAST = ["--backbone", "resnet18", "--weights", "none", "--input-size", "64", "--size", "96", "--seed", "0"]


def attnviz(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([ATTNVIZ, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def nested_run(tmp_path_factory):
    """A nested folder with a non-image and two same-stem files, run once through the CLI."""
    root = tmp_path_factory.mktemp("photos")
    (root / "a").mkdir()
    (root / "b" / "c").mkdir(parents=True)
    photo(90, 60, 1).save(root / "a" / "cat.jpg")
    photo(60, 90, 2).save(root / "a" / "cat.png")
    photo(3000, 2, 3).save(root / "b" / "c" / "strip.png")
    photo(1, 1, 4).save(root / "top.bmp")
    (root / "b" / "notes.txt").write_text("not an image")
    out = tmp_path_factory.mktemp("out") / "result"
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    proc = attnviz("run", str(root), "-o", str(out), *FAST, "--batch-size", "2", "--quiet")
    after = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert before == after   # the input tree is never touched
    return root, out, proc


def test_exit_code_1_and_one_line_for_the_bad_file(nested_run):
    _, out, proc = nested_run
    assert proc.returncode == 1, proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("failed:")]
    assert failed == ["failed: b/notes.txt: not an image (cannot identify image file)"]
    assert "Traceback" not in proc.stderr


def test_output_tree_mirrors_the_input(nested_run):
    _, out, _ = nested_run
    folders = sorted(str(p.relative_to(out)) for p in out.rglob("*") if (p / "maps.npz").exists())
    assert folders == ["a/cat_jpg", "a/cat_png", "b/c/strip", "top"]
    files = sorted(p.name for p in (out / "a" / "cat_jpg").iterdir())
    assert files == sorted(["original.png", "channel.png", "channel_weights.png", "spatial.png",
                            "mixed-serial.png", "mixed-parallel.png", "self.png", "self-received.png",
                            "grid.png", "maps.npz", files[[f.startswith("cross-") for f in files].index(True)]])
    with Image.open(out / "a" / "cat_jpg" / "spatial.png") as im:   # random weights: the band above it
        assert has_band(im) and unbanded(im).size == (96, 64)       # longest side --size, the image's aspect
    with Image.open(out / "b" / "c" / "strip" / "original.png") as im:
        assert unbanded(im).size == (96, 1)
    assert (out / "manifest.json").stat().st_mode & 0o044 == 0o044     # readable by others too
    assert not (out / "b" / "notes").exists()


def test_manifest_records_every_image_and_map(nested_run):
    _, out, _ = nested_run
    man = json.loads((out / "manifest.json").read_text())
    assert man["schema_version"] == 1 and man["backbone"]["name"] == "resnet18"
    assert man["backbone"]["layer"] == "layer4" and man["backbone"]["input_size"] == 64
    assert man["summary"] == {"images": 5, "ok": 4, "errors": 1, "seconds": man["summary"]["seconds"],
                              "rankings": {}}
    by_source = {i["source"]: i for i in man["images"]}
    assert sorted(by_source) == ["a/cat.jpg", "a/cat.png", "b/c/strip.png", "b/notes.txt", "top.bmp"]
    bad = by_source["b/notes.txt"]
    assert (bad["status"], bad["maps"], bad["output"]) == ("error", [], "b/notes")
    good = by_source["a/cat.jpg"]
    assert good["status"] == "ok" and good["error"] is None and good["size"] == [90, 60]
    assert len(good["predictions"]) == 5
    assert sum(p["probability"] for p in good["predictions"]) <= 1.0
    npz = np.load(out / good["output"] / "maps.npz")
    assert npz["channel_weights"].shape == (512,)
    for m in good["maps"]:
        data = npz[m["npz_key"]]
        assert data.dtype == np.float32 and list(data.shape) == m["shape"] == [2, 2]
        assert m["provenance"] == "derived" and (out / good["output"] / m["file"]).exists()
        assert m["min"] == pytest.approx(float(data.min())) and m["max"] == pytest.approx(float(data.max()))
        row, col = np.unravel_index(data.argmax(), data.shape)
        geometry = Geometry.from_record(m["geometry"])      # the layer's measured cell centres
        xs, ys = geometry.centres((90, 60))
        assert m["peak"] == [round(float(xs[col]), 2), round(float(ys[row]), 2)]
    kinds = [m["kind"] for m in good["maps"]]
    assert kinds == ["channel", "spatial", "mixed-serial", "mixed-parallel", "self", "self", "cross"]


def test_single_file_with_text_exits_0(tmp_path):
    photo(50, 40).save(tmp_path / "cat.jpg")
    proc = attnviz("run", str(tmp_path / "cat.jpg"), "-o", str(tmp_path / "out"), *FAST,
                   "--text", "a tabby cat", "--kinds", "cross,spatial")
    assert proc.returncode == 0, proc.stderr
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    maps = man["images"][0]["maps"]
    assert [m["name"] for m in maps] == ["spatial", "cross-a-tabby-cat"]
    assert maps[1]["prompt"] == "a tabby cat" and maps[1]["classes"] == [{"index": 281, "label": "tabby"}]
    ranked = man["summary"]["rankings"]["a tabby cat"]
    assert ranked == [{"source": "cat.jpg", "output": "cat", "score": maps[1]["probability"],
                       "peak": maps[1]["peak"], "file": "cross-a-tabby-cat.png"}]
    assert "images ok" in proc.stderr   # the rich summary


@pytest.mark.parametrize("args, message", [
    (["--backbone", "resnet5O"], "unknown backbone 'resnet5O'"),
    (["--layer", "layer9"], "--layer 'layer9' is not a feature map of resnet18"),
    (["--kinds", "spatail"], "unknown kind 'spatail'"),
    (["--text", "a flying saucer"], "names none of resnet18's classes; closest:"),
    (["--colormap", "nope"], "Invalid value for '--colormap': 'nope' is not a matplotlib colormap"),
    (["--query", "abc"], "Invalid value for '--query'"),
    (["--query", "nan,1"], "finite"),
    (["--kinds", ","], "name at least one kind"),
    (["--alpha", "2"], "Invalid value for '--alpha'"),
    (["--clip-variant", "bogus"], "--clip-variant 'bogus'"),
])
def test_setup_errors_exit_2_with_one_line(tmp_path, args, message):
    photo(20, 20).save(tmp_path / "x.png")
    fast = [a for a in FAST]
    if "--backbone" in args:
        fast[0:2] = []
    proc = attnviz("run", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), *fast, *args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_no_images_and_missing_path_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        proc = attnviz("run", str(path), "-o", str(tmp_path / "out"), *FAST)
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr


def test_version_help_and_layers():
    from attnviz import __version__
    assert attnviz("--version").stdout.strip() == f"attnviz {__version__}"
    help_text = attnviz("run", "--help").stdout
    for opt in ("--backbone", "--weights", "--layer", "--kinds", "--text", "--query", "--input-size",
                "--size", "--colormap", "--alpha", "--top-k", "--batch-size", "--device", "--seed", "--quiet"):
        assert opt in help_text
    listing = attnviz("backbones").stdout
    from attnviz.backbones import families
    for fam in families():                          # the listing is the registry, family by family
        assert f"{fam.syntax} — {fam.summary}" in listing
    assert "resnet50" in listing and "clip:ViT-B-16" in listing
    kinds = attnviz("kinds").stdout
    from attnviz.kinds import KINDS
    assert all(name in kinds for name in KINDS)
    proc = attnviz("layers", "resnet18")
    assert proc.returncode == 0
    row = next(line for line in proc.stdout.splitlines() if " layer4 " in line)
    assert "512×7×7" in row and "default" in row


REPO = Path(__file__).resolve().parents[1]


def test_inspect_lists_the_16_se_blocks_of_efficientnet_b0():
    proc = attnviz("inspect", "efficientnet_b0")
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "SqueezeExcitation" in line]
    assert len(rows) == 16 and "features.1.0.block.1" in rows[0]
    assert any(line.split() == ["channel", "native", "(features.7.0.block.2)"] for line in proc.stdout.splitlines())
    assert any(line.split() == ["spatial", "derived"] for line in proc.stdout.splitlines())


def test_user_cbam_model_runs_with_native_provenance(tmp_path):
    photo(70, 50).save(tmp_path / "x.png")
    proc = attnviz("run", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--model",
                   "tests.models:cbam_net", "--size", "64", "-q", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    prov = {m["name"]: m["provenance"] for m in man["images"][0]["maps"]}
    assert prov["channel"] == prov["spatial"] == prov["mixed-serial"] == "native"
    assert prov["mixed-parallel"] == prov["self"] == "derived"
    assert man["backbone"]["native"] == {"channel": "stage2.se", "spatial": "stage2.spatial",
                                         "mixed-serial": "stage2.spatial"}
    assert (tmp_path / "out" / "x" / "channel_depth.png").exists()


def test_bad_model_spec_exits_2(tmp_path):
    photo(20, 20).save(tmp_path / "x.png")
    proc = attnviz("run", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--model", "nosuch.module:f")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --model 'nosuch.module:f': cannot import")


def test_faithfulness_and_sanity_land_in_the_manifest(tmp_path):
    photo(40, 40).save(tmp_path / "x.png")
    proc = attnviz("run", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), *FAST,
                   "--kinds", "spatial,self", "--faithfulness", "--sanity", "-q")
    assert proc.returncode == 0, proc.stderr
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    san = man["sanity"]
    assert set(san["rank_correlation"]) == {"spatial", "self", "self-received"} and san["limit"] == 0.3
    assert san["flagged"] == sorted(k for k, v in san["rank_correlation"].items() if abs(v) >= 0.3)
    for m in man["images"][0]["maps"]:
        assert set(m["faithfulness"]) == {"deletion", "insertion"}
        assert 0 <= m["faithfulness"]["deletion"] <= 1 and 0 <= m["faithfulness"]["insertion"] <= 1
