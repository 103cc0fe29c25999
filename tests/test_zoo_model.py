"""The committed DemoNet: loads safely, the pipeline reads its own attention exactly and leaves
nothing behind, the maps point at the right objects on held-out scenes, a wrong (transposed) map
fails the same check. Nothing is trained here."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attnviz.zoo.model import (CROSS_ATTN, SE_GATE, SE_MODULE, SELF_ATTN, SPATIAL_GATE,
                                WEIGHTS_PATH, DemoNet, caption_ids, load_demo_model, preprocess,
                                tokenize)
from attnviz.demo.pointing import (HELDOUT_SEED, SCORED, TARGETS, demo_backbone,
                                   energy_in_box, evaluate_model, randomised_demo, scene_maps, score)
from attnviz.zoo.world import CATEGORIES, make_scenes
from attnviz.pipeline import Analyser
from attnviz.metrics import Box, chance_rate
from attnviz.text import slug
from attnviz.results import AttentionMap

N_HELDOUT = 200


@pytest.fixture(scope="module")
def model() -> DemoNet:
    torch.manual_seed(0)
    return load_demo_model()


@pytest.fixture(scope="module")
def report(model):
    return evaluate_model(model, n=N_HELDOUT, seed=HELDOUT_SEED, sanity=True)


@pytest.fixture(scope="module")
def analyser(model) -> Analyser:
    return Analyser(demo_backbone(model), list(SCORED))


@pytest.fixture(scope="module")
def batch():
    scenes = make_scenes(8, seed=HELDOUT_SEED + 1)
    return scenes, preprocess([s.image for s in scenes])


# ----------------------------------------------------------------- weights and API

def test_weights_are_a_small_plain_state_dict():
    assert WEIGHTS_PATH.is_file()
    assert WEIGHTS_PATH.stat().st_size <= 2 * 1024 * 1024
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert set(state) == set(DemoNet().state_dict())


def test_model_api(model, batch):
    scenes, x = batch
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) <= 250_000
    assert model.categories == list(CATEGORIES) and len(model.categories) == 24
    assert model.input_size == 96 and len(model.mean) == 3 and len(model.std) == 3
    assert x.shape == (8, 3, 96, 96)
    with torch.no_grad():
        logits = model(x)
        m = model.match(x, caption_ids())
        per_image = model.match(x, caption_ids()[:3].unsqueeze(0).expand(8, -1, -1))
    assert logits.shape == (8, 24) and m.shape == (8, 24) and per_image.shape == (8, 3)
    assert torch.allclose(per_image, m[:, :3], atol=1e-5)
    with torch.no_grad():                   # the split API gives the same logits
        feats = model.gated_features(x)
        assert torch.allclose(model.presence_from(feats), logits, atol=1e-5)
        assert torch.allclose(model.match_from(feats, caption_ids()), m, atol=1e-5)
        padded = torch.zeros(8, 2, model.context_len, dtype=torch.long)
        padded[:, 0] = tokenize("the red ring")
        assert torch.isfinite(model.match_from(feats, padded)).all()   # all-zero row: padding
    for name in (SE_MODULE, SE_GATE, SPATIAL_GATE, SELF_ATTN, CROSS_ATTN):
        model.get_submodule(name)
    assert isinstance(model.get_submodule(SE_GATE), nn.Sigmoid)
    assert isinstance(model.get_submodule(SPATIAL_GATE), nn.Sigmoid)
    assert isinstance(model.get_submodule(SELF_ATTN), nn.MultiheadAttention)
    assert isinstance(model.get_submodule(CROSS_ATTN), nn.MultiheadAttention)
    assert not any(isinstance(m, nn.TransformerEncoderLayer) for m in model.modules())


def test_tokenize():
    ids = tokenize("the blue ring")
    assert ids.dtype == torch.long and ids.ndim == 1
    assert torch.equal(tokenize("The  BLUE ring"), ids)
    assert tokenize(["the red star", "blue ring"]).shape == (2, ids.shape[0])
    with pytest.raises(ValueError, match="vocabulary.*blue"):
        tokenize("the purple ring")


def test_load_missing_file_names_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="attnviz.demo.train"):
        load_demo_model(tmp_path / "none.pt")


# ----------------------------------------------------------------- reading attention natively

def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_pipeline_maps_are_what_the_modules_compute_and_leave_no_residue(model, analyser, batch):
    scenes, x = batch
    ids = caption_ids()
    before = _hook_count(model)
    with torch.no_grad():
        ref_p, ref_m = model.forward_all(x, ids)
    maps = scene_maps(analyser, scenes)
    assert _hook_count(model) == before
    with torch.no_grad():                   # observing changes nothing
        p, m = model.forward_all(x, ids)
        assert torch.equal(p, ref_p) and torch.equal(m, ref_m)
        # every map again, straight from the modules
        f = model.stem(x)                                                  # SE input F
        se = model.cbam.se
        s = se.scale_activation(se.fc2(se.activation(se.fc1(se.avgpool(f)))))[:, :, 0, 0]
        g = se(f)                                                          # s ⊙ F
        spatial = model.cbam.spatial.gate(model.cbam.spatial.conv(
            torch.cat([g.mean(1, keepdim=True), g.amax(1, keepdim=True)], 1)))[:, 0]
        channel = (s[:, :, None, None] * f).sum(1)
        feats = model.gated_features(x)
        tok = model.down(feats).flatten(2).transpose(1, 2)
        tok = torch.cat([model.cls_token.expand(len(x), -1, -1), tok], 1) + model.pos_embed
        h = model.encoder.norm1(tok)
        _, w = model.encoder.attn(h, h, h, need_weights=True)             # mean over heads
        self_cls = w[:, 0, 1:].reshape(-1, 12, 12)
        keys = model.key_norm(feats.flatten(2).transpose(1, 2))
    close = lambda a, b: np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-5)  # noqa: E731
    assert 0 < float(spatial.min()) and float(spatial.max()) < 1
    for b, scene in enumerate(scenes):
        got = maps[b]
        assert all(got[k].provenance == "native" for k in SCORED if k != "cross")
        close(got["channel"].data, channel[b])
        close(got["spatial"].data, spatial[b])
        close(got["mixed-serial"].data, spatial[b])       # serial CBAM: the spatial gate itself
        close(got["self"].data, self_cls[b])
        for o in scene.objects:
            with torch.no_grad():
                q = model.encode_text(ids[o.label])[None, None]
                _, wc = model.cross(q, keys[b:b + 1], keys[b:b + 1], need_weights=True)
            cross = got[f"cross-{slug(o.caption)}"]
            assert cross.provenance == "native" and cross.data.shape == (24, 24)
            close(cross.data, wc[0, 0].reshape(24, 24))


def test_maps_are_oriented_like_the_image(analyser):
    """The cross map of a lone object peaks at the object: rows are y, columns are x."""
    scenes = [s for s in make_scenes(60, seed=HELDOUT_SEED + 2) if len(s.objects) == 1][:10]
    maps = scene_maps(analyser, scenes)
    ok = 0
    for b, s in enumerate(scenes):
        o = s.objects[0]
        i, j = np.unravel_index(int(maps[b][f"cross-{slug(o.caption)}"].data.argmax()), (24, 24))
        cx, cy = (j + 0.5) * 4, (i + 0.5) * 4
        ok += o.box[0] - 4 <= cx <= o.box[2] + 4 and o.box[1] - 4 <= cy <= o.box[3] + 4
    assert ok >= 9


def test_feature_grids_are_centred():
    """Cell (i, j) of the 24×24 grid sees a window centred on pixel ((j+.5)·4, (i+.5)·4).
    (The stem's receptive field; the SE gate then pools globally and the 7×7 gate is symmetric.)"""
    net = DemoNet().eval()
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = torch.randn(1, 3, 96, 96, requires_grad=True)
    for k in (5, 11, 17):
        g, = torch.autograd.grad(net.stem(x)[0, :, k, k].sum(), x)
        rows, cols = torch.nonzero(g[0].abs().sum(0) > 0, as_tuple=True)
        for idx in (rows, cols):        # support [lo, hi] in pixel indices → centre (lo+hi+1)/2
            assert (idx.min().item() + idx.max().item() + 1) / 2 == (k + 0.5) * 4


# ----------------------------------------------------------------- pointing game

def test_scoring_conventions():
    m = np.zeros((24, 24), np.float32)
    m[2, 20] = 1.0                          # row 2 (y), column 20 (x): cell centre (82, 10)
    am = AttentionMap("spatial", "spatial", "native", "test", m)
    size = (96, 96)
    assert score(am, [Box(80, 8, 90, 12)], size)[0]
    assert not score(dataclasses.replace(am, data=m.T), [Box(80, 8, 90, 12)], size)[0]
    assert not score(am, [Box(83, 8, 90, 12)], size)[0]
    assert score(am, [Box(83, 8, 90, 12)], size, tolerance=1.0)[0]
    assert score(am, [Box(0, 0, 5, 5), Box(80, 8, 90, 12)], size)[0]          # any box
    assert score(am, [Box(72, 0, 96, 24)], size)[1] > 0.9
    # chance: the share of cell centres ((j + 0.5)·4 px) inside the closed box
    assert chance_rate((24, 24), size, (Box(0, 0, 6, 6),)) == 4 / 576           # 6 on the edge counts
    assert chance_rate((24, 24), size, (Box(0, 0, 5.9, 5.9),)) == 1 / 576
    # energy: the map upsampled, THEN shifted by its minimum (the card's definition; an inner
    # minimum rises when upsampled, so shifting the coarse map first gives another figure)
    coarse = np.ones((12, 12), np.float32)
    coarse[6, 6], coarse[2, 3] = 0.0, 3.0
    up = F.interpolate(torch.from_numpy(coarse)[None, None], size=(96, 96), mode="bilinear",
                       align_corners=False)[0, 0].numpy()
    up -= up.min()
    assert energy_in_box(coarse, size, [Box(16, 8, 40, 40)]) == pytest.approx(
        up[8:40, 16:40].sum() / up.sum(), rel=1e-5)


def test_pointing_targets_on_heldout_scenes(report):
    print("\n" + report.table())
    for kind, target in TARGETS.items():
        assert report.pointing[kind] >= target, (kind, report.pointing[kind])
    assert report.pointing["mixed-serial"] == report.pointing["spatial"]
    for kind, rate in report.pointing.items():
        assert rate > 2 * report.chance[kind], kind          # far above chance, every kind
    assert report.presence_label_acc > 0.95 and report.caption_acc > 0.85


def test_maps_differ_from_a_randomised_model(report):
    for kind, rho in report.sanity.items():
        assert abs(rho) < 0.3, (kind, rho)


def test_random_copies_are_calibrated_and_leave_the_model_alone(model, batch):
    scenes, x = batch
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rnd = randomised_demo(model, x, seed=0)
    assert rnd.model is not model and not rnd.model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        f = rnd.model.stem(x)
    assert 0.9 < float(f.std()) < 1.1       # BatchNorm statistics of these very images
    maps = scene_maps(Analyser(rnd, ["spatial"]), scenes)
    assert min(float(m["spatial"].data.std()) for m in maps) > 0.01   # not a constant gate


def test_evaluating_leaves_the_model_and_torch_rng_as_they_were(model):
    """train.py evaluates mid-training: the model's mode and statistics, and torch's random
    stream (so the committed weights stay reproducible), must come back untouched."""
    net = copy.deepcopy(model).train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    hooks = _hook_count(net)
    evaluate_model(net, n=4, sanity=False)
    assert torch.equal(torch.get_rng_state(), rng)
    evaluate_model(net, n=4, sanity_seeds=(0,))
    assert net.training and _hook_count(net) == hooks
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_a_transposed_map_fails_the_target(model):
    wrong = evaluate_model(model, n=100, seed=HELDOUT_SEED, sanity=False, transpose=True)
    for kind in TARGETS:
        assert wrong.pointing[kind] < 0.6, (kind, wrong.pointing[kind])
