"""Hand-written models for the behaviour-capture tests: gates written the usual ways, odd outputs."""
from __future__ import annotations

import torch
from torch import nn

from tests.models import TinyViT


class FunctionalCBAM(nn.Module):
    """CBAM as ONE module, gates by `torch.sigmoid` in forward: channel then spatial."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(c, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, c, 1))
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def channel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)


class ModuleCBAM(FunctionalCBAM):
    """CBAM as ONE module holding both gates as two nn.Sigmoid children."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.sig_c, self.sig_s = nn.Sigmoid(), nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.sig_c(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
        return x * self.sig_s(self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))


class ECA(nn.Module):
    """ECA: a 1-D conv over the pooled channel vector (B×1×C); the sigmoid sees B×1×C or B×C×1×1."""

    def __init__(self, c: int, pooled_shape: str = "b1c") -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.pooled_shape = pooled_shape

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean((2, 3))[:, None])                        # (B, 1, C)
        if self.pooled_shape == "b1c":
            return y.sigmoid().view(len(x), -1, 1, 1)
        return torch.sigmoid(y.view(len(x), -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class GateNet(nn.Module):
    """conv → conv → one gate block → pool → linear, 10 classes at 64 px."""

    categories = [f"thing {i}" for i in range(10)]
    input_size = 64

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.att = block
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.att(self.stem(x))).flatten(1))


def _spread(make) -> nn.Module:
    """A seeded net, conv weights wide enough that gates are far from 0.5 (a test can fail)."""
    torch.manual_seed(0)
    net = make()
    for m in net.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.normal_(m.weight, std=0.5)
    return net.eval()


def cbam_functional() -> GateNet:
    """--model factory: CBAM with torch.sigmoid in forward."""
    return _spread(lambda: GateNet(FunctionalCBAM(32)))


def cbam_modules() -> GateNet:
    """--model factory: CBAM with two nn.Sigmoid children of one module."""
    return _spread(lambda: GateNet(ModuleCBAM(32)))


def eca_b1c() -> GateNet:
    """--model factory: ECA gate B×1×C."""
    return _spread(lambda: GateNet(ECA(32, "b1c")))


def eca_bc11() -> GateNet:
    """--model factory: ECA gate B×C×1×1."""
    return _spread(lambda: GateNet(ECA(32, "bc11")))


class Returns(nn.Module):
    """A classifier whose forward returns `how`: dict, tuple, HF ModelOutput, or junk."""

    categories = [f"thing {i}" for i in range(10)]
    input_size = 64

    def __init__(self, how: str) -> None:
        super().__init__()
        self.net = cbam_functional()
        self.how = how

    def forward(self, x: torch.Tensor):
        y = self.net(x)
        if self.how == "dict":
            return {"features": None, "logits": y}
        if self.how == "tuple":
            return (y, x.mean())
        if self.how == "hf":
            from transformers.modeling_outputs import ImageClassifierOutput
            return ImageClassifierOutput(logits=y)
        return "not logits"


def returns_dict() -> Returns:
    return Returns("dict")


def returns_tuple() -> Returns:
    return Returns("tuple")


def returns_hf() -> Returns:
    return Returns("hf")


def returns_junk() -> Returns:
    return Returns("junk")


def vit_untokened() -> TinyViT:
    """TinyViT without a `tokens` attribute: the grid must be inferred from its attention."""
    torch.manual_seed(0)
    net = TinyViT().eval()
    net.tokens = None
    return net


def vit_wrong_tokens() -> TinyViT:
    """TinyViT declaring 2 prefix tokens where it has 1 (as a DeiT config on a ViT would)."""
    torch.manual_seed(0)
    net = TinyViT().eval()
    net.tokens = (2, (4, 4))
    return net


def hf_vit_eager() -> nn.Module:
    """A tiny Hugging Face ViT classifier (eager attention), no `tokens` attribute."""
    import transformers
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10)
    net = transformers.ViTForImageClassification._from_config(cfg, attn_implementation="eager").eval()
    net.input_size = 32
    return net


def timm_swin(fused: bool = True) -> nn.Module:
    """A tiny timm Swin (32 px, 4×4 windows, two stages: 16 then 4 windows per image)."""
    from timm.models.swin_transformer import SwinTransformer
    torch.manual_seed(0)
    net = SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2),
                          num_heads=(1, 2), num_classes=10).eval()
    for m in net.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    net.input_size = 32
    return net


def timm_swin_fused() -> nn.Module:
    """--model factory: timm Swin, attention through F.scaled_dot_product_attention."""
    return timm_swin(True)


def timm_vit(fused: bool = True) -> nn.Module:
    """A tiny timm ViT (32 px, patch 8: one class token + 4×4 patches), no `tokens` attribute."""
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    net = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10).eval()
    for b in net.blocks:
        b.attn.fused_attn = fused
    net.input_size = 32
    return net


def timm_vit_unfused() -> nn.Module:
    """--model factory: timm ViT with its softmax written by hand (fused attention off)."""
    return timm_vit(False)
