"""What the gradient-weighted kinds share: targets, the attention in the graph, the token head.

Definitions: docs/attention.md §6. The forward ran under `probes.grad.GradCapture` (the kinds
declare "gradients"), so `batch.logits` and `batch.grads.attention[name]` are in one graph.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator

import torch

from attnviz.backbones import Backbone
from attnviz.errors import AttnvizError
from attnviz.kinds.base import Batch
from attnviz.text import slug, unique

__all__ = ["parse_targets", "image_targets", "target_slots", "token_attention", "map_name", "target_meta",
           "token_head", "check_head", "HEAD_TOLERANCE", "LAST_BLOCKS"]

HEAD_TOLERANCE = 1e-4      # the token head on the last block vs the model's logits, relative
LAST_BLOCKS = 2            # cross-legrad sums the last two blocks: the released code's layer_index=-2


def parse_targets(targets: tuple[str, ...], categories: list[str]) -> list[int]:
    """--target values (a class name, case-insensitive, or an index) as class indices."""
    out = []
    lower = [c.lower() for c in categories]
    for t in targets:
        text = str(t).strip()
        if text.isdigit():
            i = int(text)
            if i >= len(categories):
                raise AttnvizError(f"--target {text}: the model has {len(categories)} classes (0–{len(categories) - 1})")
        elif text.lower() in lower:
            i = lower.index(text.lower())
        else:
            close = difflib.get_close_matches(text.lower(), lower, n=3, cutoff=0.6)
            hint = f"; close: {', '.join(categories[lower.index(c)] for c in close)}" if close else ""
            raise AttnvizError(f"--target {text!r} is neither a class name nor a class index{hint}")
        if i not in out:
            out.append(i)
    return out


def image_targets(batch: Batch, plan: list[int] | None) -> tuple[list[list[int]], str]:
    """Each image's target classes (`targets=` per image, else --target, else its top-1), and where
    they came from."""
    if batch.targets:                       # the Python API's list, one entry per image
        top = batch.logits.detach().argmax(dim=1)
        return [parse_targets(tuple(t), batch.backbone.categories) or [int(i)]
                for t, i in zip(batch.targets, top)], "--target"
    if plan:
        return [list(plan) for _ in batch.sizes], "--target"
    return [[int(i)] for i in batch.logits.detach().argmax(dim=1)], "top-1"


def target_slots(batch: Batch, plan: list[int] | None) -> Iterator[tuple[torch.Tensor, str]]:
    """One (B,) tensor of classes per target slot (one backward each), and where they came from.

    Every image needs as many targets: slot k holds each image's k-th class."""
    targets, source = image_targets(batch, plan)
    counts = sorted({len(t) for t in targets})
    if len(counts) > 1:
        raise AttnvizError(f"targets: give every image of a batch as many classes (got {counts[0]} and {counts[-1]})")
    for slot in range(counts[0]):
        yield torch.tensor([t[slot] for t in targets], device=batch.logits.device), source


def map_name(kind: str, label: str, source: str, used: set[str]) -> str:
    """`kind` for the top-1 map; `kind-<label>` per --target."""
    return unique(kind if source == "top-1" else f"{kind}-{slug(label) or 'class'}", used)


def target_meta(batch: Batch, i: int, t: int, source: str) -> dict[str, Any]:
    """The manifest's record of one image's target: index, label, logit, where it came from."""
    cats = batch.backbone.categories
    return {"target": {"index": t, "label": cats[t] if t < len(cats) else f"class {t}", "source": source,
                       "logit": round(float(batch.logits[i, t]), 6)}}


def token_attention(batch: Batch) -> list[str]:
    """The self-attention modules (forward order) whose graph-kept A is (B, heads, N, N) over the tokens."""
    usable, why = batch.inventory.usable_self(batch.backbone.tokens)
    names = [n for n in usable if batch.grads is not None and n in batch.grads.attention
             and batch.grads.attention[n].dim() == 4]
    if not names:
        raise AttnvizError(f"{batch.backbone.name}: no token self-attention reached the gradient capture"
                           + (f" ({why})" if why else ""))
    return names


def token_head(backbone: Backbone) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The model's own final norm, pooling and head from block tokens (B, N, C) to logits."""
    return getattr(backbone, "token_head", None)


def check_head(head: Callable[[torch.Tensor], torch.Tensor], last: torch.Tensor, logits: torch.Tensor,
               name: str) -> None:
    """The token head on the last block's output must give the model's logits, or LeGrad's s_l lie."""
    with torch.no_grad():
        got = head(last).float()
    ref = logits.detach().float()
    err = float((got - ref).abs().max()) if got.shape == ref.shape else float("inf")
    if not err <= HEAD_TOLERANCE * max(1.0, float(ref.abs().max())):
        raise AttnvizError(f"{name}: the token head on the last block does not reproduce the logits "
                           f"(max difference {err:.3g}); self-legrad is not defined for this model")
