"""timm and Hugging Face models, random-init and tiny: every native map equals a reference from
the module's own weights (or the library's own `output_attentions`), logits untouched."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from attnviz.backbones import load_backbone
from attnviz.pipeline import Analyser
from attnviz.probes import capture
from attnviz.probes.behaviour import AttentionCapture
from attnviz.probes.locate import locate
from tests.conftest import calibrate_bn, photo
from tests.models_behaviour import timm_swin, timm_vit
from tests.test_capture_behaviour import assert_clean

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

X64 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))


def io_hooks(model: nn.Module, names: list[str]) -> tuple[dict, list]:
    """Test-owned hooks keeping each named module's (args, kwargs, output)."""
    seen: dict[str, tuple] = {}
    copy = lambda t: t.clone() if isinstance(t, torch.Tensor) else t   # noqa: E731  (later in-place ops)

    def keep(m: nn.Module, a: tuple, k: dict, o, n: str) -> None:
        seen[n] = (tuple(map(copy, a)), {key: copy(v) for key, v in k.items()}, copy(o))
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, a, k, o, n=n: keep(m, a, k, o, n), with_kwargs=True) for n in names]
    return seen, handles


# -- gates ----------------------------------------------------------------------------------------
TIMM_GATES = [
    ("seresnet18", {}, {"channel"}),
    ("ecaresnet26t", {}, {"channel"}),
    ("regnety_002", {}, {"channel"}),
    ("resnet18", {"block_args": {"attn_layer": "cbam"}}, {"channel", "spatial", "mixed-serial"}),
]


