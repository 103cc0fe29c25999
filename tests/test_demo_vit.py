"""demo-vit: the committed ViT of the demo world, its gradient kinds, and what they score."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz.backbones import load_backbone
from attnviz.pipeline import Analyser
from attnviz.zoo.vit import VIT_WEIGHTS_PATH
from attnviz.zoo.world import make_scenes


def test_weights_are_small_and_load():
    assert VIT_WEIGHTS_PATH.stat().st_size <= 5 * 2**20
    bb = load_backbone("demo-vit")
    assert bb.tokens == (1, (12, 12)) and len(bb.model.blocks) >= 4 and bb.token_head is not None
    assert bb.pretrained and bb.default_layer == f"blocks.{len(bb.model.blocks) - 1}"


@pytest.mark.parametrize("depth, context", [(4, 0), (5, 1), (2, 2)])
def test_weights_of_another_depth_or_stem_load_as_they_were_trained(tmp_path, depth, context):
    """`train_vit --depth/--context` weights: `--backbone demo-vit --weights FILE` builds their shape."""
    from attnviz.zoo.vit import DemoViT, load_demo_vit, shape_of
    torch.manual_seed(depth)
    trained = DemoViT(depth=depth, context=context).eval()
    path = tmp_path / "w.pt"
    torch.save(trained.state_dict(), path)
    assert shape_of(trained.state_dict()) == {"depth": depth, "context": context}
    x = torch.randn(2, 3, 96, 96)
    for model in (load_backbone("demo-vit", str(path)).model, load_demo_vit(path)):
        assert len(model.blocks) == depth and len(model.patch_embed) == 5 + 2 * context
        with torch.no_grad():
            torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)


def test_a_file_of_another_model_is_refused_in_one_line(tmp_path):
    from attnviz.errors import AttnvizError
    from attnviz.zoo.vit import shape_of
    path = tmp_path / "other.pt"
    torch.save({"blocks.99999.w": torch.zeros(1), "patch_embed.7.weight": torch.zeros(1)}, path)
    assert shape_of(torch.load(path)) == {}                  # no absurd model is built from the names
    with pytest.raises(AttnvizError, match="does not fit demo-vit"):
        load_backbone("demo-vit", str(path))


def test_training_free_scenes_ask_for_binding():
    """`train_vit --free P`: that share of scenes has 2–3 distinct, freely drawn categories."""
    from attnviz.demo.train_vit import _Batches
    rng = np.random.default_rng(0)
    free = [_Batches(0, 1, 96, free=1.0)._scene(rng) for _ in range(40)]
    assert all(2 <= len(s.objects) <= 3 and len({o.category for o in s.objects}) == len(s.objects) for s in free)
    assert any(a.colour != b.colour and a.shape != b.shape for s in free for a in s.objects for b in s.objects)
    from attnviz.zoo.world import make_scene       # without --free the rounds' streams are unchanged
    assert np.array_equal(_Batches(0, 1, 96)._scene(np.random.default_rng(3)).image,
                          make_scene(np.random.default_rng(3)).image)


def test_training_loss_mil_adds_the_presence_loss_of_the_best_patch():
    """`train_vit --mil W`: the class token's BCE plus W × the BCE of the max over patch tokens."""
    from attnviz.demo.train_vit import _loss
    from attnviz.zoo.vit import DemoViT
    torch.manual_seed(0)
    model = DemoViT().eval()
    x, y = torch.randn(3, 3, 96, 96), (torch.rand(3, 24) < 0.2).float()
    with torch.no_grad():
        tokens = model.blocks(model.tokens(x))
        per_patch = model.head(model.norm(tokens))[:, 1:]                        # (B, 144, 24)
        best = torch.stack([per_patch[b, :, c].max() for b in range(3) for c in range(24)]).reshape(3, 24)
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        plain = bce(model(x), y) * 6
        torch.testing.assert_close(_loss(model, x, y), plain)
        torch.testing.assert_close(_loss(model, x, y, 0.5), plain + 0.5 * bce(best, y) * 6)


