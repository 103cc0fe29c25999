"""DemoViT: a small vision transformer of the demo world, to score the self-attention kinds.

Layout (input ``3×96×96``, normalised like DemoNet)::

    patch_embed  conv4×4 s2 → 48×48 (16), conv4×4 s2 → 24×24 (32), conv4×4 s2 → 12×12 (64)
                 (GELU between; a conv stem learns in minutes on a CPU where 8×8 patches do not)
    tokens       [class token; 144 patch tokens] + learned position embedding   (B, 145, 64)
    blocks.0-3   pre-norm transformer blocks; ``blocks.i.attn`` calls
                 ``F.scaled_dot_product_attention`` (fused: it never forms A)
    norm, head   LayerNorm, then presence logits of the 24 categories from the class token

The 4×4/stride-2 convs keep the grid centred (see ``zoo.model._conv``): token ``(i, j)`` is
centred on pixel ``((j + 0.5)·8, (i + 0.5)·8)``. Trained on presence only (multi-label BCE);
nothing is trained on an attention map. ``load_demo_vit()`` returns the committed weights.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from attnviz.zoo.world import CATEGORIES, DEFAULT_SIZE

__all__ = ["VIT_WEIGHTS_PATH", "Attention", "Block", "DemoViT", "load_demo_vit", "shape_of"]

VIT_WEIGHTS_PATH = Path(__file__).with_name("vit_weights.pt")


class Attention(nn.Module):
    """Multi-head self-attention through the fused SDPA call."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)                  # (B, heads, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DemoViT(nn.Module):
    """Presence classifier over :data:`CATEGORIES` (see module doc)."""

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    input_size = DEFAULT_SIZE
    grid = (12, 12)
    prefix = 1

    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128, context: int = 0):
        super().__init__()
        self.categories = list(CATEGORIES)
        stem: list[nn.Module] = [nn.Conv2d(3, 16, 4, 2, 1), nn.GELU(), nn.Conv2d(16, 32, 4, 2, 1), nn.GELU(),
                                 nn.Conv2d(32, dim, 4, 2, 1)]
        for _ in range(context):    # 3×3 stride 1 on the token grid: each adds 16 px of receptive field
            stem += [nn.GELU(), nn.Conv2d(dim, dim, 3, 1, 1)]
        self.patch_embed = nn.Sequential(*stem)
        n = self.grid[0] * self.grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(CATEGORIES))

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The input tokens of block 0: (B, 1 + 144, dim)."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """Presence logits from any block's output tokens: final norm, class token, head."""
        return self.head(self.norm(z)[:, 0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 96, 96) normalised images → (B, 24) presence logits."""
        return self.forward_head(self.blocks(self.tokens(images)))


_MOST = 64     # blocks or context convs read from a file: more is not a DemoViT (its strict load says so)


def shape_of(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """`DemoViT(**shape_of(sd))` fits `sd`: its ``depth`` and ``context`` (``train_vit --depth/--context``)
    read from the names of its blocks and stem convs; the defaults where the names say nothing."""
    def last(prefix: str) -> int | None:
        found = [int(k.split(".")[1]) for k in state_dict
                 if k.startswith(prefix) and k.split(".")[1].isdigit()]
        return max(found) if found else None
    shape = {}
    block = last("blocks.")
    if block is not None and block < _MOST:
        shape["depth"] = block + 1
    conv = last("patch_embed.")            # 3 convs with GELUs between: index 4, then 2 more a context conv
    if conv is not None and 4 <= conv < 4 + 2 * _MOST and conv % 2 == 0:
        shape["context"] = (conv - 4) // 2
    return shape


def load_demo_vit(path: str | Path | None = None) -> DemoViT:
    """The trained DemoViT (eval mode), from the committed ``vit_weights.pt`` or ``path``."""
    p = Path(path) if path is not None else VIT_WEIGHTS_PATH
    if not p.is_file():
        raise FileNotFoundError(f"demo-vit weights not found at {p}; train them with "
                                "`python -m attnviz.demo.train_vit`")
    sd = torch.load(p, map_location="cpu", weights_only=True)
    model = DemoViT(**shape_of(sd))
    model.load_state_dict(sd)
    return model.eval()
