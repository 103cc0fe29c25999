"""AttentionCapture reads the model's own attention exactly and leaves the model as it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import swin_transformer
from torchvision.models.vision_transformer import VisionTransformer

from attnviz.probes.attention import (
    cls_attention, find_attention_modules, query_attention, received_attention, rollout,
)
from attnviz.probes.behaviour import AttentionCapture

SDPA = F.scaled_dot_product_attention
SWIN_FN = swin_transformer.shifted_window_attention


def assert_clean(model: nn.Module) -> None:
    """No hook of any kind left on any module, and every patched function restored."""
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, name
        assert not m._forward_hooks_with_kwargs and not m._forward_pre_hooks_with_kwargs, name
        assert not m._forward_hooks_always_called, name
    assert F.scaled_dot_product_attention is SDPA
    assert swin_transformer.shifted_window_attention is SWIN_FN
    assert torch._C._len_torch_function_stack() == 0          # the capture's mode is off


def mha_inputs(model: nn.Module) -> tuple[dict[str, torch.Tensor], list]:
    """Test-owned plain hooks that store each MultiheadAttention's query input."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            handles.append(m.register_forward_pre_hook(lambda mod, args, n=name: seen.__setitem__(n, args[0])))
    return seen, handles


@pytest.fixture(scope="module")
def vit_b16() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vit_b_16(weights=None).eval()


@pytest.fixture
def tiny_vit() -> nn.Module:
    torch.manual_seed(1)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16,
                             mlp_dim=32, num_classes=5).eval()


def test_vit_b16_every_layer_equals_need_weights_and_logits_bit_identical(vit_b16: nn.Module) -> None:
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    seen, handles = mha_inputs(vit_b16)
    with torch.no_grad():
        plain = vit_b16(x)
    for h in handles:
        h.remove()
    with torch.no_grad(), AttentionCapture(vit_b16) as cap:
        captured = vit_b16(x)
    cap.require()
    assert torch.equal(plain, captured)
    layers = [n for n, _ in find_attention_modules(vit_b16)]
    assert len(layers) == 12 and cap.order == layers == list(cap.maps)
    assert layers[-1] == "encoder.layers.encoder_layer_11.self_attention"
    mods = dict(vit_b16.named_modules())
    for name in layers:
        q = seen[name]
        with torch.no_grad():
            _, ref = mods[name](q, q, q, need_weights=True, average_attn_weights=False)  # (B, 12, 197, 197)
        got = cap.maps[name]
        assert got.shape == (2, 12, 197, 197) and got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(got.sum(-1), torch.ones(2, 12, 197), rtol=0, atol=1e-5)
    assert not cap.unsupported
    assert_clean(vit_b16)


def test_grad_mode_slow_path_captured_once_and_outputs_identical(tiny_vit: nn.Module) -> None:
    # with grad enabled MHA runs F.multi_head_attention_forward, which calls (patched) F.sdpa
    x = torch.randn(2, 3, 32, 32)
    plain = tiny_vit(x)
    with AttentionCapture(tiny_vit) as cap:
        captured = tiny_vit(x)
    assert torch.equal(plain, captured)
    assert cap.order == [n for n, _ in find_attention_modules(tiny_vit)]  # no second entry via sdpa
    assert not any(w.requires_grad for w in cap.maps.values())
    assert_clean(tiny_vit)


def test_hooks_removed_when_forward_raises(vit_b16: nn.Module) -> None:
    def boom(*_: object) -> None:
        raise ValueError("boom")

    handle = vit_b16.encoder.layers.encoder_layer_5.register_forward_hook(boom)
    try:
        with pytest.raises(ValueError, match="boom"), torch.no_grad(), AttentionCapture(vit_b16) as cap:
            vit_b16(torch.randn(1, 3, 224, 224))
    finally:
        handle.remove()
    assert len(cap.maps) == 6  # layers 0..5 ran before the error
    assert_clean(vit_b16)


def test_exception_in_body_propagates_and_cleans(tiny_vit: nn.Module) -> None:
    with pytest.raises(KeyError), AttentionCapture(tiny_vit):
        tiny_vit(torch.randn(1, 3, 32, 32))
        raise KeyError("body")
    assert_clean(tiny_vit)


def test_names_restrict_and_unknown_name_fails(tiny_vit: nn.Module) -> None:
    name = "encoder.layers.encoder_layer_1.self_attention"
    with torch.no_grad(), AttentionCapture(tiny_vit, names=[name]) as cap:
        tiny_vit(torch.randn(1, 3, 32, 32))
    assert list(cap.maps) == [name]
    with pytest.raises(ValueError, match="no modules named"), AttentionCapture(tiny_vit, names=["nope"]):
        pass
    assert_clean(tiny_vit)