def _reference(model, x, targets):
    """float64, attention written out: GAE and LeGrad (every block) by their formulas."""
    m = copy.deepcopy(model).double()
    attn, zs = [], []
    t = m.tokens(x.double())
    for blk in m.blocks:
        h = blk.norm1(t)
        b, n, c = h.shape
        q, k, v = blk.attn.qkv(h).reshape(b, n, 3, blk.attn.heads, c // blk.attn.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / (c // blk.attn.heads) ** 0.5, -1)
        t = t + blk.attn.proj((a @ v).transpose(1, 2).reshape(b, n, c))
        t = t + blk.mlp(blk.norm2(t))
        attn.append(a)
        zs.append(t)
    logits = m.forward_head(t)
    idx = torch.arange(len(targets))
    grads = torch.autograd.grad(logits[idx, targets].sum(), attn, retain_graph=True)
    r = torch.eye(attn[0].shape[-1], dtype=torch.float64).expand(len(targets), -1, -1)
    for a, g in zip(attn, grads):
        r = r + (g * a).clamp(min=0).mean(1) @ r
    le = 0
    for a, z in zip(attn, zs):
        g, = torch.autograd.grad(m.forward_head(z)[idx, targets].sum(), a, retain_graph=True)
        le = le + g.clamp(min=0).mean(dim=(1, 2))[:, 1:]
    return r[:, 0, 1:], le


def test_gradient_maps_equal_the_float64_formulas_on_the_fused_demo_vit():
    scenes = make_scenes(4, seed=11)
    images = [Image.fromarray(np.asarray(s.image, np.uint8)) for s in scenes]
    bb = load_backbone("demo-vit")
    an = Analyser(bb, ["self-gae", "self-legrad"], targets=("red circle", "5"))
    x = an.preprocess(images)
    results = an.analyse_batch(images)
    for slot, t in enumerate((0, 5)):
        gae, le = _reference(bb.model, x, torch.full((len(images),), t))
        for i, (_, maps) in enumerate(results):
            by = {m.kind: [mm for mm in maps if mm.kind == m.kind] for m in maps}
            for kind, ref in (("self-gae", gae), ("self-legrad", le)):
                want = ref[i].detach().reshape(12, 12).numpy()
                got = by[kind][slot].data
                assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.slow
def test_the_model_card_figures_hold_on_the_200_held_out_scenes():
    """attnviz/zoo/VIT_MODEL_CARD.md's table (CPU float32; a peak may flip on another machine: ±0.02)."""
    from attnviz.demo.vit_scores import evaluate_vit
    r = evaluate_vit()
    card = {"pointing": {"self": 0.950, "self-rollout": 1.000, "self-gae": 1.000, "self-legrad": 1.000},
            "specificity": {"self": 0.385, "self-gae": 1.000, "self-legrad": 0.972}}
    for field, want in card.items():
        for k, v in want.items():
            assert getattr(r, field)[k] == pytest.approx(v, abs=0.02), (field, k)
    assert min(r.specificity["self-gae"], r.specificity["self-legrad"]) >= 0.95 > r.specificity["self"] + 0.5
    assert r.presence_exact >= 0.99


def test_explain_strips_of_the_gradient_kinds_end_on_the_maps_drawn():
    from attnviz.explain.stages import explain
    scene = [s for s in make_scenes(30, seed=7) if len(s.objects) >= 2][0]
    image = Image.fromarray(np.asarray(scene.image, np.uint8))
    ex = explain(image, "self-gae,self-legrad", "demo-vit", targets=(scene.objects[0].category,))
    for kind in ("self-gae", "self-legrad"):
        strip = ex.strip(kind)
        (name, final), = strip.finals.items()
        assert name.startswith(kind)
        assert len(strip.panels()) >= (5 if kind == "self-gae" else 4)   # LeGrad: image, 2 blocks, sum
    gae = ex.strip("self-gae")
    (_, final), = gae.finals.items()
    (_, maps), = Analyser("demo-vit", ["self-gae"], targets=(scene.objects[0].category,)).analyse_batch([image])
    np.testing.assert_allclose(final.data, maps[0].data, rtol=1e-5, atol=1e-7)   # R's last row is the map
