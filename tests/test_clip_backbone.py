"""CLIP as a backbone: every kind from one pass, native cross maps, per-word, contrast, CLI errors."""
from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from attnviz.backbones.clip_core import clip_cross, contrast  # noqa: E402
from attnviz.pipeline import Analyser  # noqa: E402
from tests.conftest import photo  # noqa: E402
from tests.test_cli import attnviz  # noqa: E402

TINY = "attnviz-tiny-backbone"


@pytest.fixture(scope="module")
def clip_bb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cfg")
    vision = {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    (folder / f"{TINY}.json").write_text(json.dumps({"embed_dim": 64, "vision_cfg": vision, "text_cfg": text}))
    open_clip.add_model_config(folder)
    from attnviz.backbones import load_backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone(f"clip:{TINY}", "none", seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                      # spread the random model so the maps vary
        bb.bundle.model.visual.proj.copy_(torch.randn(bb.bundle.model.visual.proj.shape, generator=g) / 4)
    return bb


def test_every_kind_from_one_image_pass(clip_bb):
    an = Analyser(clip_bb, texts=["a red car", "a person"], per_word=True, contrast=True)
    calls = []
    h = clip_bb.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        (preds, maps), = an.analyse_batch([photo(80, 60, 1)])
    finally:
        h.remove()
    assert len(calls) == 1                    # image tower once, whatever the prompts and options
    by = {m.name: m for m in maps}
    assert {"channel", "spatial", "self", "self-rollout", "cross-a-red-car", "cross-a-person",
            "cross-a-red-car-contrast", "cross-a-red-car-word-red", "cross-a-red-car-word-car",
            "cross-a-person-word-person"} <= set(by)
    assert by["self"].provenance == by["cross-a-red-car"].provenance == "native"
    assert by["spatial"].provenance == "derived" and by["spatial"].shape == (4, 4)
    # the maps are clip_core's, on the same preprocessed image
    ref = clip_cross(clip_bb.bundle, an.preprocess([photo(80, 60, 1)]), ["a red car", "a person"])
    np.testing.assert_allclose(by["cross-a-red-car"].data, ref.attn[0, 0], atol=1e-6)
    np.testing.assert_allclose(by["cross-a-person"].extras["similarity"], ref.sims[0, 1], atol=1e-6)
    np.testing.assert_allclose(by["cross-a-red-car-contrast"].data, contrast(ref.sims)[0, 0], atol=1e-6)
    np.testing.assert_allclose(by["cross-a-red-car-contrast"].data + by["cross-a-person-contrast"].data, 0, atol=1e-6)
    word = clip_cross(clip_bb.bundle, an.preprocess([photo(80, 60, 1)]), ["a photo of a car."])
    np.testing.assert_allclose(by["cross-a-red-car-word-car"].data, word.attn[0, 0], atol=1e-6)
    # predictions rank the prompts by CLIP's own logits
    probs = torch.softmax(torch.from_numpy(ref.scores[0]) * ref.logit_scale, 0)
    assert [p.label for p in preds] == ["a red car", "a person"][:: 1 if probs[0] >= probs[1] else -1]
    assert by["cross-a-red-car"].meta["clip_score"] == pytest.approx(float(ref.scores[0, 0]), abs=1e-6)


def test_cross_needs_prompts_and_contrast_needs_two(clip_bb):
    from attnviz.errors import AttnvizError
    an = Analyser(clip_bb, ["spatial"])
    assert [k.name for k in an.kinds] == ["spatial"]
    skipped = Analyser(clip_bb)
    assert any("--text" in n for n in skipped.notes)
    with pytest.raises(AttnvizError, match="--text"):
        Analyser(clip_bb, ["cross"])
    with pytest.raises(AttnvizError, match="at least two prompts"):
        Analyser(clip_bb, texts=["a dog"], contrast=True)
    with pytest.raises(AttnvizError):
        Analyser(clip_bb, texts=["   "])


def test_unusual_prompts_give_finite_maps(clip_bb):
    prompts = ["🐱🚗", "猫の写真", " ".join(["word"] * 500)]
    an = Analyser(clip_bb, ["cross"], texts=prompts)
    (_, maps), = an.analyse_batch([photo(64, 64, 2)])
    assert len(maps) == 3 and all(np.isfinite(m.data).all() for m in maps)
    assert maps[2].meta["truncated"] is True and any("77" in n for n in clip_bb.notes)
    assert maps[0].name == "cross-prompt-1" and maps[1].name == "cross-prompt-2"


def test_missing_clip_weights_exit_2_with_one_line(tmp_path):
    photo(32, 32).save(tmp_path / "x.png")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    import subprocess
    from tests.test_cli import ATTNVIZ
    t0 = time.time()
    proc = subprocess.run([ATTNVIZ, "run", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"),
                           "--backbone", "clip:ViT-B-16", "--text", "a cat"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert time.time() - t0 < 60
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not in the local cache" in lines[0] and str(tmp_path / "hf") in lines[0]
    assert "Traceback" not in proc.stderr


def test_clip_run_through_the_cli(tmp_path):
    photo(60, 40).save(tmp_path / "x.png")
    (tmp_path / "prompts.txt").write_text("# prompts\na red car\n\na dog  # trailing comment\n")
    proc = attnviz("run", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--backbone",
                   "clip:ViT-B-32", "--weights", "none", "--text-file", str(tmp_path / "prompts.txt"),
                   "--kinds", "cross,self", "--size", "64", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    maps = {m["name"]: m for m in man["images"][0]["maps"]}
    assert maps["cross-a-red-car"]["provenance"] == "native" and maps["cross-a-dog"]["shape"] == [7, 7]
    assert set(man["summary"]["rankings"]) == {"a red car", "a dog"}
    assert man["backbone"]["pretrained"] is False
    assert (tmp_path / "out" / "x" / "cross-a-dog.png").exists()


def test_images_are_resampled_as_open_clip_preprocesses_them(clip_bb):
    # open_clip's own eval transform (Resize shortest side, bicubic; centre crop) equals the squash
    # attnviz does on a square photo, so the tensors must agree to the float
    _, _, pre = open_clip.create_model_and_transforms(TINY)
    assert clip_bb.interpolation == clip_bb.bundle.model.visual.preprocess_cfg["interpolation"] == "bicubic"
    im = photo(150, 150, seed=3)
    ours = Analyser(clip_bb).preprocess([im])[0]
    theirs = pre(im)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-6)
