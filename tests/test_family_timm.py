"""`timm:NAME`: preprocessing, tokens and classes from timm; weights offline, from a stub hub, or a file."""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

timm = pytest.importorskip("timm")

from attnviz.backbones import families, load_backbone  # noqa: E402
from attnviz.errors import AttnvizError  # noqa: E402
from attnviz.pipeline import Analyser  # noqa: E402
from tests.conftest import calibrate_bn, photo  # noqa: E402
from tests.hubstub import empty_caches, no_network, stub_hub  # noqa: E402,F401

ROOT = Path(__file__).resolve().parent.parent
TINY_REG4 = dict(img_size=56, embed_dim=64, depth=2, num_heads=2)   # vit_small_patch14_reg4_dinov2, small


def load(name: str, weights: str = "none", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(name, weights, seed=0, **kw)


@pytest.fixture
def tiny_timm(monkeypatch):
    """timm.create_model builds a small variant (same class, fewer/narrower blocks) of the named model."""
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", functools.partial(real, **TINY_REG4))
    return real


# (name, prefix tokens, grid) — the token layouts the architectures define (DeiT distilled: class +
# distillation token; reg4: class + 4 registers)
CASES = [("vit_small_patch16_224", 1, (14, 14)), ("deit_tiny_distilled_patch16_224", 2, (14, 14)),
         ("seresnet18", None, None), ("efficientnet_b0", None, None)]


@pytest.mark.parametrize("name,prefix,grid", CASES)
def test_preprocessing_tokens_and_classes_come_from_timm(name, prefix, grid):
    bb = load(f"timm:{name}")
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    assert bb.mean == pytest.approx(cfg["mean"]) and bb.std == pytest.approx(cfg["std"])
    assert bb.input_size == cfg["input_size"][-1] and bb.interpolation == cfg["interpolation"]
    assert bb.tokens == (None if prefix is None else (prefix, grid))
    assert len(bb.categories) == 1000 and bb.categories[0] == "tench" and bb.categories[281] == "tabby"
    if prefix is not None:
        assert bb.default_layer == "blocks.11"
        info = bb.layer(bb.default_layer)
        assert info.layout.kind == "NLC" and info.grid == grid and info.shape[0] == prefix + grid[0] * grid[1]
    else:
        assert bb.classifier is not None and bb.classifier is bb.model.get_classifier()
    assert not bb.pretrained and bb.weights == "none"
    if name == "vit_small_patch16_224":
        assert bb.mean == (0.5, 0.5, 0.5)                   # augreg ViTs: 0.5/0.5, not ImageNet's


def test_register_tokens_are_read_from_the_model(tiny_timm):
    bb = load("timm:vit_small_patch14_reg4_dinov2")
    assert bb.tokens == (5, (4, 4))                      # class + 4 registers; 56 px / 14
    assert bb.input_size == 56                           # the model's own size, not the cfg's 518
    assert bb.mean == pytest.approx(timm.data.IMAGENET_DEFAULT_MEAN)
    assert bb.categories[:2] == ["feature 0", "feature 1"] and bb.notes   # no head: said so
    x = torch.zeros(1, 3, 56, 56)
    assert bb.model.forward_features(x).shape[1] == 5 + 16


@pytest.mark.parametrize("name,size", [("efficientnet_b0", 96), ("deit_tiny_distilled_patch16_224", None)])
def test_predictions_equal_the_models_own_on_its_normalisation(name, size):
    bb = load(f"timm:{name}", input_size=size)
    calibrate_bn(bb.model, torch.rand(8, 3, bb.input_size, bb.input_size, generator=torch.Generator().manual_seed(1)))
    cfg = bb.model.pretrained_cfg
    img = photo(120, 90, 3)
    s = size or cfg["input_size"][-1]
    resample = Image.Resampling[cfg["interpolation"].upper()]            # the weights' own resizing
    x = torch.from_numpy(np.asarray(img.resize((s, s), resample), dtype=np.float32) / 255)
    x = (x.permute(2, 0, 1)[None] - torch.tensor(cfg["mean"])[:, None, None]) / torch.tensor(cfg["std"])[:, None, None]
    with torch.no_grad():
        probs = torch.softmax(bb.model(x), dim=1)[0]          # (1000,)
    preds, _ = Analyser(bb, ["channel"]).analyse_batch([img])[0]
    top = probs.topk(len(preds))
    assert [p.index for p in preds] == top.indices.tolist()
    assert [p.probability for p in preds] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert preds[0].label == bb.categories[int(top.indices[0])]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_file_loads_exactly(tmp_path, suffix):
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=7)
    sd = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    bb = load("timm:efficientnet_b0", str(path))
    assert bb.weights == str(path) and bb.pretrained
    assert all(torch.equal(v, sd[k]) for k, v in bb.model.state_dict().items())
    assert bb.categories == [f"class {i}" for i in range(7)]   # a fine-tuned head keeps its class count


