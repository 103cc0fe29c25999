"""Text-to-image cross-attention, derived for a classifier: A = softmax_N(w_c · x_i / √d) (CAM).

Definition: docs/attention.md §5.
"""
from __future__ import annotations

import difflib

import torch

from attnviz.backbones import Backbone
from attnviz.errors import AttnvizError
from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.text import slug, unique, words
from attnviz.results import AttentionMap, Options

__all__ = ["match_classes", "class_index", "cross_map", "Cross"]


def match_classes(prompt: str, categories: list[str]) -> list[int]:
    """Classes named in `prompt` as whole words; the longest match wins, overlaps are dropped."""
    names: dict[tuple[str, ...], list[int]] = {}
    for i, c in enumerate(categories):
        names.setdefault(tuple(words(c)), []).append(i)
    p = words(prompt)
    longest = max((len(k) for k in names), default=0)
    found = [(length, start, names[tuple(p[start:start + length])])
             for length in range(longest, 0, -1) for start in range(len(p) - length + 1)
             if tuple(p[start:start + length]) in names]
    taken: set[int] = set()
    chosen: list[int] = []
    for length, start, idx in sorted(found, key=lambda t: (-t[0], t[1])):
        span = set(range(start, start + length))
        if not span & taken:
            taken |= span
            chosen += [i for i in idx if i not in chosen]
    return chosen


def _closest(prompt: str, categories: list[str], n: int = 5) -> list[str]:
    p = words(prompt)

    def score(name: str) -> float:
        k = max(len(words(name)), 1)
        grams = [" ".join(p[i:i + k]) for i in range(max(len(p) - k + 1, 1))]
        return max(difflib.SequenceMatcher(None, g, name.lower()).ratio() for g in grams)
    return sorted(dict.fromkeys(categories), key=score, reverse=True)[:n]


def class_index(target: int | str, backbone: Backbone) -> int:
    """A `--target`: a class index of the head, or a class name (exact, any case); one line otherwise."""
    cats = backbone.categories
    if isinstance(target, int):
        if not 0 <= target < len(cats):
            raise AttnvizError(f"--target {target}: {backbone.name} has classes 0 to {len(cats) - 1}")
        return target
    lower = [c.lower() for c in cats]
    if target.lower() in lower:
        return lower.index(target.lower())
    close = ", ".join(_closest(target, cats))
    raise AttnvizError(f"--target {target!r} is not a class of {backbone.name}; closest: {close}")


def cross_map(f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """softmax over positions of w · x_i / √d: (B, C, H, W), (B, C) -> (B, H, W)."""
    b, c, h, wd = f.shape
    scores = torch.einsum("bchw,bc->bhw", f, w) / c ** 0.5
    return torch.softmax(scores.reshape(b, -1), dim=1).reshape(b, h, wd)


@register_kind
class Cross(Kind):
    name = "cross"
    order = 5

    def unavailable(self, backbone: Backbone, options: Options) -> str | None:
        if backbone.native_cross:
            return None if options.texts or backbone.own_prompts else \
                f"{backbone.name} answers free text: give --text or --text-file prompts"
        if backbone.classifier is None:
            return (f"{backbone.name}'s head is not one linear layer over pooled features, "
                    f"so derived cross-attention is not defined for it")
        return None

    def prepare(self, backbone: Backbone, options: Options) -> dict[str, list[int]]:
        plan: dict[str, list[int]] = {}
        if backbone.native_cross:
            return plan            # the backbone read and encoded the prompts itself
        for prompt in options.texts:
            if not words(prompt):
                raise AttnvizError(f"--text {prompt!r}: the prompt has no words")
            classes = match_classes(prompt, backbone.categories)
            if not classes:
                close = ", ".join(_closest(prompt, backbone.categories))
                raise AttnvizError(f"--text {prompt!r} names none of {backbone.name}'s classes; "
                                   f"closest: {close}")
            plan[prompt] = classes
        for t in options.targets:
            class_index(t, backbone)           # an unknown class fails before any image is read
        return plan

    def layers(self, backbone: Backbone, layer: str) -> list[str]:
        if backbone.native_cross or not backbone.classifier_layer:
            return []
        return [backbone.classifier_layer]

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        bb = batch.backbone
        if bb.native_cross:
            return bb.cross_maps(batch)
        f = batch.features(bb.classifier_layer)                    # (B, C, H, W)
        weight = bb.classifier.weight.detach().float().to(f.device)   # (K, C)
        probs = torch.softmax(batch.logits.float(), dim=1)
        plan: dict[str, list[int]] = batch.plans.get(self.name) or {}
        asked = batch.targets or [batch.options.targets] * len(batch.sizes)    # per image, or for all
        per_image = [{bb.categories[c]: [c] for c in (class_index(t, bb) for t in targets)} if targets
                     else dict(plan) if plan else {bb.categories[int(i)]: [int(i)]}
                     for i, targets in zip(batch.logits.argmax(dim=1), asked)]
        out: list[list[AttentionMap]] = []
        for i, prompts in enumerate(per_image):
            maps, used = [], set()
            for j, (prompt, classes) in enumerate(prompts.items()):
                name = unique(f"cross-{slug(prompt) or f'prompt-{j + 1}'}", used)
                w = weight[classes].mean(dim=0)[None]                   # (1, C)
                m = cross_map(f[i:i + 1], w)[0]
                source = "--target" if asked[i] else "--text" if plan else "top-1 class"
                meta = {"prompt": prompt, "prompt_source": source,
                        "classes": [{"index": c, "label": bb.categories[c]} for c in classes],
                        "probability": round(float(probs[i, classes].sum()), 6)}
                maps.append(AttentionMap("cross", name, "derived", bb.classifier_layer,
                                         m.cpu().numpy(), meta=meta))
            out.append(maps)
        return out

