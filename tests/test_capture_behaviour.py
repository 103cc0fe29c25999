"""Capture by behaviour: gates and attention written the usual ways, read exactly, outputs untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnviz.backbones import load_backbone
from attnviz.pipeline import Analyser
from attnviz.probes import capture
from attnviz.probes.behaviour import AttentionCapture
from attnviz.probes.behaviour import BehaviourCapture
from attnviz.probes.locate import locate
from tests.conftest import photo
from tests.models_behaviour import cbam_functional, cbam_modules, eca_b1c, eca_bc11

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def assert_clean(model: nn.Module) -> None:
    """No hook left on any module, and no TorchFunctionMode active."""
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, name
        assert not m._forward_hooks_with_kwargs and not m._forward_pre_hooks_with_kwargs, name
        assert not m._forward_hooks_always_called, name
    assert torch._C._len_torch_function_stack() == 0


def block_input(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the gate block receives, by a test-owned forward of the stem."""
    return net.stem(x)


def cbam_reference(att: nn.Module, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CBAM's channel (B, C) and spatial (B, H, W) gates from its own weights, written out."""
    def mlp(v: torch.Tensor) -> torch.Tensor:   # the shared 1×1-conv MLP as matrix products
        w1, b1 = att.mlp[0].weight[:, :, 0, 0], att.mlp[0].bias
        w2, b2 = att.mlp[2].weight[:, :, 0, 0], att.mlp[2].bias
        return (v @ w1.T + b1).relu() @ w2.T + b2
    s = torch.sigmoid(mlp(f.mean((2, 3))) + mlp(f.amax((2, 3))))            # (B, C)
    g = f * s[:, :, None, None]
    pooled = torch.cat([g.mean(1, keepdim=True), g.amax(1, keepdim=True)], 1)
    m = torch.sigmoid(F.conv2d(pooled, att.conv.weight, att.conv.bias, padding=3))[:, 0]
    return s, m


@pytest.mark.parametrize("factory", [cbam_functional, cbam_modules])
def test_cbam_in_one_module_two_gates_told_apart_and_exact(factory) -> None:
    net = factory()
    inv = locate(net, torch.zeros(1, 3, 64, 64))
    assert [(g.name, g.kind, g.key) for g in inv.gates] == [("att", "channel", "att"), ("att", "spatial", "att#1")]
    assert inv.gates[0].channels == 32 and inv.gates[1].grid == (16, 16)
    with torch.no_grad():
        plain = net(X)
        with capture(net, gates=inv.gates) as cap:
            out = net(X)
        s, m = cbam_reference(net.att, block_input(net, X))
    assert torch.equal(plain, out)
    assert s.std() > 0.1 and m.std() > 0.05                     # not degenerate: the test can fail
    torch.testing.assert_close(cap.gates["att"], s, rtol=0, atol=1e-5)
    torch.testing.assert_close(cap.gates["att#1"], m, rtol=0, atol=1e-5)
    torch.testing.assert_close(cap.gate_inputs["att"], block_input(net, X), rtol=0, atol=0)
    assert "att#1" not in cap.gate_inputs                       # a spatial gate scales s ⊙ F, not F
    assert_clean(net)


@pytest.mark.parametrize("factory", [eca_b1c, eca_bc11])
def test_eca_gate_is_a_channel_gate_and_exact(factory) -> None:
    net = factory()
    inv = locate(net, torch.zeros(1, 3, 64, 64))
    assert [(g.name, g.kind, g.channels) for g in inv.gates] == [("att", "channel", 32)]
    with torch.no_grad(), capture(net, gates=inv.gates) as cap:
        net(X)
        f = block_input(net, X)
        # the 1-D conv over the pooled channel vector, written as a banded matrix product
        k = net.att.conv.weight[0, 0]
        band = sum(k[i] * torch.diag(torch.ones(32 - abs(i - 1)), i - 1) for i in range(3))    # y_c = Σ_i k_i z_{c+i-1}
        ref = torch.sigmoid(f.mean((2, 3)) @ band.T)
    assert ref.std() > 0.05
    torch.testing.assert_close(cap.gates["att"], ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("factory", [cbam_functional, cbam_modules])
def test_run_channel_and_spatial_of_one_module_cbam_native(factory, tmp_path) -> None:
    bb = load_backbone(f"model:tests.models_behaviour:{factory.__name__}", "none")
    an = Analyser(bb, ["channel", "spatial", "mixed-serial"])
    assert an.inventory.native_kinds(False) == {"channel": "att", "spatial": "att#1", "mixed-serial": "att#1"}
    images = [photo(80, 64, seed=1), photo(64, 64, seed=2)]
    (_, maps), _ = an.analyse_batch(images)
    by = {m.name: m for m in maps}
    assert {m.provenance for m in maps} == {"native"}
    x = an.preprocess(images)
    with torch.no_grad():
        f = bb.model.stem(x)
        s, m = cbam_reference(bb.model.att, f)
    assert by["channel"].weights.shape == (32,)
    torch.testing.assert_close(torch.from_numpy(by["channel"].weights), s[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(by["channel"].data),
                               torch.einsum("chw,c->hw", f[0], s[0]), rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(by["spatial"].data), m[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(by["mixed-serial"].data), m[0], rtol=0, atol=1e-5)


def test_logits_equal_and_clean_after_errors() -> None:
    net = cbam_functional()
    inv = locate(net, torch.zeros(1, 3, 64, 64))
    with torch.no_grad():
        plain = net(X)
        with BehaviourCapture(net, gates=inv.gates, attention=True):
            assert torch._C._len_torch_function_stack() == 1
            assert torch.equal(net(X), plain)
    assert_clean(net)
    with pytest.raises(RuntimeError), BehaviourCapture(net, gates=None, attention=True) as cap:
        net(torch.zeros(1, 4, 64, 64))                # wrong channel count: the forward raises
    assert_clean(net)
    assert cap._stack == []
    with pytest.raises(KeyError), capture(net, layers=["stem"], gates=inv.gates):
        raise KeyError("body")
    assert_clean(net)


class TwinAttention(nn.Module):
    """The same projections as an nn.MultiheadAttention, by SDPA or by a hand-written softmax."""

    def __init__(self, mha: nn.MultiheadAttention, how: str) -> None:
        super().__init__()
        self.mha, self.how = mha, how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        h = self.mha.num_heads
        q, k, v = F.linear(x, self.mha.in_proj_weight, self.mha.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, h, e // h).transpose(1, 2) for t in (q, k, v))
        if self.how == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = (q @ k.transpose(-2, -1) * (e // h) ** -0.5).softmax(dim=-1) @ v
        return o.transpose(1, 2).reshape(b, n, e)


class MHAModel(nn.Module):
    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attn = mha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("how", ["sdpa", "softmax"])
def test_behaviour_capture_equals_mha_exact_path(how: str) -> None:
    torch.manual_seed(4)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        with AttentionCapture(MHAModel(mha)) as exact:
            MHAModel(mha)(x)
        twin = TwinAttention(mha, how)
        with AttentionCapture(twin) as seen:
            twin(x)
        _, ref = mha(x, x, x, need_weights=True, average_attn_weights=False)
    assert list(exact.maps) == ["attn"] and list(seen.maps) == [""]
    torch.testing.assert_close(exact.maps["attn"], ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(seen.maps[""], exact.maps["attn"], rtol=0, atol=1e-6)


def test_softmax_elsewhere_is_not_attention() -> None:
    """A classifier softmax (B, K) and a feature softmax over dim 1 are not attention."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softmax(dim=1), nn.Flatten(), nn.LazyLinear(5), nn.Softmax(-1))
    net(torch.zeros(1, 3, 8, 8))
    with AttentionCapture(net) as cap:
        net(torch.zeros(2, 3, 8, 8))
    assert cap.order == [] and not cap.unsupported


class OddBatch(nn.Module):
    """Attention whose batch is no multiple of the images': found, not readable, said why."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # x: (B, N, 8)
        t = self.proj(x).reshape(-1, 2, x.shape[1], 4)[:1]         # one "image" whatever B is
        a = (t @ t.transpose(-2, -1)).softmax(dim=-1)
        return x + (a @ t).mean()


def test_unreadable_attention_is_reported_with_a_reason() -> None:
    model = OddBatch().eval()
    inv = locate(model, torch.zeros(3, 5, 8))
    assert inv.attention == [] and inv.unsupported == [""]
    assert "no multiple of the 3 images" in inv.reasons[""]
    assert inv.notes() == [f"cannot read the model: {inv.reasons['']}"]


class LinearSE(nn.Module):
    """SE with its excitation as nn.Sequential(Linear, ReLU, Linear, Sigmoid) over a (B, C) vector."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.excite = nn.Sequential(nn.Linear(c, c // 4), nn.ReLU(), nn.Linear(c // 4, c), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excite(x.mean((2, 3)))[:, :, None, None]


def test_gate_block_is_the_module_receiving_the_features() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), LinearSE(8)).eval()
    inv = locate(net, torch.zeros(1, 3, 16, 16))
    assert [(g.name, g.activation, g.kind, g.channels, g.grid) for g in inv.gates] == \
        [("1", "1.excite.3", "channel", 8, (14, 14))]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), capture(net, gates=inv.gates) as cap:
        net(x)
        f = net[0](x)
        e = net[1].excite
        ref = torch.sigmoid(e[2](e[0](f.mean((2, 3))).relu()))
    torch.testing.assert_close(cap.gates["1"], ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(cap.gate_inputs["1"], f, rtol=0, atol=0)
