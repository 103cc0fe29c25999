"""Cost of the gradient kinds against the bare forward: `python bench/gradients.py [--images 256]`.

Time (default): in one process, on random-init timm ViT-B/16 at 224 (the cost does not depend on
the weights): per batch of --batch-size images, the bare `model(x)` under no_grad, then
`Analyser.analyse_batch` with each gradient kind alone and with all of them (self-gae,
self-legrad, gradcam on the last block), default target (top-1). Interleaved per batch, so a
shared machine's load slows every case alike; prints the median ratios to the bare forward, the
resident memory after every batch and the load average; writes bench/results/gradients-<label>.json.

Memory (`--memory 100,2000`): `attnviz run --kinds self-gae,self-legrad,gradcam` as a user types
it, on that many generated 96×96 demo scenes through `demo-vit`; the peak RSS of each whole
process (flat: the 2,000-image run peaks where the 100-image one does). Writes
bench/results/gradients-memory<-label>.json. Wall time on a shared machine: read ratios, not seconds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
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


def cost(args: argparse.Namespace) -> dict:
    """Interleaved per-batch timings of the bare forward and each gradient case."""
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
    return {**record, "backbone": args.backbone, "images": args.images, "batch_size": args.batch_size,
            "median_s_per_batch": {k: round(statistics.median(v), 4) for k, v in times.items()},
            "ratio_to_bare": {k: round(statistics.median(v) / bare, 2) for k, v in times.items()},
            "ratio_to_bare_total": {k: round(sum(v) / sum(times["bare forward"]), 2) for k, v in times.items()},
            "rss_mib_after_batch": rss, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "loadavg_end": [round(v, 2) for v in os.getloadavg()]}


def memory(args: argparse.Namespace) -> dict:
    """Peak RSS of whole `attnviz run` processes with the gradient kinds, per image count."""
    from attnviz.zoo.world import make_scene
    record = {**where(), "backbone": "demo-vit", "kinds": "self-gae,self-legrad,gradcam", "runs": {}}
    counts = [int(c) for c in args.memory.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(11)
        src = Path(tmp) / "scenes"
        src.mkdir()
        for i in range(max(counts)):
            Image.fromarray(np.asarray(make_scene(rng).image, np.uint8)).save(src / f"scene_{i:04d}.png")
        for n in counts:
            inputs = Path(tmp) / f"in{n}"
            inputs.mkdir()
            for p in sorted(src.iterdir())[:n]:
                (inputs / p.name).symlink_to(p)
            cmd = [sys.executable, "-m", "attnviz.cli", "run", str(inputs), "-o", str(Path(tmp) / f"out{n}"),
                   "-b", "demo-vit", "--kinds", record["kinds"], "-q"]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"failed: {' '.join(cmd)}\n{out.decode(errors='replace')[-2000:]}")
            record["runs"][str(n)] = {"wall_s": round(time.perf_counter() - t0, 1),
                                      "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
            print(n, record["runs"][str(n)], flush=True)
    record["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backbone", default="timm:vit_base_patch16_224")
    ap.add_argument("--memory", default="", help="image counts, e.g. 100,2000: peak RSS of `attnviz run` instead")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    result = memory(args) if args.memory else cost(args)
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mib_after_batch"}, indent=1))
    out = RESULTS / f"gradients{'-memory' if args.memory else ''}{'-' + args.label if args.label else ''}.json"
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
