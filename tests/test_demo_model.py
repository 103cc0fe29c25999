"""The committed DemoNet: loads safely, its own attention points at the right objects on held-out
scenes, a wrong (transposed) map fails the same check, and the hooks leave nothing behind.
Nothing is trained here."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from attnviz.demo.model import (CROSS_ATTN, SE_GATE, SE_MODULE, SELF_ATTN, SPATIAL_GATE,
                                WEIGHTS_PATH, DemoNet, caption_ids, load_demo_model, preprocess,
                                tokenize)
from attnviz.demo.pointing import (HELDOUT_SEED, TARGETS, AttentionRecorder, argmax_cell,
                                   cell_centre, energy_in_box, evaluate_model, mha_weights,
                                   native_maps, pointing_hit, pointing_hit_any, spearman)
from attnviz.demo.world import CATEGORIES, make_scenes

N_HELDOUT = 200


@pytest.fixture(scope="module")
def model() -> DemoNet:
    torch.manual_seed(0)
    return load_demo_model()


@pytest.fixture(scope="module")
def report(model):
    return evaluate_model(model, n=N_HELDOUT, seed=HELDOUT_SEED, sanity=True)


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

def test_hooks_capture_what_the_modules_compute_and_leave_no_residue(model, batch):
    _, x = batch
    ids = caption_ids()

    def hook_count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before = hook_count()
    with torch.no_grad():
        ref_p, ref_m = model.forward_all(x, ids)
    with AttentionRecorder(model) as rec, torch.no_grad():
        assert hook_count() == before + 5
        p, m = model.forward_all(x, ids)
    assert hook_count() == before
    assert torch.equal(p, ref_p) and torch.equal(m, ref_m)           # observing changes nothing
    r = rec.records
    assert r["se"].shape == (8, 32) and r["spatial"].shape == (8, 24, 24)
    assert r["self"].shape == (8, 4, 145, 145) and r["cross"].shape == (8, 1, 24, 576)
    assert r["features"].shape == (8, 32, 24, 24)
    assert 0 < float(r["spatial"].min()) and float(r["spatial"].max()) < 1
    # the recorded weights equal what the module returns with need_weights=True
    with torch.no_grad():
        feats = model.gated_features(x)
        keys = model.key_norm(feats.flatten(2).transpose(1, 2))
        q = model.encode_text(ids).unsqueeze(0).expand(8, -1, -1)
        _, w = model.cross(q, keys, keys, need_weights=True, average_attn_weights=False)
    assert torch.allclose(w, r["cross"], atol=1e-5)
    assert torch.allclose(mha_weights(model.cross, q, keys), w, atol=1e-5)
    mha = model.get_submodule(SELF_ATTN)
    tok = torch.randn(2, 145, mha.embed_dim)
    with torch.no_grad():
        _, w = mha(tok, tok, tok, need_weights=True, average_attn_weights=False)
        assert torch.allclose(mha_weights(mha, tok, tok), w, atol=1e-5)
    # after the recorder, the model still predicts exactly as before
    with torch.no_grad():
        assert torch.equal(model.forward_all(x, ids)[0], ref_p)


def test_maps_are_oriented_like_the_image(model):
    """The cross map of a lone object peaks at the object: rows are y, columns are x."""
    scenes = [s for s in make_scenes(60, seed=HELDOUT_SEED + 2) if len(s.objects) == 1][:10]
    x = preprocess([s.image for s in scenes])
    maps = native_maps(model, x)
    ok = 0
    for b, s in enumerate(scenes):
        o = s.objects[0]
        i, j = argmax_cell(maps["cross"][b, o.label])
        cx, cy = cell_centre(i, j, (24, 24), 96)
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

def test_geometry_helpers():
    m = np.zeros((24, 24), np.float32)
    m[2, 20] = 1.0                          # row 2 (y), column 20 (x)
    assert argmax_cell(m) == (2, 20)
    assert cell_centre(2, 20, (24, 24), 96) == (82.0, 10.0)
    assert pointing_hit(m, (80, 8, 90, 12), 96)
    assert not pointing_hit(m.T, (80, 8, 90, 12), 96)
    assert pointing_hit_any(m, [(0, 0, 5, 5), (80, 8, 90, 12)], 96)
    assert energy_in_box(m, (72, 0, 96, 24), 96) > 0.9
    assert spearman(m, m) == pytest.approx(1.0)
    assert spearman(m, -m) == pytest.approx(-1.0)
    assert spearman(m, np.ones_like(m)) == 0.0


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


def test_a_transposed_map_fails_the_target(model):
    wrong = evaluate_model(model, n=100, seed=HELDOUT_SEED, sanity=False, transpose=True)
    for kind in TARGETS:
        assert wrong.pointing[kind] < 0.6, (kind, wrong.pointing[kind])
