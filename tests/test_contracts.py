"""Contract tests over the registries: every kind and every backbone family keeps the same promises.

A new kind or family is covered by registering it; a family also needs an example below (the
test fails until it has one).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from attnviz.backbones import families, load_backbone
from attnviz.kinds import KINDS
from attnviz.pipeline import Analyser
from attnviz.report.outputs import Style, image_entry, write_outputs
from attnviz.results import Result
from tests.conftest import photo

TINY_CLIP = "attnviz-tiny-contract"
ENTRY_KEYS = {"kind", "name", "provenance", "layer", "file", "npz_key", "shape", "min", "max", "mean", "peak",
              "npz_extras"}


def _tiny_clip(tmp_path_factory) -> str:
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("clipcfg")
    vision = {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps({"embed_dim": 64, "vision_cfg": vision, "text_cfg": text}))
    open_clip.add_model_config(folder)
    return f"clip:{TINY_CLIP}"


def _tiny_hf(tmp_path_factory) -> str:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hfvit")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8,
                                    id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
    torch.manual_seed(0)
    transformers.AutoModelForImageClassification.from_config(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return f"hf:{folder}"


# family prefix -> (backbone name, load options, analyser options)
EXAMPLES = {
    "": lambda tf: ("resnet18", {"input_size": 64}, {}),
    "demo": lambda tf: ("demo", {}, {}),
    "demo-vit": lambda tf: ("demo-vit", {}, {}),
    "clip": lambda tf: (_tiny_clip(tf), {}, {"texts": ("a red car",)}),
    "model": lambda tf: ("model:tests.models:cbam_net", {}, {}),
    "timm": lambda tf: (pytest.importorskip("timm") and "timm:test_vit", {}, {}),
    "hf": lambda tf: (_tiny_hf(tf), {}, {}),
}


def _load(name: str, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(name, "none", seed=0, **kw)


@pytest.mark.parametrize("family", [f.prefix for f in families()], ids=lambda p: p or "torchvision")
def test_every_family_loads_describes_and_predicts(family, tmp_path_factory):
    assert family in EXAMPLES, f"family {family!r} has no example in tests/test_contracts.py"
    name, load_kw, options = EXAMPLES[family](tmp_path_factory)
    bb = _load(name, **load_kw)
    assert bb.layers and bb.default_layer in bb.layers
    assert len(bb.mean) == len(bb.std) == 3 and all(s > 0 for s in bb.std)
    assert not any(m.training for m in bb.model.modules())          # eval mode: deterministic maps
    an = Analyser(bb, None, **options)
    images = [photo(70, 50, 1), photo(40, 90, 2)]
    results = an.analyse_batch(images)
    assert an.forwards == 1 and len(results) == 2
    for preds, maps in results:
        assert maps, "every backbone yields maps with the default kinds"
        assert all(p.label == bb.categories[p.index] for p in preds)
        assert all(np.isfinite(m.data).all() and m.data.ndim == 2 for m in maps)
    x = an.preprocess(images)
    logits, _ = bb.forward(x, None)
    assert logits.shape == (2, len(bb.categories))


@pytest.fixture(scope="module")
def demo_analyser():
    return Analyser("demo")


@pytest.fixture(scope="module")
def derived_analyser(resnet18_small):
    return Analyser(resnet18_small, None, texts=("tabby cat",))


@pytest.fixture(scope="module")
def vit_analyser():
    return Analyser("demo-vit", None)


@pytest.fixture(scope="module")
def clip_analyser(tmp_path_factory):
    return Analyser(_load(_tiny_clip(tmp_path_factory)), None, texts=("a red car",))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("where", ["demo", "derived", "demo-vit", "clip"])
def test_every_kind_computes_records_and_writes(kind, where, request, tmp_path):
    opt_in = not KINDS[kind].default
    if where in ("demo-vit", "clip") and not opt_in:
        pytest.skip("the raw kinds are covered on demo and derived")
    base = request.getfixturevalue({"demo": "demo_analyser", "derived": "derived_analyser",
                                    "demo-vit": "vit_analyser", "clip": "clip_analyser"}[where])
    reason = KINDS[kind].unavailable(base.backbone, base.options)
    if reason:
        assert opt_in, reason                 # every raw kind runs on every backbone
        pytest.skip(reason)
    an = Analyser(base.backbone, [kind], base.config)
    image = photo(96, 64, 3)
    (preds, maps), = an.analyse_batch([image])
    assert maps and {m.kind for m in maps} == {kind}
    assert len({m.name for m in maps}) == len(maps)                  # names are unique: file stems
    for m in maps:
        assert m.provenance in ("native", "derived")
        assert m.data.dtype == np.float32 and m.data.ndim == 2 and np.isfinite(m.data).all()
    if where == "demo" and kind not in ("mixed-parallel", "gradcam"):
        assert all(m.provenance == "native" for m in maps)            # the demo model has every module
    r = Result("p.png", tmp_path / "p.png", "p", size=image.size, predictions=preds, maps=maps)
    entry = json.loads(json.dumps(image_entry(r), allow_nan=False))  # strict JSON
    write_outputs(tmp_path, r, image, Style(size=64))
    arrays = np.load(tmp_path / "p" / "maps.npz")
    for record, m in zip(entry["maps"], maps):
        assert ENTRY_KEYS <= set(record) and record["kind"] == kind
        assert (tmp_path / "p" / record["file"]).is_file()
        np.testing.assert_array_equal(arrays[record["npz_key"]], m.data)
        assert all(key in arrays for key in record["npz_extras"])
        x, y = record["peak"]
        assert 0 <= x <= image.width and 0 <= y <= image.height
