"""`hf:ID_OR_DIR`: tiny transformers classifiers saved with save_pretrained, loaded offline by attnviz."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnviz.backbones import families, load_backbone  # noqa: E402
from attnviz.errors import AttnvizError  # noqa: E402
from tests.hubstub import empty_caches, no_network, put_in_cache, stub_hub  # noqa: E402,F401

ROOT = Path(__file__).resolve().parent.parent
LABELS = {0: "cat", 1: "dog", 2: "red car"}
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def _models() -> dict:
    """name -> (config, image processor, expected tokens): tiny, 32 px, patch 8 (a 4×4 grid)."""
    t = transformers
    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               image_size=32, patch_size=8)
    labels = dict(id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    square = {"height": 32, "width": 32}
    return {
        "vit": (t.ViTConfig(**vit, **labels), t.ViTImageProcessor(size=square), (1, (4, 4))),
        "deit": (t.DeiTConfig(**vit, **labels, architectures=["DeiTForImageClassificationWithTeacher"]),
                 t.DeiTImageProcessor(size=square, crop_size=square, **IMAGENET), (2, (4, 4))),
        "dinov2-reg": (t.Dinov2WithRegistersConfig(**vit, num_register_tokens=4, **labels),
                       t.BitImageProcessor(size={"shortest_edge": 40}, crop_size=square, **IMAGENET), (5, (4, 4))),
        "swin": (t.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                              window_size=4, **labels), t.ViTImageProcessor(size=square, **IMAGENET), None),
        "convnext": (t.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, **labels),
                     t.ConvNextImageProcessor(size={"shortest_edge": 32}, **IMAGENET), None),
    }


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Spread norms and biases so outputs differ between inputs and weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, tuple | None]]:
    """Every tiny model written by save_pretrained (config + safetensors + processor config)."""
    out = {}
    for name, (config, processor, tokens) in _models().items():
        folder = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        model = transformers.AutoModelForImageClassification.from_config(config)
        perturb(model)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        out[name] = folder, tokens
    return out


def load(name: str, weights: str = "DEFAULT", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(name, weights, **kw)


@pytest.mark.parametrize("name", list(_models()))
def test_saved_folder_loads_with_its_own_preprocessing_classes_and_tokens(saved, name, no_network):
    folder, tokens = saved[name]
    bb = load(f"hf:{folder}")
    proc = json.loads((folder / "preprocessor_config.json").read_text())
    assert bb.mean == pytest.approx(proc["image_mean"]) and bb.std == pytest.approx(proc["image_std"])
    assert bb.input_size == 32 and bb.categories == ["cat", "dog", "red car"]
    assert bb.tokens == tokens and bb.pretrained and bb.weights == str(folder)
    if tokens is not None:                              # the default layer is the last encoder layer
        info = bb.layer(bb.default_layer)
        assert info.layout.kind == "NLC" and info.shape[0] == tokens[0] + 16 and bb.default_layer.endswith(".1")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    own = transformers.AutoModelForImageClassification.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        logits, _ = bb.forward(x)
        assert torch.allclose(logits, own(pixel_values=x).logits, atol=1e-6)
    assert logits.shape == (2, 3) and not torch.allclose(logits[0], logits[1])
    assert not no_network                               # a local folder never touches the network


def test_vit_uses_its_processors_half_half_not_imagenet(saved):
    assert load(f"hf:{saved['vit'][0]}").mean == (0.5, 0.5, 0.5)


def test_swin_and_convnext_layers(saved):
    swin = load(f"hf:{saved['swin'][0]}")
    info = swin.layer(swin.default_layer)
    assert info.layout.kind == "NLC" and info.grid == (4, 4)      # 32 px / patch 4 / 2 (one merge)
    conv = load(f"hf:{saved['convnext'][0]}")
    assert conv.classifier is conv.model.classifier and conv.layer(conv.classifier_layer).grid == (4, 4)


def test_weights_none_and_file(saved, tmp_path):
    folder, _ = saved["vit"]
    with pytest.warns(UserWarning, match="random weights"):
        rand = load_backbone(f"hf:{folder}", "none", seed=0)
    assert not rand.pretrained and rand.categories == ["cat", "dog", "red car"]
    trained = load(f"hf:{folder}")
    assert not all(torch.equal(a, b) for a, b in zip(rand.model.parameters(), trained.model.parameters()))
    from_file = load(f"hf:{folder}", str(folder / "model.safetensors"))
    assert from_file.weights == str(folder / "model.safetensors")
    assert all(torch.equal(v, trained.model.state_dict()[k]) for k, v in from_file.model.state_dict().items())
    bad = tmp_path / "bad.pt"
    torch.save({"vit.nothing": torch.zeros(2)}, bad)
    with pytest.raises(AttnvizError, match="does not fit") as e:
        load(f"hf:{folder}", str(bad))
    assert "\n" not in str(e.value)


def test_folder_without_processor_config_says_what_it_assumed(saved, tmp_path):
    folder = tmp_path / "noproc"
    shutil.copytree(saved["convnext"][0], folder)
    (folder / "preprocessor_config.json").unlink()
    bb = load(f"hf:{folder}")
    assert bb.mean == (0.485, 0.456, 0.406) and any("ImageNet mean/std assumed" in n for n in bb.notes)


@pytest.mark.parametrize("switch", [None, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_uncached_hub_id_offline_is_one_line_fast(empty_caches, no_network, monkeypatch, switch):
    if switch:
        monkeypatch.setenv(switch, "1")
    t0 = time.monotonic()
    with pytest.raises(AttnvizError) as e:
        load("hf:attnviz/tiny-vit")
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "\n" not in msg and str(empty_caches / "hf" / "hub" / "models--attnviz--tiny-vit") in msg
    assert "--weights FILE" in msg


def _hub_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cached_hub_id_loads_offline(saved, empty_caches, no_network, monkeypatch):
    folder, _ = saved["vit"]
    for name in _hub_files(folder):
        put_in_cache(empty_caches / "hf" / "hub", "attnviz/tiny-vit", name, folder / name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = load("hf:attnviz/tiny-vit")
    assert bb.mean == (0.5, 0.5, 0.5) and bb.categories[2] == "red car" and bb.tokens == (1, (4, 4))
    own = load(f"hf:{folder}")
    assert all(torch.equal(v, own.model.state_dict()[k]) for k, v in bb.model.state_dict().items())


def test_hub_id_downloads_through_the_hub_when_online(saved, empty_caches, stub_hub):
    folder, _ = saved["deit"]
    for name in _hub_files(folder):
        stub_hub.files[("attnviz/tiny-deit", name)] = folder / name
    bb = load("hf:attnviz/tiny-deit")
    asked = {f for _, f in stub_hub.calls}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= asked
    assert bb.tokens == (2, (4, 4)) and bb.weights == "attnviz/tiny-deit (hub)"


def test_missing_extra_and_bad_folder_are_one_line(monkeypatch, tmp_path):
    with pytest.raises(AttnvizError, match="no such folder"):
        load(f"hf:{tmp_path / 'nope'}")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(AttnvizError) as e:
        load("hf:org/model")
    assert str(e.value) == 'Hugging Face backbones need the optional extra: pip install -e ".[hf]"'


def test_the_family_is_registered():
    fam = next(f for f in families() if f.prefix == "hf")
    assert fam.syntax.startswith("hf:") and fam.names is None


def test_cli_run_end_to_end(saved, tmp_path):
    folder, _ = saved["vit"]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "attnviz.cli", "run", str(ROOT / "sample_images" / "cat.jpg"),
                           "-o", str(out), "--backbone", f"hf:{folder}", "--size", "96", "-q"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backbone"]["name"] == f"hf:{folder}" and manifest["backbone"]["mean"] == [0.5] * 3
    preds = manifest["results"][0]["predictions"] if "results" in manifest else None
    assert preds is None or preds[0]["label"] in ("cat", "dog", "red car")
