"""Small models defined for the tests: a CBAM-ResNet and a timm-style transformer using SDPA."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import SqueezeExcitation


class SpatialGate(nn.Module):
    """CBAM spatial gate: σ(conv7×7([mean_c x; max_c x])) multiplies x."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(pooled))


class CBAMBlock(nn.Module):
    """conv → SE channel gate → spatial gate, residual."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())
        self.se = SqueezeExcitation(cout, max(cout // 4, 4))
        self.spatial = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.spatial(self.se(y)) + y


class CBAMNet(nn.Module):
    """A tiny CBAM-ResNet classifier (10 classes) at 64 px."""

    categories = [f"thing {i}" for i in range(10)]
    input_size = 64

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.stage1 = CBAMBlock(16, 32, 2)
        self.stage2 = CBAMBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stage2(self.stage1(self.stem(x)))).flatten(1))


def cbam_net() -> CBAMNet:
    """Factory for --model tests.models:cbam_net (seeded, gates spread away from 0.5)."""
    torch.manual_seed(0)
    net = CBAMNet()
    for m in net.modules():
        if isinstance(m, SqueezeExcitation):
            nn.init.normal_(m.fc1.weight, std=0.5)
            nn.init.normal_(m.fc2.weight, std=0.5)
        if isinstance(m, SpatialGate):
            nn.init.normal_(m.conv.weight, std=0.3)
    return net.eval()


class SDPABlock(nn.Module):
    """timm-style attention: qkv projection and F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])       # (B, heads, N, hd)
        return x + self.proj(out.transpose(1, 2).reshape(b, n, d))


class TinyViT(nn.Module):
    """Patch embedding, a class token and two SDPA blocks on a 4×4 grid (64 px, patch 16)."""

    categories = [f"class {i}" for i in range(5)]
    input_size = 64
    tokens = (1, (4, 4))          # one class token, then a 4×4 patch grid

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 16, 16)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim))
        self.blocks = nn.Sequential(SDPABlock(dim, 4), SDPABlock(dim, 4))
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)                         # (B, 16, D)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1) + self.pos
        return self.head(self.blocks(t)[:, 0])


def tiny_vit() -> TinyViT:
    """Factory for --model tests.models:tiny_vit."""
    torch.manual_seed(0)
    return TinyViT().eval()


class QuadrantNet(nn.Module):
    """Class 0's logit is the brightness of the image's top-left quarter: the answer is known."""

    categories = ["bright top-left", "other"]
    input_size = 32

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 3, 4, stride=4, bias=False)     # 8×8 block means per channel
        with torch.no_grad():
            self.features.weight.zero_()
            for c in range(3):
                self.features.weight[c, c] = 1 / 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.features(x)[:, :, :4, :4].mean(dim=(1, 2, 3))             # top-left quarter
        return torch.stack([4 * s, torch.zeros_like(s)], dim=1)


def quadrant_net() -> QuadrantNet:
    """Factory for --model tests.models:quadrant_net."""
    return QuadrantNet().eval()


def die_once_net() -> CBAMNet:
    """cbam_net whose process dies (os._exit) on its first real batch in a Ray worker, once.

    For the worker-death test: `ATTNVIZ_TEST_DIE_ONCE` names a marker file (created at death, so the
    restarted actor lives) and `ATTNVIZ_TEST_DRIVER` the driver's pid (the driver never dies).
    """
    import os
    net = cbam_net()
    marker, driver = os.environ.get("ATTNVIZ_TEST_DIE_ONCE"), os.environ.get("ATTNVIZ_TEST_DRIVER")
    if marker and driver and os.getpid() != int(driver):
        plain = net.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 1 and not os.path.exists(marker):     # a batch of images, not a dummy pass
                open(marker, "w").close()
                os._exit(1)
            return plain(x)
        net.forward = forward
    return net