def test_second_forward_is_suffixed(tiny_vit: nn.Module) -> None:
    with torch.no_grad(), AttentionCapture(tiny_vit) as cap:
        tiny_vit(torch.randn(1, 3, 32, 32))
        tiny_vit(torch.randn(1, 3, 32, 32))
    assert len(cap.order) == 6 and cap.order[3] == "encoder.layers.encoder_layer_0.self_attention#1"


def test_nothing_captured_fails_loudly() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with AttentionCapture(cnn) as cap:
        cnn(torch.randn(1, 3, 8, 8))
    assert cap.maps == {}
    with pytest.raises(RuntimeError, match="recorded nothing"):
        cap.require()
    assert_clean(cnn)


class CrossAttn(nn.Module):
    """Calls a MultiheadAttention the way a model would, without asking for weights."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attn = mha

    def forward(self, q, k, v, **kw):
        return self.attn(q, k, v, need_weights=False, **kw)[0]


@pytest.mark.parametrize("extra", [{}, {"add_bias_kv": True, "add_zero_attn": True}])
@pytest.mark.parametrize("bool_masks", [True, False])
def test_mha_separate_proj_sequence_first_with_masks(extra: dict, bool_masks: bool) -> None:
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(8, 2, kdim=5, vdim=7, batch_first=False, **extra).eval()
    assert not mha._qkv_same_embed_dim
    model = CrossAttn(mha)
    L, S, B = 4, 6, 3
    q, k, v = torch.randn(L, B, 8), torch.randn(S, B, 5), torch.randn(S, B, 7)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[0, -2:] = True
    pad[2, 0] = True
    mask = torch.rand(L, S) > 0.7
    mask[:, 1] = False  # every query keeps at least one key
    if not bool_masks:
        pad = torch.zeros(B, S).masked_fill(pad, float("-inf"))
        mask = torch.randn(L, S)
    kw = dict(key_padding_mask=pad, attn_mask=mask)
    plain = model(q, k, v, **kw)
    with AttentionCapture(model) as cap:
        captured = model(q, k, v, **kw)
    assert torch.equal(plain, captured)
    _, ref = mha(q, k, v, need_weights=True, average_attn_weights=False, **kw)
    got = cap.maps["attn"]
    assert got.shape == ref.shape == (B, 2, L, S + 2 * bool(extra))
    torch.testing.assert_close(got, ref.detach(), rtol=0, atol=1e-6)
    assert got[0, :, :, S - 2:S].abs().max() == 0  # padded keys get no weight
    assert_clean(model)


def test_mha_batch_first_unbatched_input() -> None:
    torch.manual_seed(4)
    mha = nn.MultiheadAttention(8, 4, batch_first=True).eval()
    model = CrossAttn(mha)
    x = torch.randn(5, 8)  # unbatched (L, E)
    with AttentionCapture(model) as cap:
        model(x, x, x)
    _, ref = mha(x, x, x, need_weights=True, average_attn_weights=False)  # (heads, L, S)
    torch.testing.assert_close(cap.maps["attn"], ref.detach().unsqueeze(0), rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_transformer_encoder_read_and_nested_fast_path_reported() -> None:
    torch.manual_seed(5)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        plain = enc(x)
        with AttentionCapture(enc) as cap:  # torch skips its fused layer kernel while hooks exist
            captured = enc(x)
        _, ref = enc.layers[0].self_attn(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(captured, plain, rtol=0, atol=1e-6)
    assert cap.order == ["layers.0.self_attn", "layers.1.self_attn"] and not cap.unsupported
    torch.testing.assert_close(cap.maps["layers.0.self_attn"], ref, rtol=0, atol=1e-6)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, -2:] = True
    with torch.no_grad():
        plain = enc(x, src_key_padding_mask=pad)
        # the capture's TorchFunctionMode keeps torch off the nested-tensor fast path: readable
        with AttentionCapture(enc) as cap:
            captured = enc(x, src_key_padding_mask=pad)
        _, ref = enc.layers[0].self_attn(x, x, x, key_padding_mask=pad, need_weights=True,
                                         average_attn_weights=False)
    torch.testing.assert_close(captured[~pad], plain[~pad], rtol=0, atol=1e-5)
    assert cap.order == ["layers.0.self_attn", "layers.1.self_attn"] and not cap.unsupported
    torch.testing.assert_close(cap.maps["layers.0.self_attn"], ref, rtol=0, atol=1e-6)
    assert cap.maps["layers.0.self_attn"][0, :, :, -2:].abs().max() == 0   # padded keys: no weight
    assert_clean(enc)


class FusedAttn(nn.Module):
    """timm-style attention: qkv projection, F.scaled_dot_product_attention, projection."""

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None, twice: bool = False, **sdpa_kw) -> None:
        super().__init__()
        self.h, self.kvh, self.d = heads, kv_heads or heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * self.kvh * self.d)
        self.proj = nn.Linear(dim, dim)
        self.twice, self.sdpa_kw = twice, sdpa_kw
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.h, self.d).transpose(1, 2)  # (B, h, N, d)
        k, v = self.kv(x).view(B, N, 2, self.kvh, self.d).permute(2, 0, 3, 1, 4)  # (B, kvh, N, d)
        self.seen.append((q.detach(), k.detach()))
        out = F.scaled_dot_product_attention(q, k, v, **self.sdpa_kw)
        if self.twice:
            self.seen.append((q.detach(), k.detach()))
            out = out + F.scaled_dot_product_attention(q, k, v, **self.sdpa_kw)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class TinyTimm(nn.Module):
    def __init__(self, **kw) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(16), FusedAttn(16, 4, **kw)) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + b(x)
        return x


def explicit(q: torch.Tensor, k: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ scale) with disallowed positions (mask False) removed, in float64."""
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * scale
    if mask is not None:
        s = torch.where(mask, s, torch.tensor(float("-inf"), dtype=torch.float64))
    return torch.softmax(s, -1).float()


