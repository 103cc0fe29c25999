"""CLIP map variants (MaskCLIP, ClearCLIP, SCLIP, NACLIP, plain), `--clip-variant all` and `--slide`, on tiny
random open_clip configs with and without layer-scale, against float64 implementations written from the
formulas in the README (the last block's weights read directly)."""
from __future__ import annotations

import copy
import itertools
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

open_clip = pytest.importorskip("open_clip")

from attnviz.backbones.clip_core import clip_cross, encode_prompts, encode_variants  # noqa: E402
from attnviz.backbones.clip_variants import VARIANTS  # noqa: E402
from attnviz.errors import AttnvizError  # noqa: E402
from attnviz.pipeline import Analyser  # noqa: E402
from tests.conftest import photo  # noqa: E402
from tests.test_clip import perturb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = "attnviz-tiny-variants"
TINY_LS = "attnviz-tiny-variants-ls"       # the same with LayerScale (ls_1/ls_2) in every block
VISION = {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16, "head_width": 32}
TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
PROMPTS = ["a cat", "a red car"]


def write_configs(folder: Path) -> Path:
    """The tiny model configs as open_clip JSON files in `folder`."""
    (folder / f"{TINY}.json").write_text(json.dumps({"embed_dim": 64, "vision_cfg": VISION, "text_cfg": TEXT}))
    ls = {"embed_dim": 64, "vision_cfg": {**VISION, "ls_init_value": 0.5}, "text_cfg": TEXT}
    (folder / f"{TINY_LS}.json").write_text(json.dumps(ls))
    return folder


@pytest.fixture(scope="module", autouse=True)
def configs(tmp_path_factory) -> Path:
    folder = write_configs(tmp_path_factory.mktemp("clip_variant_configs"))
    open_clip.add_model_config(folder)
    return folder


@pytest.fixture(scope="module", params=[TINY, TINY_LS])
def bb(request):
    """A random CLIP backbone with spread weights (norms, biases, layer scales, projection)."""
    from attnviz.backbones import load_backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = load_backbone(f"clip:{request.param}", "none", seed=0)
    perturb(backbone.bundle.model, seed=3)
    return backbone


def images(n: int = 2, side: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(5))


# ----------------------------------------------------------------------------- the formulas, in float64

