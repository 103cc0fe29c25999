"""Time the receptive-field measurement (uncached) and the disk cache, each in its own process.

    python bench/receptive.py [--backbone resnet50] [--input-size 224] [--repeats 3]

Per repeat, a fresh process loads the random-init backbone (seed 0) and measures its default
layer with an empty cache (`measure`), then another fresh process reads it back from the disk
cache (`cached`). Wall and CPU seconds of the measurement alone (the load is excluded), and the
1-minute load average before each: on a shared machine the wall time follows the load. Writes
bench/results/<stamp>-receptive-<backbone>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time, warnings
sys.path.insert(0, {root!r})
from attnviz.backbones import load_backbone
from attnviz.pipeline.align import Aligner
warnings.simplefilter("ignore")
bb = load_backbone({backbone!r}, "none", input_size={size}, seed=0)
al = Aligner(bb)
t, c = time.perf_counter(), time.process_time()
g = al.geometry(bb.default_layer)
print(json.dumps({{"wall": time.perf_counter() - t, "cpu": time.process_time() - c, "measured": al.measured,
                  "layer": bb.default_layer, "grid": list(g.grid) if g else None}}))
"""


def child(backbone: str, size: int, cache: str) -> dict:
    """One process: load, then time Aligner.geometry of the default layer."""
    code = CHILD.format(root=str(ROOT), backbone=backbone, size=size)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "ATTNVIZ_CACHE": cache})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for k in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            load = os.getloadavg()[0]
            first = child(args.backbone, args.input_size, cache)
            second = child(args.backbone, args.input_size, cache)
        rows.append({"load_1min": round(load, 2), "measure": first, "cached": second})
        print(f"{k + 1}: load {load:.1f} · measure {first['wall']:.2f} s wall, {first['cpu']:.2f} s CPU "
              f"({first['measured']}) · cached {second['wall']:.3f} s ({second['measured'] or 'nothing measured'})")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = ROOT / "bench" / "results" / f"{stamp}-receptive-{args.backbone}.json"
    path.write_text(json.dumps({"backbone": args.backbone, "input_size": args.input_size,
                                "cores": os.cpu_count(), "runs": rows}, indent=1))
    print(f"written: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
