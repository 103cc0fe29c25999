"""Tests for attnviz.backbones.clip_core: offline loading and spec §5 cross maps on a tiny random open_clip model."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from attnviz.backbones.clip_core import (  # noqa: E402
    EXTRA_HINT, RANDOM, ClipBundle, clip_cross, contrast, default_pretrained, encode_patches,
    load_clip, per_word, prompt_words,
)
from attnviz.errors import AttnvizError  # noqa: E402
from tests.hubstub import no_network, stub_hub  # noqa: E402,F401

TINY = "attnviz-tiny-test"
TINY_LS = "attnviz-tiny-ls-test"       # same, with layer-scale modules (ls_1/ls_2) in every block
VISION = {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}
TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module", autouse=True)
def tiny_configs(tmp_path_factory):
    """Register the tiny model configs with open_clip (no weights anywhere)."""
    folder = tmp_path_factory.mktemp("clip_configs")
    (folder / f"{TINY}.json").write_text(json.dumps({"embed_dim": 64, "vision_cfg": VISION, "text_cfg": TEXT}))
    ls = {"embed_dim": 64, "vision_cfg": {**VISION, "ls_init_value": 0.5}, "text_cfg": TEXT}
    (folder / f"{TINY_LS}.json").write_text(json.dumps(ls))
    open_clip.add_model_config(folder)


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Give norms, biases, layer scales and the projection random values so the maps vary."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.visual.named_parameters():
            if name.endswith("gamma") or (".ln_" in name or name.startswith("ln_")) and name.endswith("weight"):
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        model.visual.proj.copy_(torch.randn(model.visual.proj.shape, generator=g) / 4)


@pytest.fixture(scope="module", params=[TINY, TINY_LS])
def bundle(request) -> ClipBundle:
    b = load_clip(request.param)
    perturb(b.model)
    return b


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- reference


def ln(x: torch.Tensor, m: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


def gamma(ls: torch.nn.Module) -> torch.Tensor | float:
    return ls.gamma if hasattr(ls, "gamma") else 1.0


def mlp(blk, x: torch.Tensor) -> torch.Tensor:
    assert isinstance(blk.mlp.gelu, torch.nn.GELU)
    return F.linear(F.gelu(F.linear(x, blk.mlp.c_fc.weight, blk.mlp.c_fc.bias)),
                    blk.mlp.c_proj.weight, blk.mlp.c_proj.bias)


def ref_block(blk, x: torch.Tensor) -> torch.Tensor:
    """One residual attention block written out by hand; x (B, L, D)."""
    B, L, D = x.shape
    H = blk.attn.num_heads
    q, k, v = F.linear(ln(x, blk.ln_1), blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, -1)
    q, k, v = (t.reshape(B, L, H, D // H).transpose(1, 2) for t in (q, k, v))    # (B, H, L, hd)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), dim=-1)
    o = (a @ v).transpose(1, 2).reshape(B, L, D)
    x = x + gamma(blk.ls_1) * F.linear(o, blk.attn.out_proj.weight, blk.attn.out_proj.bias)
    return x + gamma(blk.ls_2) * mlp(blk, ln(x, blk.ln_2))


def ref_last_input(model, images: torch.Tensor) -> torch.Tensor:
    """The tokens entering the last block, (B, 1+N, D), from conv1 up."""
    vis = model.visual
    x = vis.conv1(images).flatten(2).transpose(1, 2)                            # (B, N, D) row-major
    cls = vis.class_embedding.reshape(1, 1, -1).expand(x.shape[0], 1, -1)
    x = ln(torch.cat([cls, x], 1) + vis.positional_embedding, vis.ln_pre)
    for blk in vis.transformer.resblocks[:-1]:
        x = ref_block(blk, x)
    return x


def ref_patches(model, images: torch.Tensor, variant: str) -> torch.Tensor:
    """t̂_i by the spec's formulas, (B, N, E)."""
    vis = model.visual
    x = ref_last_input(model, images)
    blk = vis.transformer.resblocks[-1]
    if variant == "plain":
        v = ref_block(blk, x)
    else:
        D = x.shape[-1]
        w_v, b_v = blk.attn.in_proj_weight[2 * D:], blk.attn.in_proj_bias[2 * D:]
        v = x + gamma(blk.ls_1) * F.linear(F.linear(ln(x, blk.ln_1), w_v, b_v),
                                           blk.attn.out_proj.weight, blk.attn.out_proj.bias)
        v = v + gamma(blk.ls_2) * mlp(blk, ln(v, blk.ln_2))
    return F.normalize(ln(v[:, 1:], vis.ln_post) @ vis.proj, dim=-1)


