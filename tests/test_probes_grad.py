"""probes.grad: attention kept in the graph, equal to the model's own, and nothing left behind."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnviz.probes.grad import GradCapture, explicit_sdpa


class SdpaNet(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.qkv, self.heads = nn.Linear(dim, 3 * dim), heads

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum()


class MhaNet(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_explicit_sdpa_equals_the_fused_call_with_masks():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    for mask in (None, torch.randn(7, 7, generator=g), torch.rand(7, 7, generator=g) > 0.3):
        if mask is not None and mask.dtype == torch.bool:
            mask[:, 0] = True
        out, a = explicit_sdpa(q, k, v, mask)
        assert (out - F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).abs().max() < 1e-6
        assert torch.allclose(a.sum(-1), torch.ones(()))


def test_sdpa_attention_is_in_the_graph_and_its_gradient_is_exact():
    torch.manual_seed(0)
    net, x = SdpaNet(), torch.randn(2, 5, 16)
    with torch.enable_grad(), GradCapture(net, [""]) as cap:
        y = net(x)
    a = cap.attention[""]
    g, = torch.autograd.grad(y, a)
    # the same gradient by hand: y = Σ (A·v) -> ∂y/∂A = 1·vᵀ summed over the head dim
    _, k, v = net.qkv(x).reshape(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    want = v.sum(-1)[:, :, None, :].expand_as(a)
    assert (g - want).abs().max() < 1e-5


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_runs_explicitly_and_is_restored(batch_first):
    torch.manual_seed(0)
    net = MhaNet(batch_first).eval()
    x = torch.randn(3, 6, 16) if batch_first else torch.randn(6, 3, 16)
    ref = net(x)
    with torch.enable_grad(), GradCapture(net, ["attn"]) as cap:
        out = net(x)
    assert (out - ref).abs().max() < 1e-5
    a = cap.attention["attn"]
    assert a.shape == (3, 4, 6, 6) and a.grad_fn is not None
    _, w = net.attn(x, x, x, need_weights=True, average_attn_weights=False)
    assert (a.detach() - w).abs().max() < 1e-6
    assert "forward" not in net.attn.__dict__ and not net.attn._forward_hooks


def test_everything_is_undone_even_when_the_forward_raises():
    net = SdpaNet()
    with pytest.raises(RuntimeError):
        with torch.enable_grad(), GradCapture(net, [""], layers=["qkv"]):
            net(torch.randn(1, 5, 16), mask=torch.zeros(1, 1, 9, 9))    # a mask of the wrong size
    assert not net._forward_hooks and not net._forward_pre_hooks and not net.qkv._forward_hooks
    assert not torch.overrides._is_torch_function_mode_enabled() if hasattr(
        torch.overrides, "_is_torch_function_mode_enabled") else True
    y = net(torch.randn(1, 5, 16))                    # the fused path again, nothing recorded
    assert y.grad_fn is not None


def test_a_mismatch_with_the_fused_output_stops_the_run(monkeypatch):
    import attnviz.probes.grad as grad
    monkeypatch.setattr(grad, "TOLERANCE", -1.0)      # any difference (even 0) is too much
    net = SdpaNet()
    with pytest.raises(RuntimeError, match="differs from its own output"):
        with torch.enable_grad(), GradCapture(net, [""]):
            net(torch.randn(1, 5, 16))