N = 6
CAUSAL = torch.ones(N, N, dtype=torch.bool).tril()
BOOL_MASK = torch.rand(N, N, generator=torch.Generator().manual_seed(6)) > 0.5
BOOL_MASK[:, 0] = True


@pytest.mark.parametrize("kw,scale,mask", [
    ({}, 0.5, None),
    ({"attn_mask": BOOL_MASK}, 0.5, BOOL_MASK),
    ({"is_causal": True}, 0.5, CAUSAL),
    ({"scale": 0.123, "is_causal": True}, 0.123, CAUSAL),
    ({"enable_gqa": True, "kv_heads": 2}, 0.5, None),
])
def test_sdpa_capture_equals_explicit_softmax(kw: dict, scale: float, mask: torch.Tensor | None) -> None:
    torch.manual_seed(7)
    model = TinyTimm(**kw).eval()
    x = torch.randn(2, N, 16)
    with torch.no_grad():
        plain = model(x)
        with AttentionCapture(model) as cap:
            captured = model(x)
    assert torch.equal(plain, captured)
    assert cap.order == ["blocks.0.1", "blocks.1.1"]
    for i in range(2):
        q, k = model.blocks[i][1].seen[-1]
        if k.shape[1] != q.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        torch.testing.assert_close(cap.maps[f"blocks.{i}.1"], explicit(q, k, scale, mask), rtol=0, atol=1e-6)
    assert_clean(model)


def test_sdpa_float_mask_and_repeated_calls_get_counter() -> None:
    torch.manual_seed(8)
    bias = torch.randn(N, N)
    model = TinyTimm(twice=True, attn_mask=bias).eval()
    with torch.no_grad(), AttentionCapture(model) as cap:
        model(torch.randn(1, N, 16))
    assert cap.order == ["blocks.0.1", "blocks.0.1#1", "blocks.1.1", "blocks.1.1#1"]
    q, k = model.blocks[1][1].seen[-1]
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * 0.5 + bias.double()
    torch.testing.assert_close(cap.maps["blocks.1.1#1"], torch.softmax(s, -1).float(), rtol=0, atol=1e-6)


def test_sdpa_restored_after_error_and_outside_calls_ignored() -> None:
    model = TinyTimm().eval()
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(RuntimeError), AttentionCapture(model) as cap:
        assert torch._C._len_torch_function_stack() == 1       # the capture's mode is on
        F.scaled_dot_product_attention(q, q, q)  # not inside the model: not recorded
        model(torch.randn(1, N, 15))  # wrong width: the forward raises
    assert cap.order == []
    assert_clean(model)


@pytest.mark.parametrize("factory,size", [(torchvision.models.swin_t, (100, 132)),
                                          (torchvision.models.swin_v2_t, (96, 96))])
def test_swin_window_attention_is_exact(monkeypatch: pytest.MonkeyPatch, factory, size) -> None:
    torch.manual_seed(9)
    model = factory(weights=None).eval()
    x = torch.randn(2, 3, *size)
    oracle: list[torch.Tensor] = []  # torchvision's own softmax outputs, recorded in a separate run
    softmax = F.softmax
    monkeypatch.setattr(F, "softmax", lambda t, *a, **k: oracle.append(softmax(t, *a, **k)) or oracle[-1])
    with torch.no_grad():
        plain = model(x)
    monkeypatch.undo()
    with torch.no_grad(), AttentionCapture(model) as cap:
        captured = model(x)
    cap.require()
    assert torch.equal(plain, captured)
    names = [n for n, m in find_attention_modules(model) if isinstance(m, swin_transformer.ShiftedWindowAttention)]
    assert cap.order == names == list(cap.windows) and len(names) == 12 and not cap.maps
    assert len(oracle) == 12
    for name, ref in zip(names, oracle):
        w = cap.windows[name]
        assert w.weights.dtype == torch.float32
        torch.testing.assert_close(w.weights.reshape(ref.shape), ref, rtol=0, atol=1e-6)
    assert not cap.unsupported
    assert_clean(model)


