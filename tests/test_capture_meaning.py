"""Each captured call called what it is: no gate on the model's output, a global-context softmax as a
spatial gate, MaxViT's grid partition drawn where its tokens are, the demo's cross-attention not
"unreadable", and images resized with the weights' own interpolation."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from attnviz.pipeline import Analyser, find_attention
from attnviz.probes import capture
from attnviz.probes.behaviour import AttentionCapture
from attnviz.probes.locate import classify, locate
from tests.conftest import photo
from tests.test_capture_behaviour import assert_clean
from tests.zoo_native import softmax_recorder

timm = pytest.importorskip("timm")
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))


class MultiLabel(nn.Module):
    """A classifier whose forward ends in torch.sigmoid(logits): B×3 multi-label output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.stem(x).mean((2, 3))))


def test_a_final_sigmoid_is_no_gate() -> None:
    inv = locate(MultiLabel().eval(), torch.zeros(1, 3, 32, 32))
    assert inv.gates == [] and inv.plan().native == {}


class GCNet(nn.Module):
    """A conv stem and one timm GlobalContext block (softmax over H·W, then an additive MLP)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, stride=4, padding=1)
        self.gc = timm.layers.GlobalContext(16, fuse_add=True, fuse_scale=False)
        nn.init.normal_(self.gc.conv_attn.weight, std=1.0)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gc(self.stem(x)).mean((2, 3)))


def test_global_context_softmax_is_a_native_spatial_gate_and_exact() -> None:
    net = GCNet().eval()
    inv = locate(net, torch.zeros(1, 3, 64, 64))
    assert [(g.key, g.kind, g.grid, g.op) for g in inv.gates] == [("gc", "spatial", (16, 16), "softmax")]
    assert inv.plan().native == {"spatial": "gc"} and not inv.attention    # not also "attention"
    with torch.no_grad():
        plain = net(X)
        with capture(net, gates=inv.gates) as cap:
            out = net(X)
        f = net.stem(X)
        ref = torch.softmax(net.gc.conv_attn(f).reshape(2, 1, -1), dim=-1).reshape(2, 16, 16)
    assert torch.equal(plain, out) and ref.std() > ref.mean() * 0.1        # not uniform: the test can fail
    torch.testing.assert_close(cap.gates["gc"], ref, rtol=0, atol=1e-7)
    assert_clean(net)


def test_maxvit_grid_partition_drawn_where_its_tokens_are() -> None:
    torch.manual_seed(0)
    model = timm.create_model("maxvit_nano_rw_256", pretrained=False, img_size=128).eval()
    name = "stages.0.blocks.0.attn_grid.attn"
    x = X[:1, :, :, :].repeat(1, 1, 2, 2)                                  # (1, 3, 128, 128)
    with torch.no_grad(), AttentionCapture(model, [name]) as cap:
        model(x)
    wa = cap.windows[name]
    ps = wa.window                                                         # timm scales it with img_size
    assert wa.layout == "dilated" and wa.grid == (32, 32) and ps == tuple(model.get_submodule(
        name.rpartition(".")[0]).partition_size) and ps[0] < 32
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    with torch.no_grad(), softmax_recorder(model.get_submodule(name)) as seen:
        model(x)
    ref = seen[-1].double().mean(1)                                        # (nW, T, T), one image
    # where each (window, token) lies: timm's own grid_partition of an index map (B, H, W, 1)
    idx = torch.arange(32 * 32, dtype=torch.float64).reshape(1, 32, 32, 1)
    t = ps[0] * ps[1]
    where = timm.models.maxxvit.grid_partition(idx, list(ps)).reshape(ref.shape[0], t).long()
    full = torch.zeros(32 * 32, 32 * 32, dtype=torch.float64)
    for g in range(ref.shape[0]):
        full[where[g][:, None], where[g][None, :]] = ref[g]
    for y, xq in [(0, 0), (5, 7), (31, 30), (16, 3)]:
        got = wa.query_map(y, xq)[0].double().mean(0)                      # (H, W)
        expect = full[y * 32 + xq].reshape(32, 32)
        assert (got - expect).abs().max() <= 1e-4 * expect.max()
        assert (expect > 0).sum() == t and (got > 0).sum() == t            # dilated: one cell in every stride


def test_cross_only_with_queries_that_are_not_keys() -> None:
    assert classify(4, 1, 197, (1, 197, 64))[0] == "class-attention"      # CaiT / XCiT
    assert classify(8, 49, 196, (1, 196, 64))[0] == "reduction-attention"  # LeViT downsampling
    assert classify(2, 3136, 49, (1, 3136, 32))[0] == "reduction-attention"  # PVT spatial reduction
    assert classify(1, 4, 256, (1, 64, 4, 256))[0] == "linear-attention"   # MobileViTv2
    assert classify(4, 32, 32, (1, 197, 128))[0] == "channel-attention"    # XCiT XCA
    assert classify(1, 8, 576, (1, 8, 64), cross=True)[0] == "cross-attention"


def test_demo_cross_attention_is_native_and_not_called_unreadable() -> None:
    bb, inv = find_attention("demo", "DEFAULT")
    assert inv.unsupported == [] and not any("nested" in n for n in inv.plan().notes)
    an = Analyser(bb, ["cross", "self"], align=False)
    assert an.plan.native["cross"] and an.plan.native["self"]
    (_, maps), = an.analyse_batch([photo(96, 96, seed=1)])
    assert {m.kind for m in maps if m.provenance == "native"} == set(an.plan.native)


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "resnet18"])
def test_resizing_uses_the_weights_interpolation_like_timm(arch: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        an = Analyser(f"timm:{arch}", ["channel"], weights="none", align=False, seed=0)
    bb = an.backbone
    s = bb.input_size
    assert bb.interpolation == bb.model.pretrained_cfg["interpolation"]
    image = photo(2 * s, 2 * s, seed=2)
    tf = timm.data.create_transform(input_size=(3, s, s), interpolation=bb.interpolation, crop_pct=1.0,
                                    crop_mode="squash", mean=bb.mean, std=bb.std)
    ref = tf(image)[None]
    got = an.preprocess([image])
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(bb.model(got), bb.model(ref), rtol=0, atol=1e-5)
    if bb.interpolation != "bilinear":                                    # the test can tell them apart
        other = timm.data.create_transform(input_size=(3, s, s), interpolation="bilinear", crop_pct=1.0,
                                           crop_mode="squash", mean=bb.mean, std=bb.std)(image)[None]
        assert (other - got).abs().max() > 1e-3