def text_emb(b: ClipBundle, prompts: list[str]) -> torch.Tensor:
    return F.normalize(b.model.encode_text(b.tokenizer(prompts)), dim=-1)


def no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ----------------------------------------------------------------------------- maps

PROMPTS = ["a photo of a cat", "a red car on the road", "🐱"]


@pytest.mark.parametrize("variant", ["value", "plain"])
@torch.no_grad()
def test_maps_match_independent_computation(bundle, images, variant):
    out = clip_cross(bundle, images, PROMPTS, variant)
    h, w = bundle.grid
    assert (h, w) == (4, 4) == out.grid and out.variant == variant
    q = text_emb(bundle, PROMPTS)                                                # (P, E)
    sims = torch.einsum("bne,pe->bpn", ref_patches(bundle.model, images, variant), q)
    attn = torch.softmax(bundle.model.logit_scale.exp() * sims, dim=-1)
    assert out.sims.shape == out.attn.shape == (2, 3, h, w) and out.sims.dtype == np.float32
    np.testing.assert_allclose(out.sims, sims.reshape(2, 3, h, w).numpy(), atol=1e-5)
    np.testing.assert_allclose(out.attn, attn.reshape(2, 3, h, w).numpy(), atol=1e-5)
    np.testing.assert_allclose(out.attn.sum(axis=(2, 3)), 1.0, atol=1e-5)
    assert out.sims.std() > 0.05 and out.attn.max() > 2 / (h * w)               # not degenerate
    scores = F.normalize(bundle.model.encode_image(images), dim=-1) @ q.T
    np.testing.assert_allclose(out.scores, scores.numpy(), atol=1e-5)
    assert out.logit_scale == pytest.approx(float(bundle.model.logit_scale.exp()))


@torch.no_grad()
def test_reference_forward_is_the_models_own(bundle, images):
    vis = bundle.model.visual
    pooled = ln(ref_block(vis.transformer.resblocks[-1], ref_last_input(bundle.model, images))[:, 0],
                vis.ln_post) @ vis.proj
    torch.testing.assert_close(pooled, bundle.model.encode_image(images), atol=1e-5, rtol=1e-5)


def test_variants_differ(bundle, images):
    a = clip_cross(bundle, images, ["cat"], "value").sims
    b = clip_cross(bundle, images, ["cat"], "plain").sims
    assert not np.allclose(a, b, atol=1e-3)


def test_tower_runs_once_and_hooks_are_removed(bundle, images):
    calls = []
    h = bundle.model.visual.conv1.register_forward_hook(lambda *a: calls.append(1))
    try:
        clip_cross(bundle, images, PROMPTS)
    finally:
        h.remove()
    assert len(calls) == 1
    assert no_hooks(bundle.model)
    with torch.no_grad():
        before = bundle.model.encode_image(images)
        clip_cross(bundle, images, PROMPTS, "plain")
        torch.testing.assert_close(bundle.model.encode_image(images), before, atol=0, rtol=0)


def test_hooks_removed_after_error(bundle, images, monkeypatch):
    def boom(x):
        raise RuntimeError("boom")
    monkeypatch.setattr(bundle.model.visual.ln_post, "forward", boom)
    with pytest.raises(RuntimeError, match="boom"):
        clip_cross(bundle, images, ["cat"])
    assert no_hooks(bundle.model)


