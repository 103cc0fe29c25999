"""Native attention read from the model's own modules, exactly, in the same forward pass."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torchvision.ops import SqueezeExcitation

from attnviz.backbones import load_backbone
from attnviz.pipeline import Analyser
from attnviz.probes.behaviour import GateTap
from tests.conftest import calibrate_bn, photo


def _hooks_left(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _varied(name: str):
    """A random-init torchvision model whose SE gates are not all 0.5 (BN calibrated, wide fc)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone(name, "none", input_size=96, seed=0)
    for m in bb.model.modules():
        if isinstance(m, SqueezeExcitation):
            torch.nn.init.normal_(m.fc1.weight, std=0.3)
            torch.nn.init.normal_(m.fc2.weight, std=0.3)
    calibrate_bn(bb.model, torch.randn(8, 3, 96, 96, generator=torch.Generator().manual_seed(2)))
    return bb


@pytest.mark.parametrize("name, n_gates", [("efficientnet_b0", 16), ("mobilenet_v3_small", 9)])
def test_every_se_gate_equals_its_own_recomputation(name, n_gates):
    bb = _varied(name)
    an = Analyser(bb, ["channel"])
    gates = an.inventory.gates_of("channel")
    assert len(gates) == n_gates and not an.inventory.gates_of("spatial")
    x = an.preprocess([photo(96, 96, 1), photo(120, 80, 2)])
    with torch.no_grad(), GateTap(bb.model, gates) as tap:
        bb.model(x)
    spread = []
    for g in gates:
        se = bb.model.get_submodule(g.name)
        f = tap.inputs[g.name]
        with torch.no_grad():
            ref = se.scale_activation(se.fc2(se.activation(se.fc1(se.avgpool(f))))).flatten(1)
        torch.testing.assert_close(tap.outputs[g.name], ref, atol=1e-6, rtol=0)
        spread.append(float(ref.std()))
    assert max(spread) > 0.05          # the gates really vary: the check could fail
    assert _hooks_left(bb.model) == 0


def test_channel_kind_is_native_on_efficientnet(tmp_path):
    bb = _varied("efficientnet_b0")
    an = Analyser(bb, ["channel", "spatial"])
    (_, maps), = an.analyse_batch([photo(96, 96, 3)])
    channel, spatial = maps
    last = an.inventory.gates_of("channel")[-1]
    assert (channel.provenance, channel.layer) == ("native", last.name)
    assert spatial.provenance == "derived"
    assert len([k for k in channel.extras if k.startswith("gate:")]) == 16
    np.testing.assert_array_equal(channel.weights, channel.extras[f"gate:{last.name}"])
    # the heatmap is Σ_c s_c F_c of the features that gate scales
    se = bb.model.get_submodule(last.name)
    seen = {}
    h = se.register_forward_pre_hook(lambda m, a: seen.setdefault("f", a[0].clone()))
    with torch.no_grad():
        bb.model(an.preprocess([photo(96, 96, 3)]))
    h.remove()
    expected = torch.einsum("chw,c->hw", seen["f"][0], torch.from_numpy(channel.weights))
    np.testing.assert_allclose(channel.data, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_cbam_model_gates_are_native_and_exact():
    from tests.models import cbam_net
    an = Analyser("model:tests.models:cbam_net")
    model = an.backbone.model
    assert an.inventory.native_kinds(False) == {"channel": "stage2.se", "spatial": "stage2.spatial",
                                                "mixed-serial": "stage2.spatial"}
    seen = {}
    gate_mod = model.stage2.spatial
    h1 = gate_mod.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].clone()))
    (_, maps), = an.analyse_batch([photo(70, 50, 4)])
    h1.remove()
    by = {m.name: m for m in maps}
    x = seen["x"]
    with torch.no_grad():
        ref = torch.sigmoid(gate_mod.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))[0, 0]
    np.testing.assert_allclose(by["spatial"].data, ref.numpy(), atol=1e-6)
    np.testing.assert_array_equal(by["mixed-serial"].data, by["spatial"].data)
    assert [by[k].provenance for k in ("channel", "spatial", "mixed-serial", "mixed-parallel")] == \
        ["native", "native", "native", "derived"]
    assert by["spatial"].data.std() > 0.01
    assert isinstance(cbam_net(), torch.nn.Module) and _hooks_left(model) == 0


