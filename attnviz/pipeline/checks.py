"""Do the maps mean something? Deletion/insertion faithfulness and model-randomisation sanity."""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from attnviz.maps import normalise, upsample
from attnviz.metrics import spearman
from attnviz.pipeline.analyser import Analyser
from attnviz.results import AttentionMap, Result

__all__ = ["faithfulness", "randomised", "sanity", "unusable"]


@torch.no_grad()
def faithfulness(analyser: Analyser, image: Image.Image, maps: Sequence[AttentionMap], steps: int = 10,
                 chunk: int = 32) -> dict[str, dict[str, float]]:
    """Per map: deletion and insertion AUC of the top-1 class probability (Petsiuk et al. 2018).

    Deletion replaces the most attended pixels first with the mean colour (0 after
    normalisation): a faithful map makes the probability fall fast (low AUC). Insertion starts
    from the mean colour and restores them: a faithful map makes it rise fast (high AUC).
    """
    bb = analyser.backbone
    x = analyser.preprocess([image])                                  # (1, 3, S, S)
    s = x.shape[-1]
    target = int(bb.forward(x)[0].argmax(dim=1))
    fractions = torch.linspace(0, 1, steps + 1)
    inputs = []
    for m in maps:
        rank = torch.from_numpy(upsample(normalise(m.data), s, s, m.geometry)).flatten().argsort(descending=True)
        for f in fractions:
            mask = torch.zeros(s * s, dtype=torch.bool)
            mask[rank[:int(round(float(f) * s * s))]] = True
            mask = mask.reshape(1, 1, s, s).to(x.device)
            inputs += [x * ~mask, x * mask]                           # deletion, insertion
    batch = torch.cat(inputs)
    probs = torch.cat([torch.softmax(bb.forward(batch[i:i + chunk])[0].float(), dim=1)[:, target]
                       for i in range(0, len(batch), chunk)]).cpu().numpy()
    curves = probs.reshape(len(maps), steps + 1, 2)
    auc = lambda c: float(((c[1:] + c[:-1]) / 2).mean())            # noqa: E731  trapezoid on [0, 1]
    return {m.name: {"deletion": round(auc(curves[i, :, 0]), 4), "insertion": round(auc(curves[i, :, 1]), 4)}
            for i, m in enumerate(maps)}


def randomised(backbone, seed: int = 0):
    """A copy of the backbone whose model has every parameter re-initialised (full randomisation)."""
    rand = copy.deepcopy(backbone)
    torch.manual_seed(seed)
    for module in rand.model.modules():
        # nn.MultiheadAttention keeps its own initialisation in a private `_reset_parameters`
        reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
        if reset is not None:
            reset()
        else:     # class tokens, position embeddings, projections held as bare parameters
            for p in module.parameters(recurse=False):
                torch.nn.init.normal_(p, std=0.02)
    return rand


def sanity(analyser: Analyser, images: Sequence[Image.Image], prompts: list[list[str]] | None = None,
           seed: int = 0) -> dict[str, float]:
    """Mean rank correlation of each map with the same map from a randomised model (Adebayo et al.)."""
    trained = analyser.analyse_batch(images, prompts)
    other = analyser.twin(randomised(analyser.backbone, seed)).analyse_batch(images, prompts)
    rhos: dict[str, list[float]] = {}
    for (_, maps_a), (_, maps_b) in zip(trained, other):
        by_b = {m.name: m for m in maps_b}
        for m in maps_a:
            if m.name in by_b and m.data.shape == by_b[m.name].data.shape:
                key = "cross" if m.kind == "cross" else m.name
                rhos.setdefault(key, []).append(spearman(m.data, by_b[m.name].data))
    return {k: round(float(np.mean(v)), 4) for k, v in rhos.items()}


def unusable(r: Result) -> str | None:
    """A one-line reason when this image cannot be drawn honestly: the model produced NaN or Inf, or
    --query lies outside it (a map of the nearest border cell would answer another question)."""
    if any(not np.isfinite(p.probability) for p in r.predictions):
        return "the model's output is not finite (NaN/Inf): check its weights"
    for m in r.maps:
        if not np.isfinite(m.data).all() or (m.weights is not None and not np.isfinite(m.weights).all()):
            return f"map {m.name} is not finite (NaN/Inf): check the model's weights"
    for m in r.maps:
        if m.meta.get("query_clamped") and r.size:
            x, y = m.meta.get("query_asked", (None, None))
            where = f" {x:g},{y:g}" if x is not None else ""
            return f"--query{where} lies outside this {r.size[0]}×{r.size[1]} image"
    return None