def test_bad_weights_and_names_are_one_line(tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv_stem.weight": torch.zeros(3)}, wrong)
    with pytest.raises(AttnvizError, match="does not fit timm efficientnet_b0") as e:
        load("timm:efficientnet_b0", str(wrong))
    assert "\n" not in str(e.value)
    with pytest.raises(AttnvizError, match="did you mean.*vit_small_patch16_224"):
        load("timm:vit_smal_patch16_224")
    with pytest.raises(AttnvizError, match="augreg_in21k") as e:   # the valid tags are listed
        load("timm:vit_small_patch16_224", "nonsense")
    with pytest.raises(AttnvizError, match="has no pretrained weights"):
        load("timm:seresnet18", "DEFAULT")


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(AttnvizError) as e:
        load("timm:resnet18")
    assert str(e.value) == 'timm backbones need the optional extra: pip install -e ".[timm]"'


@pytest.mark.parametrize("switch", [None, "HF_HUB_OFFLINE", "ATTNVIZ_OFFLINE"])
def test_offline_missing_weights_fail_fast_in_one_line(empty_caches, no_network, monkeypatch, switch):
    if switch:
        monkeypatch.setenv(switch, "1")
    t0 = time.monotonic()
    with pytest.raises(AttnvizError) as e:
        load("timm:efficientnet_b0.ra_in1k", "DEFAULT")
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    folder = empty_caches / "hf" / "hub" / "models--timm--efficientnet_b0.ra_in1k"
    assert "\n" not in msg and str(folder) in msg and "--weights FILE" in msg and "--weights none" in msg
    assert ("offline mode is on" if switch else "network is not reachable") in msg
    assert bool(no_network) == (switch is None)         # declared offline: not even a probe


def test_weights_download_through_the_hub_then_come_from_the_cache(empty_caches, stub_hub, tmp_path, monkeypatch):
    model = timm.create_model("efficientnet_b0", pretrained=False)
    sd = {k: v - 0.02 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "served.safetensors"))
    stub_hub.files[("timm/efficientnet_b0.ra_in1k", "model.safetensors")] = tmp_path / "served.safetensors"
    bb = load("timm:efficientnet_b0", "DEFAULT")
    assert stub_hub.calls == [("timm/efficientnet_b0.ra_in1k", "model.safetensors")]
    assert all(torch.equal(v, sd[k]) for k, v in bb.model.state_dict().items())
    assert bb.pretrained and "efficientnet_b0.ra_in1k" in bb.weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                    # now cached: offline works, no call
    again = load("timm:efficientnet_b0", "ra_in1k")
    assert len(stub_hub.calls) == 1
    assert all(torch.equal(v, sd[k]) for k, v in again.model.state_dict().items())


def test_the_family_is_registered_and_lists_timms_models():
    fam = next(f for f in families() if f.prefix == "timm")
    assert fam.syntax.startswith("timm:") and "timm:vit_small_patch16_224" in fam.names()


def test_cli_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "attnviz.cli", "run", str(ROOT / "sample_images" / "cat.jpg"),
                           "-o", str(out), "--backbone", "timm:vit_small_patch16_224", "--weights", "none",
                           "--kinds", "self,spatial", "--size", "96", "-q"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    bb = manifest["backbone"]
    assert bb["name"] == "timm:vit_small_patch16_224" and bb["mean"] == [0.5] * 3 and bb["std"] == [0.5] * 3
    assert bb["layer"] == "blocks.11" and (out / "cat" / "self.png").exists()