def omega(h: int, w: int, sigma: float = 5.0) -> torch.Tensor:
    """NACLIP's Gaussian over patch positions, zero in the class-token row and column (1+N, 1+N)."""
    out = torch.zeros(1 + h * w, 1 + h * w, dtype=torch.float64)
    for i, j in itertools.product(range(h * w), repeat=2):
        (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
        out[1 + i, 1 + j] = np.exp(-((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * sigma ** 2))
    return out


def reference(bundle, x_img: torch.Tensor, variant: str) -> torch.Tensor:
    """t̂_i (B, N, E) of `variant` from the README's formulas; the last block's weights read directly."""
    vis = copy.deepcopy(bundle.model.visual).double()
    blk = vis.transformer.resblocks[-1]
    seen = {}
    hook = blk.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    try:
        with torch.no_grad():
            vis(x_img.double())                     # only the input of the last block is kept
    finally:
        hook.remove()
    x = seen["x"]                                   # (B, L, D), open_clip is batch-first
    B, L, D = x.shape
    nh = blk.attn.num_heads
    d = D // nh
    s = d ** -0.5
    assert isinstance(blk.mlp.gelu, torch.nn.GELU) and blk.mlp.gelu.approximate == "none"
    g1 = blk.ls_1.gamma.detach() if hasattr(blk.ls_1, "gamma") else 1.0
    g2 = blk.ls_2.gamma.detach() if hasattr(blk.ls_2, "gamma") else 1.0
    with torch.no_grad():
        def ln(t, m):
            mu = t.mean(-1, keepdim=True)
            var = ((t - mu) ** 2).mean(-1, keepdim=True)
            return (t - mu) / torch.sqrt(var + m.eps) * m.weight + m.bias

        W, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
        h = ln(x, blk.ln_1)
        q, k, v = ((h @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D]).reshape(B, L, nh, d).permute(0, 2, 1, 3)
                   for i in range(3))                                   # (B, H, L, d)

        def O(A):                                                       # out_proj(A·v), times ls_1
            o = (A @ v).permute(0, 2, 1, 3).reshape(B, L, D)
            return (o @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias) * g1

        def mlp(t):
            u = ln(t, blk.ln_2) @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias
            u = 0.5 * u * (1 + torch.erf(u / np.sqrt(2)))
            return (u @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias) * g2

        sm = lambda z: torch.softmax(z, dim=-1)  # noqa: E731
        gh, gw = bundle.grid
        if variant == "value":
            y = x + O(torch.eye(L, dtype=torch.float64))
            y = y + mlp(y)
        elif variant == "clear":
            y = O(sm(s * q @ q.transpose(-1, -2)))
        elif variant == "sclip":
            y = x + O(sm(s * q @ q.transpose(-1, -2)) + sm(s * k @ k.transpose(-1, -2)))
            y = y + mlp(y)
        elif variant == "naclip":
            y = O(sm(s * k @ k.transpose(-1, -2) + omega(gh, gw)))
        else:                                                           # plain: the block's own attention
            y = x + O(sm(s * q @ k.transpose(-1, -2)))
            y = y + mlp(y)
        t = ln(y[:, 1:], vis.ln_post) @ vis.proj
    return F.normalize(t, dim=-1)


# ----------------------------------------------------------------------------- the variants

@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_equals_its_formula(bb, variant):
    x = images()
    got = encode_variants(bb.bundle, x, (variant,))[variant]
    want = reference(bb.bundle, x, variant)
    assert got.patches.shape == want.shape == (2, 16, 64)
    np.testing.assert_allclose(got.patches.double().numpy(), want.numpy(), atol=1e-5)
    # and the maps drawn from them: c_i = q · t̂_i, softmax over the patches with CLIP's scale
    out = clip_cross(bb.bundle, got, PROMPTS)
    text = encode_prompts(bb.bundle, PROMPTS)[0].double()
    sims = torch.einsum("bne,pe->bpn", want, text)
    attn = torch.softmax(out.logit_scale * sims, dim=-1)
    np.testing.assert_allclose(out.sims.reshape(2, 2, -1), sims.numpy(), atol=1e-5)
    np.testing.assert_allclose(out.attn.reshape(2, 2, -1), attn.numpy(), atol=1e-5)


def test_variants_differ_pairwise_and_plain_is_the_tower(bb):
    x = images()
    tokens = encode_variants(bb.bundle, x, VARIANTS)
    for a, b in itertools.combinations(VARIANTS, 2):
        gap = (tokens[a].patches - tokens[b].patches).abs().max()
        assert gap > 1e-2, (a, b, float(gap))
    # plain is the real tower's last block output: open_clip's own tokens (after ln_post), projected
    vis = bb.bundle.model.visual
    vis.output_tokens = True
    try:
        with torch.no_grad():
            _, toks = vis(x)
            toks = toks @ vis.proj
    finally:
        vis.output_tokens = False
    np.testing.assert_allclose(tokens["plain"].patches, F.normalize(toks, dim=-1), atol=1e-6)


def test_unknown_variant_is_one_line(bb):
    with pytest.raises(AttnvizError, match="use one of value, clear, sclip, naclip, plain, all"):
        Analyser(bb, texts=["a cat"], variant="maskclip")
    with pytest.raises(AttnvizError, match="unknown CLIP map variant 'all'"):
        encode_variants(bb.bundle, images(1), ("all",))


# ----------------------------------------------------------------------------- --clip-variant all

def test_all_equals_the_single_runs_from_one_pass_up_to_the_last_block(bb):
    im = photo(80, 60, 2)
    an = Analyser(bb, texts=PROMPTS, variant="all", per_word=True, contrast=True)   # (its dummy pass first)
    blocks = bb.bundle.model.visual.transformer.resblocks
    calls = [0] * len(blocks)
    hooks = [blk.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, blk in enumerate(blocks)]
    try:
        (preds, maps), = an.analyse_batch([im])
    finally:
        for h in hooks:
            h.remove()
    assert calls == [1] * len(blocks)          # every block of the tower once, for all five variants
    by = {m.name: m for m in maps}
    for v in VARIANTS:
        (single_preds, single), = Analyser(bb, texts=PROMPTS, variant=v, per_word=True,
                                           contrast=True).analyse_batch([im])
        assert [p.label for p in single_preds] == [p.label for p in preds]
        for m in (m for m in single if m.kind == "cross"):
            # today's names for one variant; cross-<slug>-<variant>... side by side
            twin = by[m.name.replace("cross-a-cat", f"cross-a-cat-{v}").replace("cross-a-red-car", f"cross-a-red-car-{v}")]
            np.testing.assert_allclose(twin.data, m.data, atol=1e-6)
            assert twin.meta["variant"] == m.meta["variant"] == v
            assert twin.meta["variants"] == list(VARIANTS) and "variants" not in m.meta
        assert by[f"cross-a-cat-{v}"].meta["variant_params"]["method"] == \
            {"value": "MaskCLIP", "clear": "ClearCLIP", "sclip": "SCLIP", "naclip": "NACLIP", "plain": "CLIP"}[v]
    assert by["cross-a-cat-naclip"].meta["variant_params"]["sigma"] == 5.0
    assert {"cross-a-cat-sclip-contrast", "cross-a-red-car-clear-word-car"} <= set(by)


# ----------------------------------------------------------------------------- --slide

def view(image: Image.Image, w: int, h: int, bundle) -> torch.Tensor:
    """The image resized to (w, h) with open_clip's own resampling, scaled to [0, 1] and normalised."""
    resample = Image.Resampling[bundle.model.visual.preprocess_cfg["interpolation"].upper()]
    a = np.asarray(image.convert("RGB").resize((w, h), resample), dtype=np.float32) / 255
    a = (a - np.array(bundle.mean, np.float32)) / np.array(bundle.std, np.float32)
    return torch.from_numpy(a).permute(2, 0, 1)[None]


@pytest.mark.parametrize("variant", ["value", "naclip"])
def test_slide_is_the_mean_of_the_crops_placed_back(bb, variant):
    im = photo(100, 70, 4)
    # short side 96: 100x70 -> 137x96, snapped to the 16 px patch grid: 144x96 -> a 6x9 map;
    # 64 px crops every 32 px, the last column flush right: y in {0, 32}, x in {0, 32, 64, 80}
    big = view(im, 144, 96, bb.bundle)
    total, count = np.zeros((2, 6, 9)), np.zeros((1, 6, 9))
    for y, x in itertools.product([0, 32], [0, 32, 64, 80]):
        crop = clip_cross(bb.bundle, big[:, :, y:y + 64, x:x + 64], PROMPTS, variant)
        total[:, y // 16:y // 16 + 4, x // 16:x // 16 + 4] += crop.sims[0]
        count[:, y // 16:y // 16 + 4, x // 16:x // 16 + 4] += 1
    sims = total / count
    s = crop.logit_scale
    attn = np.exp(s * sims - (s * sims).max(axis=(1, 2), keepdims=True))
    attn /= attn.sum(axis=(1, 2), keepdims=True)
    (_, maps), = Analyser(bb, texts=PROMPTS, variant=variant, slide="64,32,96").analyse_batch([im])
    by = {m.name: m for m in maps}
    for j, name in enumerate(["cross-a-cat", "cross-a-red-car"]):
        assert by[name].shape == (6, 9)
        np.testing.assert_allclose(by[name].extras["similarity"], sims[j], atol=1e-5)
        np.testing.assert_allclose(by[name].data, attn[j], atol=1e-5)
    assert by["cross-a-cat"].meta["slide"] == {"window": 64, "stride": 32, "short_side": 96, "crops": 8,
                                               "view": [144, 96]}


def test_one_crop_equal_to_the_image_is_the_plain_run(bb):
    im = photo(50, 50, 6)
    (_, plain), = Analyser(bb, texts=PROMPTS, variant="all").analyse_batch([im])
    (_, slid), = Analyser(bb, texts=PROMPTS, variant="all", slide=(64, 64, 64)).analyse_batch([im])
    slid_by = {m.name: m for m in slid}
    crosses = [m for m in plain if m.kind == "cross"]
    assert len(crosses) == 10
    for m in crosses:
        assert slid_by[m.name].meta["slide"]["crops"] == 1
        np.testing.assert_allclose(slid_by[m.name].data, m.data, atol=1e-6)
    for m in (m for m in plain if m.kind != "cross"):            # the other kinds never see --slide
        np.testing.assert_allclose(slid_by[m.name].data, m.data, atol=1e-6)


def test_slide_mistakes_are_one_line(bb, resnet18_small):
    for bad, match in [("224", "WINDOW,STRIDE"), ("a,b", "WINDOW,STRIDE"), ("64,65", "STRIDE ≤ WINDOW"),
                       ("64,32,40", "WINDOW ≤ SHORT")]:
        with pytest.raises(AttnvizError, match=match):
            Analyser(bb, texts=PROMPTS, slide=bad)
    with pytest.raises(AttnvizError, match="multiple of 16"):
        Analyser(bb, texts=PROMPTS, slide="64,20")
    with pytest.raises(AttnvizError, match="clip: backbones only"):
        Analyser(resnet18_small, slide="64,32")


# ----------------------------------------------------------------------------- the command line

def cli(configs: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m attnviz.cli ARGS` from the worktree root, with the tiny configs registered first."""
    boot = ("import sys, runpy, open_clip; open_clip.add_model_config(sys.argv[1]); "
            "sys.argv = ['attnviz', *sys.argv[2:]]; runpy.run_module('attnviz.cli', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", boot, str(configs), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow   # two CLI processes (~50 s on 2 shared cores)
def test_cli_all_variants_end_to_end(configs, tmp_path):
    photo(90, 60, 1).save(tmp_path / "cat.png")
    out = tmp_path / "out"
    proc = cli(configs, "run", str(tmp_path / "cat.png"), "-o", str(out), "--backbone", f"clip:{TINY_LS}",
               "--clip-variant", "all", "--text", "a cat", "--weights", "none", "--size", "64", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    man = json.loads((out / "manifest.json").read_text())
    maps = {m["name"]: m for m in man["images"][0]["maps"] if m["kind"] == "cross"}
    assert set(maps) == {f"cross-a-cat-{v}" for v in VARIANTS}
    for v in VARIANTS:
        assert maps[f"cross-a-cat-{v}"]["variant"] == v and (out / "cat" / f"cross-a-cat-{v}.png").is_file()
        assert maps[f"cross-a-cat-{v}"]["variant_params"]["residual"] == (v not in ("clear", "naclip"))
    assert man["fingerprint"]["settings"]["variant"] == "all" and man["fingerprint"]["settings"]["slide"] is None
    assert len(man["summary"]["rankings"]["a cat"]) == 1         # one entry per image, not per variant
    assert Image.open(out / "cat" / "grid.png").size[0] > 0
    bad = cli(configs, "run", str(tmp_path / "cat.png"), "-o", str(tmp_path / "o2"), "--backbone", f"clip:{TINY}",
              "--slide", "64,20", "--text", "a cat", "--weights", "none")
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("error")]
    assert bad.returncode == 2 and len(errors) == 1 and "multiple of 16" in errors[0], bad.stderr
    assert "Traceback" not in bad.stderr