def test_sequence_first_layout(images):
    b = load_clip(TINY)
    perturb(b.model, seed=3)
    with torch.no_grad():
        want = b.model.encode_image(images)
        b.model.visual.transformer.batch_first = False                          # (L, B, D) inside
        for blk in b.model.visual.transformer.resblocks:
            blk.attn.batch_first = False
        torch.testing.assert_close(b.model.encode_image(images), want, atol=1e-5, rtol=1e-5)
        for variant in ("value", "plain"):
            ref = torch.einsum("bne,pe->bpn", ref_patches(b.model, images, variant), text_emb(b, ["cat"]))
            np.testing.assert_allclose(clip_cross(b, images, ["cat"], variant).sims,
                                       ref.reshape(2, 1, 4, 4).numpy(), atol=1e-5)


def test_precomputed_tokens_give_same_maps(bundle, images):
    tokens = encode_patches(bundle, images, "plain")
    a = clip_cross(bundle, tokens, PROMPTS)
    b = clip_cross(bundle, images, PROMPTS, "plain")
    assert a.variant == "plain"
    np.testing.assert_allclose(a.sims, b.sims, atol=1e-6)


def test_bad_images_and_variant(bundle, images):
    with pytest.raises(AttnvizError, match=r"\(B, 3, 64, 64\)"):
        clip_cross(bundle, torch.zeros(1, 3, 32, 32), ["cat"])
    with pytest.raises(AttnvizError, match="variant"):
        clip_cross(bundle, images, ["cat"], "keys")


# ----------------------------------------------------------------------------- prompts


def test_prompt_words(bundle):
    assert prompt_words(bundle, "A photo of the tabby cat's tail, on a mat!") == ["tabby", "cat", "tail", "mat"]
    assert prompt_words(bundle, "cat cat CAT") == ["cat"]
    assert prompt_words(bundle, "a 🐱 in 2 boxes") == ["🐱", "boxes"]
    assert prompt_words(bundle, "猫の写真") == ["猫の写真"]
    assert prompt_words(bundle, "a picture of an image") == []


def test_per_word_equals_cross_of_templated_word(bundle, images):
    out = per_word(bundle, images, "A tabby cat on a mat")
    assert out.words == ["tabby", "cat", "mat"]
    assert out.prompts == ["a photo of a tabby.", "a photo of a cat.", "a photo of a mat."]
    single = clip_cross(bundle, images, ["a photo of a cat."])
    np.testing.assert_allclose(out.sims[:, 1], single.sims[:, 0], atol=1e-5)
    np.testing.assert_allclose(out.attn[:, 1], single.attn[:, 0], atol=1e-5)
    custom = per_word(bundle, images, "cat", template="{word}")
    np.testing.assert_allclose(custom.sims, clip_cross(bundle, images, ["cat"]).sims, atol=1e-5)
    with pytest.raises(AttnvizError, match="no content words"):
        per_word(bundle, images, "a photo of the")


