"""`attnviz explain`: every strip ends on the Analyser's own map, and native stages are the module's own tensors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attnviz
from attnviz.errors import AttnvizError
from attnviz.explain import explain, write_explained
from attnviz.explain.capture import StageTap
from attnviz.explain.panels import summary
from attnviz.pipeline import Analyser
from attnviz.zoo.model import tokenize

ROOT = Path(__file__).resolve().parents[1]
CAT = ROOT / "sample_images" / "cat.jpg"
COFFEE = ROOT / "sample_images" / "coffee.jpg"


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _panel(strip, step: str, row: int = 0):
    return next(p for p in strip.rows[row] if p is not None and p.step == step)


@pytest.fixture(scope="module")
def demo():
    """The committed demo model, every kind explained on a real photo, and the Analyser's own maps."""
    from attnviz.backbones import load_backbone
    bb = load_backbone("demo", "DEFAULT")
    image = Image.open(CAT).convert("RGB")
    ex = explain(image, "all", backbone=bb)
    [ref] = attnviz.analyse([image], backbone=bb)
    return bb, image, ex, ref


def test_every_final_panel_is_the_analysers_map_on_the_demo(demo):
    bb, _, ex, ref = demo
    assert [s.kind for s in ex.strips] == ["channel", "spatial", "mixed", "self", "cross"]
    names = set()
    for s in ex.strips:
        for name, panel in s.finals.items():
            np.testing.assert_allclose(panel.data, ref.map(name).data, rtol=1e-5, atol=1e-6)
            assert panel.provenance == ref.map(name).provenance
            names.add(name)
    assert {"channel", "spatial", "mixed-serial", "mixed-parallel", "self"} <= names
    assert any(n.startswith("cross-") for n in names)
    for kind in ("channel", "spatial", "self", "cross"):   # the demo has every module: all native
        assert {p.provenance for p in ex.strip(kind).panels()} == {"native"}, kind
    assert {p.provenance for p in ex.strip("mixed").rows[0]} == {"native"}
    assert _no_hooks(bb.model)


