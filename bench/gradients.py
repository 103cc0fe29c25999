"""Cost of the gradient kinds against the bare forward: `python bench/gradients.py [--images 64]`.

In one process, on random-init timm ViT-B/16 at 224 (the cost does not depend on the weights):
per batch of --batch-size images, the bare `model(x)` under no_grad, then `Analyser.analyse_batch`
with each gradient kind alone and with all of them (self-gae, self-legrad, gradcam on the last
block), default target (top-1). Prints the ratios to the bare forward and the peak RSS; writes
bench/results/gradients-<label>.json. Wall time on a shared machine: read ratios, not seconds.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnviz.backbones import load_backbone
from attnviz.pipeline import Analyser

CASES = {"self (raw)": ["self"], "self-gae": ["self-gae"], "self-legrad": ["self-legrad"],
         "gradcam": ["gradcam"], "all three": ["self-gae", "self-legrad", "gradcam"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--backbone", default="timm:vit_base_patch16_224")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone(args.backbone, "none", seed=0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for _ in range(args.images)]
    batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    layer = bb.default_layer
    times: dict[str, list[float]] = {}
    analysers = {name: Analyser(bb, kinds, layer=layer) for name, kinds in CASES.items()}
    x0 = analysers["self (raw)"].preprocess(batches[0])
    with torch.no_grad():
        bb.model(x0)                                       # warm-up
    for batch in batches:
        x = analysers["self (raw)"].preprocess(batch)
        t = time.perf_counter()
        with torch.no_grad():
            bb.model(x)
        times.setdefault("bare forward", []).append(time.perf_counter() - t)
        for name, an in analysers.items():
            t = time.perf_counter()
            an.analyse_batch(batch)
            times.setdefault(name, []).append(time.perf_counter() - t)
    bare = statistics.median(times["bare forward"])
    result = {"backbone": args.backbone, "images": args.images, "batch_size": args.batch_size,
              "median_s_per_batch": {k: round(statistics.median(v), 4) for k, v in times.items()},
              "ratio_to_bare": {k: round(statistics.median(v) / bare, 2) for k, v in times.items()},
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=1))
    out = Path(__file__).parent / "results" / f"gradients{'-' + args.label if args.label else ''}.json"
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
