"""DemoNet: a compact CNN with every attention kind as a trained, hookable module.

Layout (input ``3×96×96``, normalised with ``model.mean`` / ``model.std``)::

    stem      conv4×4 s2 → 48×48 (16), conv4×4 s2 → 24×24 (32), conv3×3, conv3×3 + BN
              (no ReLU: the stem ends on a BatchNorm)         F: (B, 32, 24, 24), signed
    cbam.se       torchvision SqueezeExcitation(32 → 8 → 32) on F; its sigmoid is
                  ``cbam.se.scale_activation``                 s: (B, 32, 1, 1)
    cbam.spatial  SpatialGate: conv7×7 over [mean_c; max_c] of s ⊙ F (serial CBAM), sigmoid
                  ``cbam.spatial.gate``                        M: (B, 1, 24, 24)
    ReLU      after CBAM: ReLU(M ⊙ s ⊙ F) = M ⊙ s ⊙ ReLU(F) — the gates read the signed
              pre-activation and scale the main path (not a residual branch)
    ── image tokens for cross-attention: these 24×24 = 576 gated features, 32 dims each
    down      conv4×4 s2 → 12×12, conv3×3                     (B, 64, 12, 12)
    encoder   pre-norm transformer block; ``encoder.attn`` is an nn.MultiheadAttention
              (batch_first, 4 heads) over [class token; 144 patch tokens] (B, 145, 64)
    head      presence logits from the class token            (B, 24)
    text      caption tokens → embedding → mean → MLP         one query per caption (P, 64)
    cross     nn.MultiheadAttention (batch_first, 1 head, kdim = vdim = 32): the caption
              query attends over the 576 CBAM tokens          weights (B, 1, P, 576)
    match_head  [attended; query] → caption-presence logit    (B, P)

Every feature grid is centred: cell ``(i, j)`` of a stride-``s`` map is centred on image
pixel coordinates ``((j + 0.5)·s, (i + 0.5)·s)`` (4×4/stride-2 convs, see ``_conv``), so a
map upsampled with ``align_corners=False`` lies exactly over the image.

Why these choices (held-out pointing game; see MODEL_CARD.md): the gates and the
cross-attention keys at 24×24 (at 12×12 the cross-attention saturated in training); centred grids (3×3/stride-2
convs put the spatial gate's argmax just outside the objects, self-attention 0.86 → 1.00);
CBAM before the ReLU (on ReLU features the channel heatmap Σ s_c F_c is mostly feature energy,
which a randomly initialised copy shares: rank correlation 0.40; on the signed
pre-activation under 0.05, while a gate on a residual branch saturated).

Nothing is trained on an attention map: the losses are presence (multi-label) and
caption presence. ``load_demo_model()`` returns the committed, trained model in eval mode.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import SqueezeExcitation

from attnviz.zoo.world import CATEGORIES, COLOURS, DEFAULT_SIZE, SHAPES, WORDS, caption

__all__ = [
    "VOCAB", "CONTEXT_LEN", "WEIGHTS_PATH", "SE_MODULE", "SE_GATE", "SPATIAL_MODULE",
    "SPATIAL_GATE", "SELF_ATTN", "CROSS_ATTN", "SpatialGate", "CBAM", "EncoderBlock",
    "DemoNet", "tokenize", "caption_ids", "preprocess", "load_demo_model", "count_parameters",
]

#: Caption vocabulary; index 0 pads.
VOCAB: tuple[str, ...] = ("<pad>",) + WORDS + COLOURS + SHAPES
CONTEXT_LEN = 4
WEIGHTS_PATH = Path(__file__).with_name("weights.pt")

# Dotted names (``model.get_submodule(name)``) of the attention modules.
SE_MODULE = "cbam.se"                      # SqueezeExcitation; its input is F (B, 32, 24, 24)
SE_GATE = "cbam.se.scale_activation"       # nn.Sigmoid; output s (B, 32, 1, 1)
SPATIAL_MODULE = "cbam.spatial"            # SpatialGate; input s ⊙ F (serial CBAM)
SPATIAL_GATE = "cbam.spatial.gate"         # nn.Sigmoid; output M (B, 1, 24, 24)
SELF_ATTN = "encoder.attn"                 # nn.MultiheadAttention over (B, 1 + 12·12, 64)
CROSS_ATTN = "cross"                       # nn.MultiheadAttention, query (B, P, 64), keys (B, 576, 32)

_INDEX = {w: i for i, w in enumerate(VOCAB)}


def tokenize(text: str | list[str] | tuple[str, ...]) -> torch.Tensor:
    """Caption(s) to token ids: one caption → (CONTEXT_LEN,), a list → (P, CONTEXT_LEN).

    Words are lower-cased and split on white space; an unknown word is a ValueError that
    names the vocabulary.
    """
    if not isinstance(text, str):
        if len(text) == 0:
            raise ValueError("no captions to tokenize")
        return torch.stack([tokenize(t) for t in text])
    words = text.lower().split()
    if not words:
        raise ValueError("empty caption")
    unknown = [w for w in words if w not in _INDEX or w == "<pad>"]
    if unknown:
        raise ValueError(f"unknown word(s) {unknown} in caption {text!r}; the vocabulary is "
                         f"{list(VOCAB[1:])}")
    if len(words) > CONTEXT_LEN:
        raise ValueError(f"caption {text!r} has {len(words)} words; at most {CONTEXT_LEN}")
    ids = [_INDEX[w] for w in words] + [0] * (CONTEXT_LEN - len(words))
    return torch.tensor(ids, dtype=torch.long)


def caption_ids() -> torch.Tensor:
    """(len(CATEGORIES), CONTEXT_LEN) token ids of every category's caption, class order."""
    return tokenize([caption(*c.split(" ")) for c in CATEGORIES])


