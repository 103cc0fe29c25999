"""Cost of the gradient kinds against the bare forward: `python bench/gradients.py [--images 256]`.

Time (default): in one process, on random-init timm ViT-B/16 at 224 (the cost does not depend on
the weights): per batch of --batch-size images, the bare `model(x)` under no_grad, then
`Analyser.analyse_batch` with each gradient kind alone and with all of them (self-gae,
self-legrad, gradcam on the last block), default target (top-1). Interleaved per batch, so a
shared machine's load slows every case alike; prints the median ratios to the bare forward, the
resident memory after every batch and the load average; writes bench/results/gradients-<label>.json.

Memory (`--memory 2000`): `Analyser.analyse_batch` with self-gae, self-legrad and gradcam on
`demo-vit`, batches of 8 generated 96×96 scenes, the resident memory after 104 images and every
200 (flat: no graph, attention or gradient kept from one batch to the next). Writes
bench/results/gradients-memory<-label>.json. Wall time on a shared machine: read ratios, not seconds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
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
RESULTS = Path(__file__).parent / "results"


def rss_mib() -> float:
    """Resident memory of this process now (MiB)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def where() -> dict:
    """When, on how loaded a machine, with which threads."""
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "loadavg_start": [round(v, 2) for v in os.getloadavg()]}


def cost(args: argparse.Namespace, out: Path) -> dict:
    """Interleaved per-batch timings of the bare forward and each gradient case (`out` rewritten
    after every batch, so a run stopped early keeps what it measured)."""
    record = where()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone(args.backbone, "none", seed=0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for _ in range(args.images)]
    batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    times: dict[str, list[float]] = {}
    rss: list[float] = []
    analysers = {name: Analyser(bb, kinds, layer=bb.default_layer) for name, kinds in CASES.items()}
    with torch.no_grad():
        bb.model(analysers["self (raw)"].preprocess(batches[0]))          # warm-up
    result: dict = {}
    for k, batch in enumerate(batches):
        x = analysers["self (raw)"].preprocess(batch)
        t = time.perf_counter()
        with torch.no_grad():
            bb.model(x)
        times.setdefault("bare forward", []).append(time.perf_counter() - t)
        for name, an in analysers.items():
            t = time.perf_counter()
            an.analyse_batch(batch)
            times.setdefault(name, []).append(time.perf_counter() - t)
        rss.append(round(rss_mib(), 1))
        print(f"batch {k + 1}/{len(batches)}: " + ", ".join(f"{n} {v[-1]:.2f}s" for n, v in times.items())
              + f"; RSS {rss[-1]:.0f} MiB; load {os.getloadavg()[0]:.1f}", flush=True)
        bare = statistics.median(times["bare forward"])
        result = {**record, "backbone": args.backbone, "images_asked": args.images,
                  "images_done": sum(len(b) for b in batches[:k + 1]), "batch_size": args.batch_size,
                  "median_s_per_batch": {n: round(statistics.median(v), 4) for n, v in times.items()},
                  "ratio_to_bare": {n: round(statistics.median(v) / bare, 2) for n, v in times.items()},
                  "ratio_to_bare_total": {n: round(sum(v) / sum(times["bare forward"]), 2) for n, v in times.items()},
                  "median_of_batch_ratios": {
                      n: round(statistics.median(t / b for t, b in zip(v, times["bare forward"])), 2)
                      for n, v in times.items() if n != "bare forward"},
                  "ratio_to_bare_per_batch": {n: [round(a / b, 2) for a, b in zip(v, times["bare forward"])]
                                              for n, v in times.items() if n != "bare forward"},
                  "rss_mib_after_batch": rss,
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "loadavg_end": [round(v, 2) for v in os.getloadavg()]}
        out.write_text(json.dumps(result, indent=1))
    return result


def memory(args: argparse.Namespace, out: Path) -> dict:
    """Resident memory of `Analyser.analyse_batch` with the gradient kinds over many small images
    (`out` rewritten at every checkpoint, so a run stopped early keeps what it measured)."""
    from attnviz.zoo.world import make_scene
    kinds = ["self-gae", "self-legrad", "gradcam"]
    record = {**where(), "backbone": "demo-vit", "kinds": kinds, "batch_size": 8, "images": args.memory,
              "rss_mib_by_images": {}}
    bb = load_backbone("demo-vit")
    an = Analyser(bb, kinds, layer=bb.default_layer)
    rng = np.random.default_rng(11)
    done = 0
    while done < args.memory:
        batch = [Image.fromarray(np.asarray(make_scene(rng).image, np.uint8)) for _ in range(8)]
        an.analyse_batch(batch)                       # the maps are dropped, as a run drops them once written
        done += len(batch)
        if done % 200 == 0 or done == 104:
            rss = record["rss_mib_by_images"]
            rss[str(done)] = round(rss_mib(), 1)
            record.update(images_done=done, growth_mib_104_to_last=round(rss[str(done)] - rss["104"], 1),
                          peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                          loadavg_end=[round(v, 2) for v in os.getloadavg()])
            out.write_text(json.dumps(record, indent=1))
            print(done, rss[str(done)], flush=True)
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backbone", default="timm:vit_base_patch16_224")
    ap.add_argument("--memory", type=int, default=0, help="images, e.g. 2000: resident memory of the gradient kinds instead")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    out = RESULTS / f"gradients{'-memory' if args.memory else ''}{'-' + args.label if args.label else ''}.json"
    result = memory(args, out) if args.memory else cost(args, out)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("rss_mib_after_batch", "ratio_to_bare_per_batch")},
                     indent=1))


if __name__ == "__main__":
    main()
