"""`attnviz demo`: generate scenes with known answers, run the normal pipeline, score the maps."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from attnviz.demo.vit_scores import VitReport, evaluate_vit
from attnviz.zoo.world import make_scenes
from attnviz.pipeline import RunReport, run
from attnviz.report.atomic import save_json, save_png
from attnviz.report.evaluate import Evaluation, evaluate_run, load_boxes

__all__ = ["DEMO_SEED", "write_scenes", "run_demo", "score_vit"]

DEMO_SEED = 7   # not a training seed: the demo shows scenes the model never saw


def write_scenes(folder: Path, n: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Write n scenes as PNGs into `folder`; return their labelled boxes by file name."""
    boxes: dict[str, list[dict[str, Any]]] = {}
    for i, scene in enumerate(make_scenes(n, seed)):
        name = f"scene_{i:03d}.png"
        save_png(folder / name, Image.fromarray(np.asarray(scene.image, dtype=np.uint8)))
        boxes[name] = [{"box": [float(v) for v in o.box], "label": o.caption} for o in scene.objects]
    return boxes


def run_demo(out: str | Path, scenes: int = 24, seed: int = DEMO_SEED, **options) -> tuple[RunReport, Evaluation]:
    """Scenes into OUT/scenes, maps of the demo model into OUT, pointing game into the manifest."""
    out = Path(out)
    boxes = write_scenes(out / "scenes", scenes, seed)
    save_json(out / "boxes.json", boxes)
    prompts = {name: [b["label"] for b in items] for name, items in boxes.items()}
    drawn = {name: [b["box"] for b in items] for name, items in boxes.items()}
    report = run([out / "scenes"], out, backbone="demo", prompts=prompts, boxes=drawn,
                 own=("scenes", "boxes.json", "evaluation.json", "demo_vit.json"), **options)
    return report, evaluate_run(out, load_boxes(out / "boxes.json"))


def score_vit(out: str | Path, scenes: int = 24, seed: int = DEMO_SEED) -> VitReport:
    """DemoViT on the same scenes: pointing and energy of raw class-token attention, rollout, GAE and
    LeGrad, and class specificity; written to OUT/demo_vit.json."""
    report = evaluate_vit(n=scenes, seed=seed)
    save_json(Path(out) / "demo_vit.json", report.record())
    return report