class SpatialGate(nn.Module):
    """CBAM spatial gate: ``M = σ(conv7×7([mean_c x; max_c x]))``, returns ``x ⊙ M``."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(pooled))


class CBAM(nn.Module):
    """Serial CBAM: the SE channel gate, then the spatial gate on the SE-scaled features."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.se = SqueezeExcitation(channels, max(1, channels // reduction))
        self.spatial = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.se(x))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block; calls its ``attn`` module (so hooks fire)."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv (stride 1) or 4×4 conv (stride 2), padding 1, + BN + ReLU.

    The 4×4/stride-2 form keeps the feature grid centred: output cell ``i`` sees input cells
    ``2i-1 … 2i+2``, centred on ``2i + 0.5``, so cell ``(i, j)`` of a stride-``s`` map is
    centred on image pixel coordinates ``((j + 0.5)·s, (i + 0.5)·s)`` — the convention of
    ``F.interpolate(align_corners=False)``. (A 3×3/stride-2 conv would shift every map half
    an input cell up and left per layer: 1.5 px at 24×24, 3.5 px at 12×12.)
    """
    k = 3 if stride == 1 else 4
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DemoNet(nn.Module):
    """Presence classifier over :data:`CATEGORIES` plus caption matching (see module doc)."""

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    input_size = DEFAULT_SIZE
    categories = list(CATEGORIES)
    vocab = VOCAB
    context_len = CONTEXT_LEN
    se_module, se_gate = SE_MODULE, SE_GATE
    spatial_module, spatial_gate = SPATIAL_MODULE, SPATIAL_GATE
    self_attn, cross_attn = SELF_ATTN, CROSS_ATTN
    gate_grid = (24, 24)       # SE input / spatial gate / cross-attention key grid
    self_grid = (12, 12)       # encoder patch grid (after 1 class token)
    self_prefix = 1

    def __init__(self, c1: int = 16, c2: int = 32, dim: int = 64, heads: int = 4,
                 text_dim: int = 64):
        super().__init__()
        self.categories = list(CATEGORIES)
        # the last stem conv ends at its BatchNorm: CBAM sits between BN and ReLU, so the SE
        # gate and the spatial gate read the signed pre-activation F, and their product gates
        # the main path: ReLU(M ⊙ s ⊙ F) = M ⊙ s ⊙ ReLU(F)
        self.stem = nn.Sequential(_conv(3, c1, 2), _conv(c1, c2, 2), _conv(c2, c2),
                                  nn.Conv2d(c2, c2, 3, 1, 1, bias=False), nn.BatchNorm2d(c2))
        self.cbam = CBAM(c2)
        self.down = nn.Sequential(_conv(c2, dim, 2), _conv(dim, dim))
        n = self.self_grid[0] * self.self_grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n, dim) * 0.02)
        self.encoder = EncoderBlock(dim, heads, 2 * dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(CATEGORIES))
        # text side
        self.embed = nn.Embedding(len(VOCAB), text_dim, padding_idx=0)
        self.text_mlp = nn.Sequential(nn.Linear(text_dim, text_dim), nn.GELU(),
                                      nn.Linear(text_dim, text_dim))
        self.key_norm = nn.LayerNorm(c2)
        self.cross = nn.MultiheadAttention(text_dim, 1, kdim=c2, vdim=c2, batch_first=True)
        self.match_head = nn.Sequential(nn.Linear(2 * text_dim, text_dim), nn.GELU(),
                                        nn.Linear(text_dim, 1))

    # -- image side ----------------------------------------------------------------
    def gated_features(self, images: torch.Tensor) -> torch.Tensor:
        """ReLU of the CBAM output (B, 32, 24, 24): the cross-attention keys/values and the
        input of the 12×12 stage."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        return F.relu(self.cbam(self.stem(images)))

    def presence_from(self, feats: torch.Tensor) -> torch.Tensor:
        """Presence logits (B, n_cat) from :meth:`gated_features`' output."""
        return self._presence(feats)

    def match_from(self, feats: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """Caption logits from :meth:`gated_features`' output; text_ids as in :meth:`match`.
        An all-zero (padding) caption row gives a finite, meaningless logit."""
        return self._match(feats, text_ids)

    def _presence(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.down(feats).flatten(2).transpose(1, 2)                 # (B, 144, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        x = self.encoder(x)
        return self.head(self.norm(x[:, 0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images → (B, len(categories)) presence logits."""
        return self._presence(self.gated_features(images))

    # -- text side -----------------------------------------------------------------
    def encode_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        """(..., L) token ids → (..., text_dim) caption queries (mean of word embeddings, MLP)."""
        keep = (text_ids != 0).unsqueeze(-1).float()
        e = (self.embed(text_ids) * keep).sum(-2) / keep.sum(-2).clamp(min=1.0)
        return self.text_mlp(e)

    def _match(self, feats: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        b = feats.shape[0]
        keys = self.key_norm(feats.flatten(2).transpose(1, 2))        # (B, 576, 32)
        if text_ids.ndim == 2:                                         # (P, L): all pairs
            q = self.encode_text(text_ids).unsqueeze(0).expand(b, -1, -1)
        elif text_ids.ndim == 3 and text_ids.shape[0] == b:            # (B, K, L): per image
            q = self.encode_text(text_ids)
        else:
            raise ValueError(f"text_ids must be (P, L) or (B, K, L), got {tuple(text_ids.shape)}")
        att = self.cross(q, keys, keys, need_weights=False)[0]         # (B, P, text_dim)
        return self.match_head(torch.cat([att, q], -1)).squeeze(-1)

    def match(self, images: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """Caption-presence logits: text_ids (P, L) → (B, P) for every image × caption;
        (B, K, L) → (B, K), each image with its own K captions."""
        return self._match(self.gated_features(images), text_ids)

    def forward_all(self, images: torch.Tensor, text_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Presence logits and caption logits from one pass over the backbone."""
        feats = self.gated_features(images)
        return self._presence(feats), self._match(feats, text_ids)


def preprocess(images) -> torch.Tensor:
    """uint8 images (H, W, 3) or (B, H, W, 3) (numpy or PIL, or a list of them) → the
    normalised float tensor (B, 3, H, W) the model expects."""
    import numpy as np

    if isinstance(images, (list, tuple)):
        arr = np.stack([np.asarray(im) for im in images])
    else:
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) images, got shape {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(DemoNet.mean).view(1, 3, 1, 1)
    std = torch.tensor(DemoNet.std).view(1, 3, 1, 1)
    return (x - mean) / std


def load_demo_model(path: str | Path | None = None) -> DemoNet:
    """The trained DemoNet (eval mode), from the committed ``weights.pt`` or ``path``.

    The file is a plain state_dict read with ``torch.load(weights_only=True)``.
    """
    p = Path(path) if path is not None else WEIGHTS_PATH
    if not p.is_file():
        raise FileNotFoundError(f"demo weights not found at {p}; train them with "
                                "`python -m attnviz.demo.train`")
    state = torch.load(p, map_location="cpu", weights_only=True)
    model = DemoNet()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

