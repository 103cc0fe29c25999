"""Does DemoViT's attention point at the right object? Raw class-token attention, rollout, GAE, LeGrad.

On held-out scenes through the product pipeline (`Analyser` on `demo-vit`), scored as
`attnviz.demo.pointing` scores DemoNet (the manifest's peak, boxes of the world):
- pointing game and energy in the boxes of `self` (class-token attention of the last block),
  `self-rollout`, `self-gae` and `self-legrad` (top-1 target): the peak on any object;
- class specificity: on scenes with two or more objects, the map for each object's class
  (`--target` that class) must peak on THAT object. Raw attention is one map for every class:
  its figure is the same test applied to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from attnviz.backbones import Backbone, load_backbone
from attnviz.demo.pointing import HELDOUT_SEED, score
from attnviz.metrics import Box
from attnviz.pipeline import Analyser
from attnviz.text import slug
from attnviz.zoo.world import CATEGORIES, make_scenes

__all__ = ["ANY", "SPECIFIC", "VitReport", "evaluate_vit"]

ANY = {"self": "self", "self-rollout": "self-rollout", "self-gae": "self-gae", "self-legrad": "self-legrad"}
SPECIFIC = ("self", "self-gae", "self-legrad")


@dataclass
class VitReport:
    """Held-out figures of DemoViT (rates in [0, 1])."""

    n_scenes: int
    seed: int
    pointing: dict[str, float]
    energy: dict[str, float]
    chance: dict[str, float]
    specificity: dict[str, float] = field(default_factory=dict)   # peak on the targeted object
    specific_trials: int = 0
    presence_exact: float = 0.0

    def table(self) -> str:
        lines = ["| map | pointing game (any object) | energy in box | chance | class specificity |",
                 "|---|---|---|---|---|"]
        for k in ANY:
            spec = f"{self.specificity[k]:.3f}" if k in self.specificity else "—"
            lines.append(f"| {k} | {self.pointing[k]:.3f} | {self.energy[k]:.3f} | {self.chance[k]:.3f} | {spec} |")
        return "\n".join(lines) + f"\n\nclass specificity over {self.specific_trials} (scene, object) pairs " \
                                  f"of scenes with 2–3 objects"

    def record(self) -> dict[str, Any]:
        return {"scenes": self.n_scenes, "seed": self.seed, "pointing": self.pointing, "energy": self.energy,
                "chance": self.chance, "specificity": self.specificity,
                "specific_trials": self.specific_trials, "presence_exact": self.presence_exact}


def evaluate_vit(backbone: Backbone | None = None, n: int = 200, seed: int = HELDOUT_SEED,
                 batch: int = 25) -> VitReport:
    """Pointing, energy and class specificity of DemoViT's maps on `n` held-out scenes."""
    bb = backbone or load_backbone("demo-vit")
    # every class as a target: each scene's maps for its own objects' classes are among them
    analyser = Analyser(bb, ["self", "self-gae", "self-legrad"], targets=tuple(CATEGORIES))
    top1 = Analyser(bb, ["self-gae", "self-legrad"])
    scenes = make_scenes(n, seed, size=bb.input_size)
    hits = {k: 0.0 for k in ANY}
    energy = {k: 0.0 for k in ANY}
    chance = {k: 0.0 for k in ANY}
    spec = {k: 0 for k in SPECIFIC}
    trials = exact = 0
    for start in range(0, n, batch):
        group = scenes[start:start + batch]
        images = [Image.fromarray(np.asarray(s.image, np.uint8)) for s in group]
        every = analyser.analyse_batch(images)
        tops = top1.analyse_batch(images)
        with torch.no_grad():
            presence = bb.model(analyser.preprocess(images)) > 0
        exact += sum(bool((p.cpu().numpy() == (s.presence() > 0.5)).all()) for p, s in zip(presence, group))
        for scene, (_, maps), (_, top_maps) in zip(group, every, tops):
            by_name = {m.name: m for m in [*maps, *top_maps]}
            size = (scene.image.shape[1], scene.image.shape[0])
            boxes = [Box(*o.box) for o in scene.objects]
            for k, name in ANY.items():
                hit, e, c = score(by_name[name], boxes, size)
                hits[k] += hit
                energy[k] += e
                chance[k] += c
            if len(scene.objects) < 2:
                continue
            for o in scene.objects:
                trials += 1
                for k in SPECIFIC:
                    name = k if k == "self" else f"{k}-{slug(o.category)}"
                    spec[k] += score(by_name[name], [Box(*o.box)], size)[0]
    return VitReport(n_scenes=n, seed=seed, pointing={k: v / n for k, v in hits.items()},
                     energy={k: v / n for k, v in energy.items()}, chance={k: v / n for k, v in chance.items()},
                     specificity={k: v / max(trials, 1) for k, v in spec.items()}, specific_trials=trials,
                     presence_exact=exact / n)