def _attention_inputs(model, names):
    """The query input of each attention module, by a plain pre-hook (not the probe under test)."""
    seen, handles = {}, []
    for n in names:
        handles.append(model.get_submodule(n).register_forward_pre_hook(
            lambda m, a, n=n: seen.__setitem__(n, a[0].clone())))
    return seen, handles


def test_vit_self_maps_equal_need_weights_and_rollout():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone("vit_b_16", "none", seed=0)
    an = Analyser(bb, ["self"], query=(100.0, 50.0))
    names = [a.name for a in an.inventory.self_attention()]
    assert len(names) == 12
    image = photo(200, 100, 5)
    seen, handles = _attention_inputs(bb.model, names)
    try:
        (preds, maps), = an.analyse_batch([image])
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        ref = [bb.model.get_submodule(n)(seen[n], seen[n], seen[n], need_weights=True,
                                         average_attn_weights=False)[1][0].double().numpy() for n in names]
        bare = torch.softmax(bb.model(an.preprocess([image])), 1)[0]
    by = {m.name: m for m in maps}
    last = ref[-1].mean(axis=0)                                       # (197, 197)
    np.testing.assert_allclose(by["self"].data, last[0, 1:].reshape(14, 14), atol=1e-5)
    np.testing.assert_allclose(by["self"].extras["heads"], ref[-1][:, 0, 1:].reshape(12, 14, 14), atol=1e-5)
    np.testing.assert_allclose(by["self-received"].data, last[:, 1:].mean(axis=0).reshape(14, 14), atol=1e-5)
    r = np.eye(197)
    for a in ref:                                                     # Abnar & Zuidema, first to last
        a_hat = 0.5 * a.mean(axis=0) + 0.5 * np.eye(197)
        r = (a_hat / a_hat.sum(axis=1, keepdims=True)) @ r
    np.testing.assert_allclose(by["self-rollout"].data, r[0, 1:].reshape(14, 14), atol=1e-5)
    cell = by["self-query"].meta["query_cell"]
    assert cell == [7, 7]                                              # (100, 50) on 200×100 → centre
    np.testing.assert_allclose(by["self-query"].data, last[1 + 7 * 14 + 7, 1:].reshape(14, 14), atol=1e-5)
    assert all(m.provenance == "native" for m in maps)
    assert [p.index for p in preds] == bare.topk(5).indices.tolist()
    assert _hooks_left(bb.model) == 0


def test_sdpa_model_self_attention_is_native():
    an = Analyser("model:tests.models:tiny_vit", ["self"])
    model = an.backbone.model
    blk = model.blocks[1]
    seen = {}
    h = blk.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].clone()))
    (_, maps), = an.analyse_batch([photo(64, 64, 6)])
    h.remove()
    x = seen["x"]
    with torch.no_grad():
        q, k, _ = blk.qkv(blk.norm(x)).reshape(1, 17, 3, 4, 8).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1)[0]      # (heads, 17, 17)
    assert maps[0].provenance == "native" and maps[0].layer == "blocks.1"
    np.testing.assert_allclose(maps[0].data, a.mean(0)[0, 1:].reshape(4, 4).numpy(), atol=1e-5)


def test_swin_self_attention_is_native_window_attention():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone("swin_t", "none", seed=0)
    an = Analyser(bb, ["self"], self_layer="features.5.5.attn")
    (_, maps), = an.analyse_batch([photo(112, 112, 7)])
    m = maps[0]
    assert (m.provenance, m.layer, m.shape) == ("native", "features.5.5.attn", (14, 14))
    assert m.extras["heads"].shape == (12, 14, 14)
    np.testing.assert_allclose(m.data.sum(), 1.0, atol=1e-5)          # one query's row over its window
    assert (m.data > 0).sum() == 49                                    # a 7×7 window


def test_derived_only_ignores_the_models_own_modules():
    an = Analyser("model:tests.models:cbam_net", ["channel", "spatial"], native=False)
    (_, maps), = an.analyse_batch([photo(64, 64, 8)])
    assert [(m.provenance, m.layer) for m in maps] == [("derived", "stage2"), ("derived", "stage2")]
