"""Each derived kind against an independent float64 NumPy computation of the spec's formula."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attnviz.kinds.channel import channel_logits, channel_map
from attnviz.kinds.cross import cross_map, match_classes
from attnviz.text import slug
from attnviz.kinds.mixed_parallel import parallel_map
from attnviz.kinds.self_attention import self_attention
from attnviz.kinds.spatial import spatial_logits
from attnviz.maps import normalise

EPS = 1e-6


def sig(x):
    return 1 / (1 + np.exp(-x))


def z(x, axis):
    return (x - x.mean(axis=axis, keepdims=True)) / (x.std(axis=axis, keepdims=True) + EPS)


def ref_channel(f):                      # f: (C, H, W) float64
    s = sig(z(f.mean(axis=(1, 2)), 0))
    return s, np.tensordot(s, f, axes=(0, 0))


def ref_gauss():
    ax = np.arange(7) - 3.0
    g = np.exp(-(ax[:, None] ** 2 + ax[None] ** 2) / (2 * 1.5 ** 2))
    return g / g.sum()


def ref_spatial_logit(f):
    a = 0.5 * (z(f.mean(axis=0), None) + z(f.max(axis=0), None))
    h, w = a.shape
    padded = np.pad(a, 3)
    g = ref_gauss()
    return np.array([[(padded[i:i + 7, j:j + 7] * g).sum() for j in range(w)] for i in range(h)])


def test_channel_matches_formula(feats):
    s = torch.sigmoid(channel_logits(feats))
    m = channel_map(feats, s)
    for i in range(len(feats)):
        s_ref, m_ref = ref_channel(feats[i].double().numpy())
        np.testing.assert_allclose(s[i].numpy(), s_ref, atol=1e-5)
        np.testing.assert_allclose(m[i].numpy(), m_ref, atol=1e-4, rtol=1e-5)
    assert s.std() > 0.1   # the weights really vary on this input


def test_spatial_matches_formula(feats):
    gate = torch.sigmoid(spatial_logits(feats))
    for i in range(len(feats)):
        ref = sig(ref_spatial_logit(feats[i].double().numpy()))
        np.testing.assert_allclose(gate[i].numpy(), ref, atol=1e-5)
    assert gate.shape == (2, 5, 7)


def test_mixed_serial_is_spatial_of_channel_scaled(feats):
    from attnviz.kinds.mixed_serial import MixedSerial  # noqa: F401  (registered kind)
    s = torch.sigmoid(channel_logits(feats))
    gate = torch.sigmoid(spatial_logits(feats * s[:, :, None, None]))
    for i in range(len(feats)):
        f = feats[i].double().numpy()
        s_ref, _ = ref_channel(f)
        ref = sig(ref_spatial_logit(f * s_ref[:, None, None]))
        np.testing.assert_allclose(gate[i].numpy(), ref, atol=1e-5)


def test_mixed_parallel_matches_formula(feats):
    m = parallel_map(feats, channel_logits(feats), spatial_logits(feats))
    for i in range(len(feats)):
        f = feats[i].double().numpy()
        s_ref, _ = ref_channel(f)
        ms_ref = sig(ref_spatial_logit(f))
        logit = lambda p: np.log(p / (1 - p))   # noqa: E731  (the spec writes logit(s))
        a = sig(logit(s_ref)[:, None, None] + logit(ms_ref)[None])
        np.testing.assert_allclose(m[i].numpy(), (a * f).mean(axis=0), atol=1e-5)


def test_self_attention_matches_formula_and_rows_sum_to_one(feats):
    a = self_attention(feats[0], tau=0.1)
    f = feats[0].double().numpy().reshape(16, -1).T                 # (N, C), row-major
    x = f / np.linalg.norm(f, axis=1, keepdims=True)
    s = x @ x.T / 0.1
    ref = np.exp(s - s.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(a.numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(a.sum(dim=1).numpy(), 1.0, atol=1e-5)
    assert a.shape == (35, 35)


def test_cross_matches_cam_softmax(feats):
    w = torch.randn(2, 16, generator=torch.Generator().manual_seed(3))
    m = cross_map(feats, w)
    for i in range(2):
        f = feats[i].double().numpy()
        s = np.tensordot(w[i].double().numpy(), f, axes=(0, 0)) / np.sqrt(16)
        ref = np.exp(s - s.max())
        np.testing.assert_allclose(m[i].numpy(), ref / ref.sum(), atol=1e-6)
    np.testing.assert_allclose(m.sum(dim=(1, 2)).numpy(), 1.0, atol=1e-5)


def test_constant_feature_map_gives_finite_maps_that_render_as_zeros():
    f = torch.ones(1, 8, 4, 4)
    s = torch.sigmoid(channel_logits(f))
    gate = torch.sigmoid(spatial_logits(f))
    assert torch.isfinite(s).all() and torch.isfinite(gate).all()
    assert np.all(normalise(channel_map(f, s)[0].numpy()) == 0)
    assert np.all(normalise(np.full((3, 3), 7.0)) == 0)


CATS = ["tabby", "tiger cat", "tiger", "Persian cat", "crane", "crane", "jack-o'-lantern", "ox"]


@pytest.mark.parametrize("prompt, expected", [
    ("a photo of a tabby cat", [0]),                 # "cat" alone names nothing
    ("a tiger cat", [1]),                            # longest match wins over "tiger"
    ("a tiger and a tabby", [2, 0]),                 # separate matches: both
    ("Jack-o'-lantern!", [6]),
    ("a crane", [4, 5]),                             # identical names: both classes
    ("boxes", []),                                   # whole words only: no "ox"
    ("a Persian", []),
])
def test_prompt_class_matching(prompt, expected):
    assert match_classes(prompt, CATS) == expected


def test_slug():
    assert slug("A photo of a Tabby cat!") == "a-photo-of-a-tabby-cat"
    assert slug("🐱") == ""


def test_chunked_row_and_received_equal_the_full_matrix(feats):
    from attnviz.kinds.self_attention import row_and_received
    a = self_attention(feats[1], tau=0.2)
    row, received = row_and_received(feats[1], 17, tau=0.2, chunk=4)   # 35 positions, 9 chunks
    np.testing.assert_allclose(row.numpy(), a[17].numpy(), atol=1e-6)
    np.testing.assert_allclose(received.numpy(), a.mean(dim=0).numpy(), atol=1e-6)
