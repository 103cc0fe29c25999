"""cross-gae and cross-legrad on a tiny open_clip ViT, against a float64 forward written out here."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from attnviz.backbones.clip_core import encode_prompts  # noqa: E402
from attnviz.pipeline import Analyser  # noqa: E402
from tests.conftest import photo  # noqa: E402

TINY = "attnviz-tiny-grad"
PROMPTS = ("a red square", "a photo of a dog")


@pytest.fixture(scope="module")
def clip_bb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cfg")
    vision = {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16, "head_width": 32}
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    (folder / f"{TINY}.json").write_text(json.dumps({"embed_dim": 64, "vision_cfg": vision, "text_cfg": text}))
    open_clip.add_model_config(folder)
    from attnviz.backbones import load_backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone(f"clip:{TINY}", "none", seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                      # spread the random model so the maps vary
        for name, p in bb.model.named_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g) * max(float(p.std()) if p.numel() > 1 else 1.0, 0.05))
    return bb


def reference(visual, x):
    """open_clip's VisionTransformer in float64, attention written out: (A per block, z per block, image emb)."""
    v = visual
    t = v.conv1(x).flatten(2).transpose(1, 2)                                   # (B, N, D)
    cls = v.class_embedding.to(t.dtype)[None, None].expand(t.shape[0], 1, -1)
    t = v.ln_pre(torch.cat([cls, t], 1) + v.positional_embedding.to(t.dtype))
    attn, zs = [], []
    for blk in v.transformer.resblocks:
        m = blk.attn
        h = blk.ln_1(t)
        b, n, d = h.shape
        q, k, vv = F.linear(h, m.in_proj_weight, m.in_proj_bias).chunk(3, -1)
        q, k, vv = (u.reshape(b, n, m.num_heads, d // m.num_heads).transpose(1, 2) for u in (q, k, vv))
        a = torch.softmax(q @ k.transpose(-2, -1) / (d // m.num_heads) ** 0.5, -1)
        o = F.linear((a @ vv).transpose(1, 2).reshape(b, n, d), m.out_proj.weight, m.out_proj.bias)
        t = t + blk.ls_1(o)
        t = t + blk.ls_2(blk.mlp(blk.ln_2(t)))
        attn.append(a)
        zs.append(t)
    emb = F.normalize(v.ln_post(t[:, 0]) @ v.proj, dim=-1)
    return attn, zs, emb


def test_cross_gae_and_legrad_equal_the_float64_formulas(clip_bb):
    images = [photo(64, 64, seed=s) for s in range(2)]
    an = Analyser(clip_bb, ["cross-gae", "cross-legrad"], texts=PROMPTS)
    x = an.preprocess(images)
    results = an.analyse_batch(images)
    v = __import__("copy").deepcopy(clip_bb.model).double()
    attn, zs, emb = reference(v, x.double())
    text = encode_prompts(clip_bb.bundle, list(PROMPTS))[0].double()
    with torch.no_grad():
        own = clip_bb.bundle.model.encode_image(x, normalize=True)
    assert (emb.detach().float() - own).abs().max() < 1e-5           # the reference is the model
    grid = clip_bb.tokens[1]
    errors = []
    for j, prompt in enumerate(PROMPTS):
        grads = torch.autograd.grad((emb @ text[j]).sum(), attn, retain_graph=True)
        r = torch.eye(attn[0].shape[-1], dtype=torch.float64).expand(2, -1, -1)
        for a, g in zip(attn, grads):
            r = r + (g * a).clamp(min=0).mean(1) @ r
        want_gae = r[:, 0, 1:]
        want_le = 0
        for a, z in zip(attn[-2:], zs[-2:]):                           # the released code: last two blocks
            e = F.normalize(v.ln_post(z.mean(1)) @ v.proj, dim=-1)
            g, = torch.autograd.grad((e @ text[j]).sum(), a, retain_graph=True)
            want_le = want_le + g.clamp(min=0).mean(dim=(1, 2))[:, 1:]
        for i, (_, maps) in enumerate(results):
            by = {m.name: m for m in maps}
            for kind, want in (("cross-gae", want_gae), ("cross-legrad", want_le)):
                m = by[f"{kind}-{prompt.replace(' ', '-')}"]
                ref = want[i].detach().reshape(grid).numpy()
                err = float(np.abs(m.data - ref).max() / np.abs(ref).max())
                errors.append(err)
                assert err <= 1e-4, (m.name, err)
                assert m.meta["prompt"] == prompt and m.provenance == "native"
    print(f"open_clip: max error / peak {max(errors):.2e}")


def test_cross_gradient_kinds_need_prompts(clip_bb):
    from attnviz.errors import AttnvizError
    with pytest.raises(AttnvizError, match="--text"):
        Analyser(clip_bb, ["cross-gae"])
