"""What the registries hold, readable without torch: the kinds and backbone families, for listings and early checks.

The registries (`attnviz.kinds.KINDS`, `attnviz.backbones.families()`) are the truth: they import
torch and every family's code. This catalog mirrors their metadata so that `attnviz kinds`,
`attnviz backbones --no-names`, `--help` and a misspelt `--kinds` answer before torch is imported
(seconds on a laptop). tests/test_catalog.py fails when a registered kind or family is missing from
the catalog or differs from it; a kind registered at run time (`register_kind` in a notebook) is not
in it, which is why the Python API checks names against the registry itself.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable

from attnviz.errors import AttnvizError

__all__ = ["KindInfo", "FamilyInfo", "KINDS", "FAMILIES", "unknown_kind", "check_kind_names"]


@dataclass(frozen=True)
class KindInfo:
    """A registered kind as listings see it (mirrors `attnviz.kinds.base.Kind`)."""

    name: str
    order: int                     # position in the default kind list and in the grid
    default: bool                  # in the default set (False: only when named in --kinds)
    needs: frozenset[str]          # what the forward must capture for it
    summary: str                   # the first line of the kind's module docstring


@dataclass(frozen=True)
class FamilyInfo:
    """A registered backbone family as listings see it (mirrors `attnviz.backbones.Family`)."""

    prefix: str
    syntax: str
    summary: str
    lists: str | None = None       # the library whose model list `attnviz backbones` shows (None: no list)


def _kind(name: str, order: int, default: bool, needs: str, summary: str) -> KindInfo:
    return KindInfo(name, order, default, frozenset(needs.split()), summary)


# in registration order (attnviz/kinds/__init__.py): error messages list the kinds in this order
KINDS: dict[str, KindInfo] = {k.name: k for k in (
    _kind("channel", 0, True, "features gates",
          "Channel attention (SE): the model's own gate when it has one (native), else s = σ(ẑ_C(GAP F))."),
    _kind("spatial", 1, True, "features gates",
          "Spatial attention (CBAM): the model's own spatial gate (native), else the fixed-kernel gate (derived)."),
    _kind("mixed-serial", 2, True, "features gates",
          "Mixed attention, serial (CBAM order): the spatial gate on channel-scaled features s ⊙ F."),
    _kind("mixed-parallel", 3, True, "features logits",
          "Mixed attention, parallel (BAM style): A = σ(logit s + logit M_s), map = mean_c(A ⊙ F)."),
    _kind("self", 4, True, "attention features",
          "Self-attention: a transformer's own attention (native), else softmax(cos(x_i, x_j)/τ) (derived)."),
    _kind("cross", 5, True, "features logits",
          "Text-to-image cross-attention, derived for a classifier: A = softmax_N(w_c · x_i / √d) (CAM)."),
    _kind("self-gae", 10, False, "attention gradients logits",
          "Self-attention weighted by its gradient (Chefer et al. 2021, GAE): the class token's relevance row."),
    _kind("self-legrad", 11, False, "attention blocks gradients logits",
          "Self-attention gradients of every block's own prediction (Bousselham et al. 2024, LeGrad)."),
    _kind("gradcam", 12, False, "gradients logits",
          "Grad-CAM (Selvaraju et al. 2017) on --layer: ReLU(Σ_c w_c F_c), w_c = spatial mean of ∂y_t/∂F_c."),
    _kind("cross-gae", 13, False, "attention blocks gradients",
          "Text-to-image relevance by GAE (Chefer et al. 2021) for CLIP: one map per --text prompt."),
    _kind("cross-legrad", 14, False, "attention blocks gradients",
          "Text-to-image relevance by LeGrad (Bousselham et al. 2024) for CLIP, as its released code computes it."),
)}

# in listing order (`attnviz.backbones.families()`: the bare-name family first)
FAMILIES: tuple[FamilyInfo, ...] = (
    FamilyInfo("", "NAME", "any torchvision classifier, with torchvision's weights enums", lists="torchvision"),
    FamilyInfo("clip", "clip:ARCH", "an open_clip ViT: free-text prompts, native cross maps (the clip extra)",
               lists="open_clip"),
    FamilyInfo("demo", "demo", "the model trained in this repository (see `attnviz demo`)"),
    FamilyInfo("demo-vit", "demo-vit", "the small ViT trained in this repository on the demo world"),
    FamilyInfo("hf", "hf:ORG/NAME or hf:DIR",
               "a Hugging Face image classifier: hub id or save_pretrained folder (the hf extra)"),
    FamilyInfo("timm", "timm:NAME[.TAG]", "any timm model by name, weights from timm's hub (the timm extra)",
               lists="timm"),
    FamilyInfo("model", "--model package.module:factory", "your own model: a factory returning an nn.Module"),
)


def unknown_kind(name: str, known: Iterable[str]) -> AttnvizError:
    """The one-line error for a kind name that is not among `known` (close names suggested)."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return AttnvizError(f"unknown kind {name!r}{hint}; kinds: {', '.join(known)}")


def check_kind_names(names: Iterable[str]) -> None:
    """Raise the registry's own one-line error for the first name that is not a catalogued kind."""
    for name in names:
        if name not in KINDS:
            raise unknown_kind(name, KINDS)