def test_swin_query_map_places_the_window() -> None:
    torch.manual_seed(10)
    model = torchvision.models.swin_t(weights=None).eval()
    with torch.no_grad(), AttentionCapture(model) as cap:
        model(torch.randn(1, 3, 224, 224))
    plain, shifted = cap.windows["features.1.0.attn"], cap.windows["features.1.1.attn"]
    assert plain.grid == (56, 56) and plain.shift == (0, 0) and shifted.shift == (3, 3)
    for w, box in ((plain, (slice(7, 14), slice(7, 14))), (shifted, (slice(10, 17), slice(10, 17)))):
        m = w.query_map(10, 10)  # (1, 3, 56, 56)
        support = torch.zeros(56, 56, dtype=torch.bool)
        support[box] = True
        assert torch.equal((m[0, 0] > 1e-20), support)
        torch.testing.assert_close(m.sum((-2, -1)), torch.ones(1, 3))
    # (55, 55) shares its shifted window with rows/cols 0..2 (wrapped), but the -100 region mask
    # keeps it to the 4x4 corner block
    edge = shifted.query_map(55, 55)[0, 0]
    support = torch.zeros(56, 56, dtype=torch.bool)
    support[52:, 52:] = True
    assert torch.equal(edge > 1e-20, support)
    assert edge.sum() > 0.999


def rollout_reference(layers: list[np.ndarray]) -> np.ndarray:
    """Rollout in float64 NumPy with explicit loops over batch and layers."""
    B, _, n, _ = layers[0].shape
    out = np.zeros((B, n, n))
    for b in range(B):
        joint = np.eye(n)
        for A in layers:
            a = np.zeros((n, n))
            for h in range(A.shape[1]):
                a += A[b, h] / A.shape[1]
            a = 0.5 * a + 0.5 * np.eye(n)
            a = a / a.sum(axis=1, keepdims=True)
            joint = a.dot(joint)
        out[b] = joint
    return out


def test_rollout_matches_reference_and_identity() -> None:
    g = torch.Generator().manual_seed(11)
    layers = [torch.softmax(torch.randn(2, 3, 5, 5, generator=g) * 3, -1) for _ in range(4)]
    got = rollout(layers)
    assert got.shape == (2, 5, 5) and got.dtype == torch.float32
    ref = rollout_reference([a.double().numpy() for a in layers])
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6)
    assert not np.allclose(rollout(layers[::-1]).numpy(), ref, atol=1e-3)  # order matters
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 5))
    eye = torch.eye(7).expand(1, 4, 7, 7)
    assert torch.equal(rollout([eye, eye, eye]), torch.eye(7).expand(1, 7, 7))
    with pytest.raises(ValueError):
        rollout([])


def test_cls_query_received_attention() -> None:
    A = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    assert cls_attention(A).shape == (2, 4)
    torch.testing.assert_close(cls_attention(A), (A[:, 0, 0, 1:] + A[:, 1, 0, 1:] + A[:, 2, 0, 1:]) / 3)
    torch.testing.assert_close(query_attention(A, 2), A[:, :, 2, :].mean(1))
    torch.testing.assert_close(cls_attention(rollout([A])), rollout([A])[:, 0, 1:])
    torch.testing.assert_close(received_attention(A, prefix=1), A.mean(1).mean(1)[:, 1:])


def test_training_mode_dropout_untouched_and_weights_before_dropout() -> None:
    torch.manual_seed(12)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                              mlp_dim=32, dropout=0.3, attention_dropout=0.5).train()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(13)
    plain = model(x)
    torch.manual_seed(13)
    with AttentionCapture(model) as cap:
        captured = model(x)
    assert torch.equal(plain, captured)  # the capture draws no random numbers
    assert model.training
    for w in cap.maps.values():  # read before attention dropout: still row-stochastic
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 17))


def test_sdpa_fully_masked_row_is_zero_not_nan() -> None:
    mask = torch.ones(N, N, dtype=torch.bool)
    mask[2] = False
    model = TinyTimm(attn_mask=mask).eval()
    with torch.no_grad(), AttentionCapture(model) as cap:
        model(torch.randn(1, N, 16))
    w = cap.maps["blocks.0.1"]
    assert not w.isnan().any() and w[:, :, 2].abs().max() == 0
    torch.testing.assert_close(w[:, :, 3].sum(-1), torch.ones(1, 4))
