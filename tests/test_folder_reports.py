"""summary.csv, agreement.csv/.png and index.html of a run, checked against its maps.npz."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from attnviz.geometry import Geometry

from attnviz.maps import upsample
from attnviz.pipeline import run
from attnviz.report.agreement import top_iou
from tests.conftest import photo


@pytest.fixture(scope="module")
def stats_run(tmp_path_factory, resnet18_small):
    """Three images (one named with markup and HTML characters) and a non-image, with --stats."""
    root = tmp_path_factory.mktemp("photos")
    photo(80, 60, 1).save(root / "a.png")
    photo(60, 90, 2).save(root / "b [x] <i>.png")
    photo(70, 70, 3).save(root / "c.jpg")
    (root / "broken.png").write_bytes(b"not an image")
    out = tmp_path_factory.mktemp("out") / "run"
    report = run([root], out, backbone=resnet18_small, kinds=["channel", "spatial", "self", "cross"],
                 stats=True, batch_size=2, layer="layer2")   # 8×8 maps; cross stays on layer4 (2×2)
    return out, json.loads((out / "manifest.json").read_text()), report


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _entropy(m: np.ndarray) -> float:
    """Independent: min–max to [0, 1], divide by the sum, Shannon entropy in bits over log2 N."""
    x = m.astype(np.float64).ravel()
    x = (x - x.min()) / (x.max() - x.min())
    p = x / x.sum()
    return float(sum(-v * math.log2(v) for v in p if v > 0) / math.log2(x.size))


def test_summary_csv_matches_the_npz_maps(stats_run):
    out, manifest, _ = stats_run
    rows = _rows(out / "summary.csv")
    ok = [i for i in manifest["images"] if i["status"] == "ok"]
    assert len(rows) == sum(len(i["maps"]) for i in ok) + 1          # + one row for the broken file
    error = [r for r in rows if r["status"] == "error"]
    assert [r["source"] for r in error] == ["broken.png"] and error[0]["error"] and error[0]["kind"] == ""
    checked = 0
    for image in ok:
        maps = np.load(out / image["output"] / "maps.npz")
        mine = {r["name"]: r for r in rows if r["output"] == image["output"]}
        for m in image["maps"]:
            r, data = mine[m["name"]], maps[m["npz_key"]]
            assert (r["kind"], r["provenance"], r["layer"]) == (m["kind"], m["provenance"], m["layer"])
            assert float(r["min"]) == pytest.approx(float(data.min()), rel=1e-6)
            assert float(r["max"]) == pytest.approx(float(data.max()), rel=1e-6)
            assert float(r["mean"]) == pytest.approx(float(data.mean()), rel=1e-5)
            assert float(r["entropy"]) == pytest.approx(_entropy(data), abs=1e-5)
            row, col = np.unravel_index(data.argmax(), data.shape)
            w, h = image["size"]
            geometry = Geometry.from_record(m.get("geometry"))   # the layer's measured cell centres
            xs, ys = geometry.centres((w, h)) if geometry else (
                (np.arange(data.shape[1]) + 0.5) * w / data.shape[1], (np.arange(data.shape[0]) + 0.5) * h / data.shape[0])
            assert float(r["peak_x"]) == pytest.approx(float(xs[col]), abs=0.01)
            assert float(r["peak_y"]) == pytest.approx(float(ys[row]), abs=0.01)
            assert r["top1_label"] == image["predictions"][0]["label"]
            assert float(r["top1_probability"]) == pytest.approx(image["predictions"][0]["probability"])
            checked += 1
    assert checked >= 12
    entropies = [float(r["entropy"]) for r in rows if r["entropy"]]
    assert 0 <= min(entropies) < max(entropies) <= 1 and len(set(entropies)) > 3


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Independent: Pearson of ranks, a tie's rank = (# smaller) + (# equal − 1) / 2 (upsampled maps tie)."""
    rank = lambda x: np.array([(x < v).sum() + ((x == v).sum() - 1) / 2 for v in x])   # noqa: E731
    ra, rb = rank(a.ravel()), rank(b.ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt((ra ** 2).sum() * (rb ** 2).sum()))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Independent: top-20 % = the k highest cells, ties going to the first in row-major order."""
    k = round(0.2 * a.size)
    top = lambda x: set(sorted(range(x.size), key=lambda i: (-float(x.ravel()[i]), i))[:k])   # noqa: E731
    ta, tb = top(a), top(b)
    return len(ta & tb) / len(ta | tb)


def test_agreement_matches_an_independent_computation(stats_run):
    out, manifest, report = stats_run
    rows = _rows(out / "agreement.csv")
    ok = [i for i in manifest["images"] if i["status"] == "ok"]
    assert len(rows) == len(ok) * 6                    # 4 kinds: 6 pairs per image
    for r in rows:
        maps = np.load(out / r["output"] / "maps.npz")
        entry = next(i for i in ok if i["output"] == r["output"])
        geo = {m["name"]: Geometry.from_record(m.get("geometry")) for m in entry["maps"]}
        a, b = maps[r["map_a"]], maps[r["map_b"]]
        h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
        # the finer grid; a coarser map spread as it is drawn (by its cells' receptive fields)
        a, b = (m if m.shape == (h, w) else upsample(m, h, w, geo[k]) for m, k in ((a, r["map_a"]), (b, r["map_b"])))
        assert float(r["spearman"]) == pytest.approx(_spearman(a, b), abs=1e-5)
        assert float(r["top20_iou"]) == pytest.approx(_iou(a, b), abs=1e-5)
    assert {r["map_a"] for r in rows} >= {"channel", "spatial"} and "self-received" not in \
        {r["map_a"] for r in rows} | {r["map_b"] for r in rows}       # one map per kind: self, not self-received
    mean = report.agreement
    i, j = mean["kinds"].index("channel"), mean["kinds"].index("spatial")
    pair = [float(r["spearman"]) for r in rows if {r["kind_a"], r["kind_b"]} == {"channel", "spatial"}]
    assert mean["spearman"][i][j] == pytest.approx(np.mean(pair), abs=1e-4) == mean["spearman"][j][i]
    assert len({round(float(r["spearman"]), 3) for r in rows}) > 5      # the numbers vary: a test that can fail
    from PIL import Image
    with Image.open(out / "agreement.png") as im:
        assert im.width > 400 and im.height > 200


def test_top_region_iou_edge_cases():
    a = np.arange(10, dtype=np.float32).reshape(2, 5)
    assert top_iou(a, a) == 1.0 and top_iou(a, -a) == 0.0     # 2 top cells each: same, then disjoint


def test_gallery_is_offline_escaped_and_complete(stats_run):
    out, manifest, _ = stats_run
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "<link" not in text
    assert "random weights — maps mean nothing" in text                   # random-init fixture
    assert "b [x] &lt;i&gt;.png" in text and "<i>.png" not in text         # file names are data
    srcs = re.findall(r'<img src="([^"]+)"', text)
    ok = [i for i in manifest["images"] if i["status"] == "ok"]
    assert len(srcs) == sum(1 + len(i["maps"]) for i in ok)
    from urllib.parse import unquote
    assert all((out / unquote(s)).is_file() for s in srcs)
    assert "broken.png" in text.split('id="errors"')[1]                    # errors listed


def test_pandas_one_liners_of_the_readme(stats_run):
    pd = pytest.importorskip("pandas")
    out, manifest, _ = stats_run
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "summary.csv" in b)
    scope: dict = {}
    exec(snippet.replace("OUT/", f"{out}/"), scope)                # the README's lines, as written
    maps, table = scope["maps"], scope["manifest"]
    assert set(maps["kind"].dropna()) == {"channel", "spatial", "self", "cross"}
    assert len(table) == len(maps.dropna(subset=["kind"]))            # one row per map either way
    assert {"kind", "provenance", "peak", "source", "output"} <= set(table.columns)
    assert list(table["name"]) == list(maps.dropna(subset=["kind"])["name"])