def test_contrast(bundle, images):
    sims = clip_cross(bundle, images, PROMPTS).sims                             # (B, 3, h, w)
    c = contrast(sims)
    np.testing.assert_allclose(c.sum(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(c[:, 0], sims[:, 0] - (sims[:, 1] + sims[:, 2]) / 2, atol=1e-6)
    two = contrast(sims[:, :2])
    np.testing.assert_allclose(two[:, 0], sims[:, 0] - sims[:, 1], atol=1e-6)
    with pytest.raises(AttnvizError, match="^--contrast needs at least two prompts$"):
        contrast(sims[:, :1])


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_prompt_is_one_line_error(bundle, images, bad):
    with pytest.raises(AttnvizError) as e:
        clip_cross(bundle, images, ["cat", bad])
    assert "\n" not in str(e.value) and "empty prompt" in str(e.value)
    with pytest.raises(AttnvizError):
        prompt_words(bundle, bad)


def test_no_prompts_is_error(bundle, images):
    with pytest.raises(AttnvizError):
        clip_cross(bundle, images, [])


@pytest.mark.parametrize("prompt", ["🐱🐶", "猫の写真", "a photo of a 🐱", "Ünïcödé café ñ"])
def test_unusual_scripts_give_finite_maps(bundle, images, prompt):
    out = clip_cross(bundle, images, [prompt])
    assert np.isfinite(out.sims).all() and np.isfinite(out.attn).all() and np.isfinite(out.scores).all()
    np.testing.assert_allclose(out.attn.sum(axis=(2, 3)), 1.0, atol=1e-5)
    assert out.truncated == [False] and out.warnings == []


def test_long_prompt_is_truncated_and_reported(bundle, images):
    long = " ".join(["tabby"] * 500)
    out = clip_cross(bundle, images, ["cat", long])
    assert out.truncated == [False, True]
    assert len(out.warnings) == 1 and "prompt 2" in out.warnings[0] and "77" in out.warnings[0]
    assert np.isfinite(out.sims).all() and np.isfinite(out.attn).all()


# ----------------------------------------------------------------------------- loading


def test_load_random_init_bundle():
    b = load_clip(TINY)
    assert b.random_init and b.pretrained is None and b.arch == TINY
    assert (b.image_size, b.grid, b.context_length) == (64, (4, 4), 77)
    assert b.mean == pytest.approx(OPENAI_MEAN) and b.std == pytest.approx(OPENAI_STD)
    assert not b.model.training
    assert load_clip(TINY, pretrained=RANDOM).random_init


def test_missing_open_clip(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(AttnvizError) as e:
        load_clip("ViT-B-16")
    assert str(e.value) == EXTRA_HINT


def test_unknown_arch_lists_close_names():
    with pytest.raises(AttnvizError, match="ViT-B-16") as e:
        load_clip("vit-b-61")
    assert "\n" not in str(e.value)


def test_unknown_tag_lists_valid_tags():
    with pytest.raises(AttnvizError, match="openai.*laion2b_s34b_b88k"):
        load_clip("ViT-B-16", pretrained="nonsense")


def test_default_tags():
    assert default_pretrained("ViT-B-16") == "openai"
    assert default_pretrained("ViT-H-14") == "laion2b_s32b_b79k"
    assert default_pretrained("ViT-B-16-SigLIP") == "webli"
    assert default_pretrained(TINY) is None


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point every cache the loader could read to empty temporary folders."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize("arch,tag", [("ViT-B-16", "openai"), ("ViT-B-32", "laion2b_s34b_b79k")])
def test_uncached_weights_fail_fast_with_one_line(empty_caches, arch, tag):
    t0 = time.monotonic()
    with pytest.raises(AttnvizError) as e:
        load_clip(arch, pretrained=tag)
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "\n" not in msg and str(empty_caches / "hf" / "hub") in msg and "--weights FILE" in msg
    with pytest.raises(AttnvizError, match="not in the local cache") as e:
        load_clip(arch, pretrained=tag, cache_dir=str(empty_caches / "mine"))
    assert str(empty_caches / "mine") in str(e.value)


@pytest.fixture
def fake_tags(monkeypatch):
    """Register two pretrained tags for the tiny arch: one on the HF hub, one by URL only."""
    src = {"url": "", "hf_hub": "", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    tags = {"hubtag": {**src, "hf_hub": "attnviz/tiny-test/"},
            "urltag": {**src, "url": "https://example.invalid/weights/tiny-test.pt"}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY, tags)
    trained = load_clip(TINY, pretrained=RANDOM)
    perturb(trained.model, seed=7)
    return trained.model.state_dict()


def same_weights(model, state) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_cached_hub_weights_load_offline(empty_caches, fake_tags):
    hub = empty_caches / "hf" / "hub" / "models--attnviz--tiny-test"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text(rev)
    (hub / "snapshots" / rev).mkdir(parents=True)
    torch.save(fake_tags, hub / "snapshots" / rev / "open_clip_pytorch_model.bin")
    t0 = time.monotonic()
    b = load_clip(TINY)                                       # default tag: the first one
    assert time.monotonic() - t0 < 10
    assert b.pretrained == "hubtag" and not b.random_init and same_weights(b.model, fake_tags)
    assert b.mean == (0.5, 0.5, 0.5) and b.std == (0.25, 0.25, 0.25)


def test_cached_url_weights_load_offline(empty_caches, fake_tags):
    with pytest.raises(AttnvizError, match="not in the local cache") as e:
        load_clip(TINY, pretrained="urltag")
    assert str(empty_caches / "home" / ".cache" / "clip") in str(e.value)
    folder = empty_caches / "home" / ".cache" / "clip"
    folder.mkdir(parents=True)
    torch.save(fake_tags, folder / "tiny-test.pt")
    b = load_clip(TINY, pretrained="urltag")
    assert b.pretrained == "urltag" and same_weights(b.model, fake_tags)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_file(tmp_path, fake_tags, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(fake_tags, path)
    else:
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file({k: v.contiguous() for k, v in fake_tags.items()}, str(path))
    b = load_clip(TINY, weights_file=str(path))
    assert b.pretrained == str(path) and not b.random_init and same_weights(b.model, fake_tags)


def test_bad_weights_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(AttnvizError) as e:
        load_clip(TINY, weights_file=str(bad))
    assert "\n" not in str(e.value) and str(bad) in str(e.value)
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(3)}, wrong)
    with pytest.raises(AttnvizError, match="wrong.pt"):
        load_clip(TINY, weights_file=str(wrong))
    with pytest.raises(AttnvizError, match="not found"):
        load_clip(TINY, weights_file=str(tmp_path / "missing.pt"))


# ----------------------------------------------------------------------------- downloads (stubbed)


def test_no_network_without_offline_switch_fails_fast(empty_caches, no_network, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    t0 = time.monotonic()
    with pytest.raises(AttnvizError, match="network is not reachable") as e:
        load_clip("ViT-B-16", pretrained="openai")
    assert time.monotonic() - t0 < 10 and "\n" not in str(e.value)
    assert str(empty_caches / "hf" / "hub") in str(e.value)


def test_online_hub_weights_download_through_huggingface_hub(empty_caches, fake_tags, stub_hub, tmp_path,
                                                              monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    torch.save(fake_tags, tmp_path / "served.bin")
    stub_hub.files[("attnviz/tiny-test", "open_clip_pytorch_model.bin")] = tmp_path / "served.bin"
    b = load_clip(TINY, pretrained="hubtag")
    # the same order as open_clip: safetensors first, then the pickle file
    assert stub_hub.calls == [("attnviz/tiny-test", "open_clip_model.safetensors"),
                              ("attnviz/tiny-test", "open_clip_pytorch_model.bin")]
    assert same_weights(b.model, fake_tags) and b.pretrained == "hubtag"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                  # cached now: offline load, no new call
    assert same_weights(load_clip(TINY, pretrained="hubtag").model, fake_tags) and len(stub_hub.calls) == 2


def test_online_url_weights_download_into_open_clips_cache(empty_caches, fake_tags, no_network, tmp_path,
                                                           monkeypatch):
    from attnviz.backbones import hub
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "reachable", lambda url=None, timeout=0: True)
    torch.save(fake_tags, tmp_path / "served.pt")
    got = []

    def serve(url, dst, progress=True, **kw):
        got.append((url, progress))
        shutil.copyfile(tmp_path / "served.pt", dst)
    monkeypatch.setattr(torch.hub, "download_url_to_file", serve)
    b = load_clip(TINY, pretrained="urltag")
    assert got == [("https://example.invalid/weights/tiny-test.pt", True)]     # the library's progress bar
    assert (empty_caches / "home" / ".cache" / "clip" / "tiny-test.pt").is_file()
    assert same_weights(b.model, fake_tags)