@pytest.mark.parametrize("name,kw,native", TIMM_GATES, ids=[t[0] + ("-cbam" if t[1] else "") for t in TIMM_GATES])
def test_timm_gates_native_and_exact(name: str, kw: dict, native: set[str]) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kw)
    for m in model.modules():     # timm zero-inits each block's last BN: gates would sit at 0.5
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    for g_name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and ".se" in g_name:
            nn.init.normal_(m.weight, std=0.5)
    calibrate_bn(model, torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    inv = locate(model, torch.zeros(1, 3, 64, 64))
    assert set(inv.native_kinds(False)) == native
    blocks = [g.name for g in inv.gates]
    assert len(set(blocks)) == len(blocks) and len(blocks) >= 4
    seen, handles = io_hooks(model, blocks)
    try:
        with torch.no_grad():
            plain = model(X64)
            with capture(model, gates=inv.gates) as cap:
                out = model(X64)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(plain, out)
    assert_clean(model)
    spread = []
    for g in inv.gates:   # every timm gate block returns x * gate: the gate is output / input
        (x,), _, y = seen[g.name]
        ok = x.abs() > 1e-2
        ratio = torch.where(ok, y / x.where(ok, torch.ones_like(x)), torch.nan)
        ref = ratio.nanmedian(dim=-1).values.nanmedian(dim=-1).values if g.kind == "channel" \
            else ratio.nanmedian(dim=1).values                       # (B, C) or (B, H, W)
        got = cap.gates[g.key]
        torch.testing.assert_close(got[~ref.isnan()], ref[~ref.isnan()], rtol=0, atol=1e-5)
        if g.kind == "channel":
            torch.testing.assert_close(cap.gate_inputs[g.key], x, rtol=0, atol=0)
        spread.append(float(got.std()))
    assert max(spread) > 0.01                                       # not every gate saturated


# -- ViT ------------------------------------------------------------------------------------------
def timm_vit_reference(model: nn.Module, seen: dict) -> dict[str, torch.Tensor]:
    """softmax(q kᵀ · scale) from each block's own qkv projection and its recorded input."""
    out = {}
    for i, blk in enumerate(model.blocks):
        (x,), _, _ = seen[f"blocks.{i}.attn"]
        a = blk.attn
        b, n, c = x.shape
        qkv = a.qkv(x).reshape(b, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
        q, k = a.q_norm(qkv[0]), a.k_norm(qkv[1])
        out[f"blocks.{i}.attn"] = torch.softmax(q.double() @ k.double().transpose(-2, -1) * a.scale, -1).float()
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_timm_vit_fused_and_unfused_exact(fused: bool) -> None:
    model = timm_vit(fused)
    names = ["blocks.0.attn", "blocks.1.attn"]
    seen, handles = io_hooks(model, names)
    try:
        with torch.no_grad():
            plain = model(X32)
            with AttentionCapture(model) as cap:
                out = model(X32)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(plain, out) and cap.order == names and not cap.unsupported
    for name, ref in timm_vit_reference(model, seen).items():
        assert cap.maps[name].shape == (2, 2, 17, 17)
        torch.testing.assert_close(cap.maps[name], ref, rtol=0, atol=1e-5)
    assert_clean(model)


def test_timm_vit_unfused_through_model_infers_tokens_and_draws_native() -> None:
    bb = load_backbone("model:tests.models_behaviour:timm_vit_unfused", "none")
    assert bb.tokens == (1, (4, 4)) and any("inferred" in n for n in bb.notes)
    assert bb.layers[bb.default_layer].layout.kind == "NLC"          # a block, not the patch conv
    an = Analyser(bb, ["self"])
    assert an.inventory.native_kinds(True)["self"] == "blocks.1.attn"
    images = [photo(40, 32, seed=3)]
    (_, maps), = an.analyse_batch(images)
    seen, handles = io_hooks(bb.model, ["blocks.0.attn", "blocks.1.attn"])
    try:
        with torch.no_grad():
            bb.model(an.preprocess(images))
    finally:
        for h in handles:
            h.remove()
    ref = timm_vit_reference(bb.model, seen)["blocks.1.attn"]
    self_map = next(m for m in maps if m.name == "self")
    assert self_map.provenance == "native"
    torch.testing.assert_close(torch.from_numpy(self_map.data), ref[0, :, 0, 1:].mean(0).reshape(4, 4),
                               rtol=0, atol=1e-5)


def hf_vit(impl: str) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10)
    return transformers.ViTForImageClassification._from_config(cfg, attn_implementation=impl).eval()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_hf_vit_equals_output_attentions(impl: str) -> None:
    eager = hf_vit("eager")
    model = hf_vit(impl)
    model.load_state_dict(eager.state_dict())
    with torch.no_grad():
        ref = eager(pixel_values=X32, output_attentions=True).attentions
        plain = model(pixel_values=X32).logits
        with AttentionCapture(model) as cap:
            out = model(pixel_values=X32).logits
    assert torch.equal(plain, out) and len(cap.order) == 2 and not cap.unsupported
    for name, r in zip(cap.order, ref):
        torch.testing.assert_close(cap.maps[name], r, rtol=0, atol=1e-5)
    assert_clean(model)


def test_hf_vit_through_model_modeloutput_and_inferred_tokens() -> None:
    bb = load_backbone("model:tests.models_behaviour:hf_vit_eager", "none")
    assert bb.tokens == (1, (4, 4))
    an = Analyser(bb, ["self", "channel"])
    (_, maps), = an.analyse_batch([photo(32, 32, seed=4)])
    by = {m.name: m for m in maps}
    assert by["self"].provenance == "native" and by["channel"].provenance == "derived"
    with torch.no_grad():
        ref = bb.model(pixel_values=an.preprocess([photo(32, 32, seed=4)]), output_attentions=True).attentions[-1]
    torch.testing.assert_close(torch.from_numpy(by["self"].data), ref[0, :, 0, 1:].mean(0).reshape(4, 4),
                               rtol=0, atol=1e-5)


# -- Swin -----------------------------------------------------------------------------------------
def in_window(y: int, x: int, shift: tuple[int, int], window: tuple[int, int], grid: tuple[int, int]
              ) -> torch.Tensor:
    """(H, W) mask of the tokens in the same shifted window as (y, x), from first principles."""
    rows = torch.arange(grid[0])[:, None]
    cols = torch.arange(grid[1])[None, :]
    same_r = ((rows - shift[0]) % grid[0]) // window[0] == ((y - shift[0]) % grid[0]) // window[0]
    same_c = ((cols - shift[1]) % grid[1]) // window[1] == ((x - shift[1]) % grid[1]) // window[1]
    return same_r & same_c


def check_windows(cap, expected_windows: dict[int, int]) -> None:
    """Per-stage window counts, rows summing to 1, and every query's weights inside its window."""
    for name, wa in cap.windows.items():
        stage = int(name.split(".")[-4])
        assert wa.weights.shape[1] == expected_windows[stage], name
        torch.testing.assert_close(wa.weights.sum(-1), torch.ones_like(wa.weights.sum(-1)))
        for y, x in [(0, 0), (1, 2), (wa.grid[0] - 1, wa.grid[1] - 1), (wa.grid[0] // 2, 1)]:
            m = wa.query_map(y, x)                                        # (B, heads, H, W)
            outside = ~in_window(y, x, wa.shift, wa.window, wa.grid)
            assert m[..., outside].abs().max() == 0, (name, y, x)
            torch.testing.assert_close(m.sum((-2, -1)), torch.ones(m.shape[:2]))


@pytest.mark.parametrize("fused", [True, False])
def test_timm_swin_windows_per_stage_exact(fused: bool) -> None:
    model = timm_swin(fused)
    names = [n for n, m in model.named_modules() if type(m).__name__ == "WindowAttention"]
    seen, handles = io_hooks(model, names)
    try:
        with torch.no_grad():
            plain = model(X32)
            with AttentionCapture(model) as cap:
                out = model(X32)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(plain, out) and cap.order == names and not cap.maps and not cap.unsupported
    check_windows(cap, {0: 16, 1: 4})
    assert [cap.windows[n].shift for n in names] == [(0, 0), (2, 2), (0, 0), (2, 2)]
    for name in names:   # softmax(q kᵀ scale + relative bias + shift mask), from the module's weights
        a = model.get_submodule(name)
        (x, *rest), kw, _ = seen[name]
        mask = kw.get("mask", rest[0] if rest else None)
        b_, n, c = x.shape
        qkv = a.qkv(x).reshape(b_, n, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
        s = (qkv[0] * a.scale) @ qkv[1].transpose(-2, -1) + a._get_rel_pos_bias()
        nw = b_ // 2
        s = s.view(2, nw, a.num_heads, n, n) + (0 if mask is None else mask[None, :, None])
        torch.testing.assert_close(cap.windows[name].weights, s.softmax(-1), rtol=0, atol=1e-5)
    assert_clean(model)


def test_timm_swin_fused_through_model_no_crash_and_inspect_agrees() -> None:
    bb = load_backbone("model:tests.models_behaviour:timm_swin_fused", "none")
    an = Analyser(bb, ["self"])
    native = an.inventory.native_kinds(bb.tokens is not None)
    assert native == {"self": "layers.1.blocks.1.attn"}
    (_, maps), = an.analyse_batch([photo(32, 32, seed=5)])
    assert [(m.name, m.provenance, m.layer) for m in maps] == [("self", "native", "layers.1.blocks.1.attn")]
    assert maps[0].data.shape == (8, 8)                 # the last stage's own token grid
    y, x = maps[0].meta["query_cell"]
    outside = ~in_window(y, x, (2, 2), (4, 4), (8, 8))      # its last block is shifted by 2
    assert maps[0].data[outside.numpy()].max() == 0 and abs(maps[0].data.sum() - 1) < 1e-5


def hf_swin(impl: str) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                                  window_size=4, num_labels=10)
    return transformers.SwinForImageClassification._from_config(cfg, attn_implementation=impl).eval()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_hf_swin_equals_output_attentions(impl: str) -> None:
    eager = hf_swin("eager")
    model = hf_swin(impl)
    model.load_state_dict(eager.state_dict())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = eager(pixel_values=X32, output_attentions=True).attentions
        plain = model(pixel_values=X32).logits
        with AttentionCapture(model) as cap:
            out = model(pixel_values=X32).logits
    assert torch.equal(plain, out) and len(cap.order) == 4 and not cap.maps and not cap.unsupported
    check_windows(cap, {0: 16, 1: 4})
    for i, r in enumerate(ref):     # HF gives the last block of each stage, (B·nW, heads, T, T)
        w = cap.windows[f"swin.encoder.layers.{i}.blocks.1.attention"].weights
        torch.testing.assert_close(w, r.reshape(w.shape), rtol=0, atol=1e-5)
    assert_clean(model)
