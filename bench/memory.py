"""Where `attnviz run`'s memory goes as a folder grows: one in-process run, RSS sampled per batch.

    python bench/memory.py --scenes 1000                      # the demo model, default outputs
    python bench/memory.py --scenes 1000 --off manifest,grid  # with parts switched off (see PARTS)
    python bench/memory.py --scenes 1000 --trim               # glibc malloc_trim(0) after each batch

Prints RSS (and tracemalloc's Python heap with --tracemalloc) at every 10 % of the run, the peak,
and the slope of RSS over the second half of the run in MB per 1,000 images (a least-squares
line through the per-batch samples): the growth that is left once the warm-up is over.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from run import make_scenes  # noqa: E402  (bench/run.py: the same scenes as the demo bench)

PARTS = ("gallery", "summary", "manifest", "npz", "overlays", "grid", "charts", "images", "results")


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB (Linux)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def switch_off(parts: set[str]) -> None:
    """Replace the named parts of a run by no-ops (to see what each one keeps)."""
    from PIL import Image
    import attnviz.pipeline.runner as runner
    import attnviz.report.folder as folder
    import attnviz.report.manifest as manifest
    import attnviz.report.outputs as outputs
    tiny = Image.new("RGB", (2, 2))
    if "gallery" in parts:
        folder.write_gallery = lambda *a, **k: None
    if "summary" in parts:
        folder.write_summary_csv = lambda *a, **k: None
    if "manifest" in parts:                   # the records are still kept, never written
        manifest.Manifest.save = lambda self, *a, **k: None
    if "npz" in parts:
        outputs.save_npz = lambda *a, **k: None
    if "overlays" in parts:
        outputs.map_picture = lambda *a, **k: tiny
    if "grid" in parts:
        outputs.grid_pictures = lambda *a, **k: []
    if "charts" in parts:
        outputs.channel_bars = lambda *a, **k: tiny
        outputs.channel_depth = lambda *a, **k: tiny
    if "images" in parts:                     # drawn, not encoded nor written
        outputs.save_image = lambda *a, **k: None
    if "results" in parts:                    # the report's list of Results stays empty
        original = runner._record

        def record(done, manifest, report, *a, **k):
            original(done, manifest, report, *a, **k)
            report.results.clear()
        runner._record = record


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--off", default="", help=f"parts to switch off: {','.join(PARTS)}")
    ap.add_argument("--trim", action="store_true", help="malloc_trim(0) after every batch")
    ap.add_argument("--gc", action="store_true", help="gc.collect() after every batch")
    ap.add_argument("--tracemalloc", action="store_true", help="also sample the Python heap (slower)")
    ap.add_argument("--work", default=None, help="folder for scenes and outputs (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the samples here")
    args = ap.parse_args(argv)
    parts = {p for p in args.off.split(",") if p}
    if parts - set(PARTS):
        ap.error(f"unknown parts {sorted(parts - set(PARTS))}; choose from {PARTS}")
    from attnviz.pipeline import run
    switch_off(parts)
    libc = ctypes.CDLL("libc.so.6") if args.trim else None
    work = Path(args.work or tempfile.mkdtemp(prefix="attnviz-memory-"))
    scenes = work / f"scenes_{args.scenes}"
    if not scenes.exists():
        make_scenes(scenes, args.scenes)
    out = work / f"out_{os.getpid()}"
    if args.tracemalloc:
        tracemalloc.start()
    samples: list[tuple[int, float, float]] = []     # (images done, RSS MB, Python heap MB)
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        if args.gc:
            gc.collect()
        if libc is not None:
            libc.malloc_trim(0)
        heap = tracemalloc.get_traced_memory()[0] / 2 ** 20 if args.tracemalloc else float("nan")
        samples.append((done, rss_mb()[0], heap))

    t0 = time.perf_counter()
    report = run([scenes], out, backbone="demo", weights="DEFAULT", batch_size=args.batch_size,
                 workers=args.workers, on_batch=on_batch, command="bench/memory.py")
    seconds = time.perf_counter() - t0
    end_rss, peak = rss_mb()
    del report
    n = np.array([s[0] for s in samples], float)
    rss = np.array([s[1] for s in samples])
    half = n >= n[-1] / 2
    slope = float(np.polyfit(n[half], rss[half], 1)[0] * 1000) if half.sum() > 2 else float("nan")
    heap = np.array([s[2] for s in samples])
    heap_slope = float(np.polyfit(n[half], heap[half], 1)[0] * 1000) if args.tracemalloc and half.sum() > 2 \
        else float("nan")
    print(f"{args.scenes} scenes, off={sorted(parts) or '-'} trim={args.trim} gc={args.gc}: {seconds:.1f} s")
    for k in range(1, 11):
        i = int(np.searchsorted(n, n[-1] * k / 10))
        print(f"  {int(n[i]):6d} images  RSS {rss[i]:7.1f} MB" + (f"  heap {heap[i]:6.1f} MB" if args.tracemalloc else ""))
    print(f"  after the reports: RSS {end_rss:.1f} MB; peak (VmHWM) {peak:.1f} MB")
    print(f"  slope over the second half: RSS {slope:+.1f} MB / 1,000 images"
          + (f", heap {heap_slope:+.1f} MB / 1,000 images" if args.tracemalloc else ""))
    figures = {"scenes": args.scenes, "off": sorted(parts), "trim": args.trim, "gc": args.gc, "seconds": seconds,
               "peak_mb": peak, "end_mb": end_rss, "slope_mb_per_1000": slope, "heap_slope_mb_per_1000": heap_slope,
               "samples": samples}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