@torch.no_grad()
def test_channel_and_spatial_stages_are_the_modules_own_tensors(demo):
    bb, image, ex, _ = demo
    m = bb.model
    x = Analyser(bb, ["channel"]).preprocess([image])
    f = m.stem(x)                                                    # the SE block's input
    z = f.mean(dim=(2, 3))                                           # global average pool
    hidden = m.cbam.se.activation(m.cbam.se.fc1(z[:, :, None, None])).flatten(1)
    s = torch.sigmoid(m.cbam.se.fc2(hidden[:, :, None, None])).flatten(1)
    ch = ex.strip("channel")
    np.testing.assert_allclose(_panel(ch, "squeeze").data, z[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_panel(ch, "excitation: hidden layer").data, hidden[0].numpy(), rtol=1e-5, atol=1e-6)
    gate = _panel(ch, "gate")
    np.testing.assert_allclose(gate.data, s[0].numpy(), rtol=1e-5, atol=1e-6)
    assert gate.raised[0] == int(s[0].argmax()) and gate.cut[0] == int(s[0].argmin())
    assert gate.data.std() > 0.01                                    # the gates of the trained model vary
    scaled = _panel(ch, "scaled features")
    chans = [int(label[1:].split()[0]) for label in scaled.labels]
    np.testing.assert_allclose(scaled.data, (f * s[:, :, None, None])[0, chans].numpy(), rtol=1e-5, atol=1e-6)

    y = m.cbam.se(f)                                                 # the spatial gate's input: s ⊙ F
    sp = ex.strip("spatial")
    np.testing.assert_allclose(_panel(sp, "channel mean").data, y[0].mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_panel(sp, "channel max").data, y[0].amax(0).numpy(), rtol=1e-5, atol=1e-6)
    conv = m.cbam.spatial.conv(torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1))
    np.testing.assert_allclose(_panel(sp, "conv output").data, conv[0, 0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_panel(sp, "sigmoid gate").data, torch.sigmoid(conv)[0, 0].numpy(), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_self_and_cross_stages_match_the_attention_modules_weights(demo):
    bb, image, ex, ref = demo
    m = bb.model
    x = Analyser(bb, ["self"]).preprocess([image])
    feats = m.gated_features(x)
    t = m.down(feats).flatten(2).transpose(1, 2)
    t = torch.cat([m.cls_token.expand(1, -1, -1), t], 1) + m.pos_embed
    h = m.encoder.norm1(t)
    _, w = m.encoder.attn(h, h, h, need_weights=True, average_attn_weights=False)   # (1, 4, 145, 145)
    st = ex.strip("self")
    for head in range(4):
        soft = _panel(st, f"head {head}: softmax", head).data
        np.testing.assert_allclose(soft, w[0, head, 0, 1:].reshape(12, 12).numpy(), rtol=1e-4, atol=1e-6)
        scores = torch.from_numpy(_panel(st, f"head {head}: scores", head).data).flatten()
        # the scores of the patch keys, softmaxed with the class token's own score, give the module's row
        assert torch.allclose(torch.softmax(scores, 0), w[0, head, 0, 1:] / w[0, head, 0, 1:].sum(), atol=1e-5)

    cm = next(mp for mp in ref.maps if mp.kind == "cross")
    q = m.encode_text(tokenize([cm.meta["prompt"]]))[None]          # (1, 1, 64)
    keys = m.key_norm(feats.flatten(2).transpose(1, 2))
    _, cw = m.cross(q, keys, keys, need_weights=True, average_attn_weights=False)  # (1, 1, 1, 576)
    cr = ex.strip("cross")
    np.testing.assert_allclose(_panel(cr, "softmax").data, cw[0, 0, 0].reshape(24, 24).numpy(), rtol=1e-4, atol=1e-7)
    sim = torch.from_numpy(_panel(cr, "similarity to every patch").data).flatten()
    assert torch.allclose(torch.softmax(sim, 0), cw[0, 0, 0], atol=1e-6)
    assert _panel(cr, "prompt tokens").labels[0] == f"“{cm.meta['prompt']}”"


def test_query_makes_the_self_strip_end_on_the_query_map():
    from attnviz.backbones import load_backbone
    bb = load_backbone("demo", "DEFAULT")
    image = Image.open(COFFEE).convert("RGB")
    ex = explain(image, "self", backbone=bb, query=(300.0, 250.0))
    [ref] = attnviz.analyse([image], backbone=bb, kinds=["self"], query=(300.0, 250.0))
    final = ex.strip("self").finals["self-query"]
    np.testing.assert_allclose(final.data, ref.map("self-query").data, rtol=1e-5, atol=1e-7)
    query = ex.strip("self").rows[0][0]
    assert query.marks == [tuple(ref.map("self-query").meta["query"])]


def test_resnet18_every_kind_is_derived_and_ends_on_the_analysers_map(resnet18_small):
    bb = resnet18_small
    image = Image.open(COFFEE).convert("RGB")
    ex = explain(image, "all", backbone=bb, texts=("an espresso",))
    [ref] = attnviz.analyse([image], backbone=bb, texts=("an espresso",))
    for s in ex.strips:
        assert {p.provenance for p in s.panels()} == {"derived"}, s.kind
        for name, panel in s.finals.items():
            np.testing.assert_allclose(panel.data, ref.map(name).data, rtol=1e-5, atol=1e-7)
    f = ref.map("channel")
    np.testing.assert_allclose(_panel(ex.strip("channel"), "gate").data, f.weights, rtol=1e-5, atol=1e-7)
    sim = torch.from_numpy(_panel(ex.strip("cross"), "similarity to every patch").data).flatten()
    np.testing.assert_allclose(torch.softmax(sim, 0).numpy(), ref.map("cross-an-espresso").data.ravel(), rtol=1e-5)
    assert _no_hooks(bb.model)


def test_stage_tap_removes_its_hooks_even_on_error(resnet18_small):
    model = resnet18_small.model
    with pytest.raises(RuntimeError):
        with StageTap(model, ["layer1", "layer4"]) as tap:
            model(torch.zeros(1, 3, 64, 64))
            assert tap.output("layer4").shape == (1, 512, 2, 2)
            raise RuntimeError("boom")
    assert _no_hooks(model)


def test_summary_and_kind_errors():
    a = np.array([[0.0, 3.0], [2.0, np.nan]], dtype=np.float32)
    assert summary(a, 2) == {"shape": [2, 2], "min": 0.0, "max": 3.0, "top_indices": [[0, 1], [1, 0]]}
    with pytest.raises(AttnvizError, match="--kind 'chanel'"):
        explain(CAT, "chanel", backbone="demo")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnviz.cli", "explain", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def _invoke(*args: str):
    """The command in this process (no interpreter start-up): exit code and stderr."""
    from typer.testing import CliRunner
    from attnviz.cli import app
    result = CliRunner().invoke(app, ["explain", *args])
    return result.exit_code, result.stderr if hasattr(result, "stderr") else result.output


@pytest.mark.slow
def test_cli_writes_figures_page_and_json(tmp_path):
    out = tmp_path / "ex[1]"
    proc = _cli(str(CAT), "--kind", "spatial,cross", "--backbone", "demo", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cross.png", "explain.html", "explain.json", "spatial.png"]
    with Image.open(out / "spatial.png") as im:
        assert im.width > 1000 and im.height > 200
    rec = json.loads((out / "explain.json").read_text())
    assert [s["kind"] for s in rec["strips"]] == ["spatial", "cross"]
    panels = rec["strips"][0]["rows"][0]["panels"]
    assert panels[-1]["final_of"] == "spatial" and panels[-1]["shape"] == [24, 24]
    assert all({"shape", "min", "max", "top_indices", "formula", "provenance"} <= set(p) for p in panels)
    page = (out / "explain.html").read_text()
    assert 'src="spatial.png"' in page and "http" not in page


def test_svg_and_cli_mistakes_are_one_line_exit_2(tmp_path):
    code, err = _invoke(str(CAT), "--kind", "channel", "--backbone", "demo", "-o", str(tmp_path / "s"), "--format", "svg")
    assert code == 0, err
    assert (tmp_path / "s" / "channel.svg").read_text().lstrip().startswith("<?xml")
    for args, needle in [(["--kind", "nope"], "--kind 'nope'"), (["--format", "gif"], "--format 'gif'"),
                         (["--text", "a purple cat"], "unknown word")]:
        code, err = _invoke(str(CAT), "--backbone", "demo", "-o", str(tmp_path / "o"), *args)
        assert code == 2, (args, err)
        assert needle in err and len(err.strip().splitlines()) == 1, err
    code, err = _invoke(str(ROOT / "sample_images"), "--backbone", "demo", "-o", str(tmp_path / "o"))
    assert code == 2 and "one image file" in err
