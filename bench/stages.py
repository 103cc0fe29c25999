"""Where the time of `attnviz run` goes, stage by stage, in one process (see bench/README.md).

    python bench/stages.py --backbone resnet50 --images 16      # random-init ResNet-50 at 224
    python bench/stages.py --backbone demo --images 64          # the demo model

Every stage is timed exclusively (a stage inside another is not counted twice) with the
writer in this thread (`workers=0`), so the figures add up to the run; then the same images run
as `attnviz run` does (writer threads on), and the main thread's waits for the writers are shown.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")     # as the attnviz CLI does, before torch loads
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

TOTAL: dict[str, float] = defaultdict(float)
COUNT: dict[str, int] = defaultdict(int)
_STACK: list[list[float]] = []           # [children seconds] of the open stages (main thread only)


@contextlib.contextmanager
def stage(name: str):
    """Time a stage exclusively: what nested stages took is charged to them, not to this one."""
    _STACK.append([0.0])
    t0 = time.perf_counter()
    try:
        yield
    finally:
        took = time.perf_counter() - t0
        children = _STACK.pop()[0]
        TOTAL[name] += took - children
        COUNT[name] += 1
        if _STACK:
            _STACK[-1][0] += took


def wrap(owner, attr: str, name: str | None = None, result=None) -> None:
    """Replace owner.attr by a timed call (`result(value)` may wrap what it returns)."""
    fn = getattr(owner, attr)

    def timed(*a, **k):
        with stage(name or attr):
            value = fn(*a, **k)
        return result(value) if result else value
    setattr(owner, attr, timed)


def instrument(analyser) -> None:
    """Put timers on the stages of the pipeline and of the writer (module attributes, as used)."""
    import attnviz.pipeline.analyser as an
    import attnviz.pipeline.batch as batch
    import attnviz.render  # noqa: F401
    ov, gr = sys.modules["attnviz.render.overlay"], sys.modules["attnviz.render.grid"]   # names shadowed
    import attnviz.report.atomic as atomic
    import attnviz.report.outputs as outputs
    import attnviz.report.manifest as manifest
    import attnviz.render.band as band

    wrap(an, "load_image", "decode")
    wrap(an, "identity", "decode: file identity")
    wrap(an.Analyser, "to_tensor", "preprocess: resize to input")
    wrap(an.Analyser, "normalise", "preprocess: normalise")
    bb = analyser.backbone
    wrap(bb, "forward", "forward (with capture hooks)")
    for kind in analyser.kinds:
        wrap(kind, "compute", f"maps: {kind.name}")
    wrap(analyser.aligner, "stamp", "alignment: stamp geometry")
    wrap(an.Analyser, "_predictions", "predictions")
    wrap(batch.checks, "unusable", "checks")
    wrap(ov, "heat", "upsample (receptive fields / bilinear)")
    wrap(ov, "_unit", "normalise map")
    wrap(ov, "_indices", "colormap: indices")
    wrap(ov, "fit", "fit photo to --size")
    wrap(outputs, "fit", "fit photo to --size")
    wrap(gr, "fit", "grid: fit photo")
    paint = lambda p: (lambda *a, **k: _paint(p, *a, **k))  # noqa: E731
    wrap(outputs, "blender", "colormap/blend: prepare", result=paint)
    wrap(gr, "blender", "colormap/blend: prepare", result=paint)
    wrap(outputs, "banded", "band")
    wrap(band, "draw_band", "band")
    wrap(outputs, "ring", "query ring")
    wrap(outputs, "channel_bars", "chart: channel bars")
    wrap(outputs, "channel_depth", "chart: channel depth")
    wrap(outputs, "grid", "grid (drawing)")
    wrap(outputs, "map_entry", "manifest: map entry")
    wrap(atomic, "encode_png", "encode: png")
    wrap(atomic, "_npz", "npz")
    wrap(atomic, "write_atomic", "write files (open/rename)")
    wrap(manifest.Manifest, "save", "manifest.json")
    for fmt in ("jpg", "webp"):
        atomic.FORMATS[fmt] = (fmt, dict(atomic.FORMATS[fmt][1]))
    real_save = atomic.Image.Image.save

    def save(self, fp, *a, **k):
        with stage(f"encode: {k.get('format', 'png').lower()}"):
            return real_save(self, fp, *a, **k)
    atomic.Image.Image.save = save


def _paint(p, *a, **k):
    with stage("colormap/blend: lookup"):
        return p(*a, **k)


def main(argv: list[str] | None = None) -> None:
    """Profile one run; print the table and save bench/results/<date>-profile-<backbone>.json."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", choices=["resnet50", "demo"], default="resnet50")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--format", default="png")
    ap.add_argument("--save", action="store_true", help="save the figures under bench/results/")
    args = ap.parse_args(argv)
    import torch
    import run as bench_run
    from attnviz.pipeline.analyser import Analyser
    from attnviz.pipeline.runner import run
    from attnviz.report.outputs import Style
    from attnviz.report.writer import Writer

    with tempfile.TemporaryDirectory(prefix="attnviz-profile-") as tmp:
        work = Path(tmp)
        if args.backbone == "resnet50":
            bench_run.make_photos(work / "in", args.images)
            bench_run.save_weights(work / "w.pt")
            name, weights = "resnet50", str(work / "w.pt")
        else:
            bench_run.make_scenes(work / "in", args.images)
            name, weights = "demo", "DEFAULT"
        t0 = time.perf_counter()
        analyser = Analyser(name, weights=weights)
        loading = time.perf_counter() - t0
        x = torch.zeros(args.batch_size, 3, analyser.backbone.input_size, analyser.backbone.input_size)
        with torch.inference_mode():
            analyser.backbone.model(x)                       # warm-up
            t0 = time.perf_counter()
            for _ in range(max(1, args.images // args.batch_size)):
                analyser.backbone.model(x)
            bare = (time.perf_counter() - t0) / (max(1, args.images // args.batch_size) * args.batch_size)
        instrument(analyser)
        import attnviz.pipeline.runner as runner
        runner.Analyser = lambda *a, **k: analyser          # run() uses this (instrumented) analyser
        style = Style(format=args.format)
        t0 = time.perf_counter()
        run([work / "in"], work / "out0", backbone=name, workers=0, batch_size=args.batch_size, style=style)
        serial = time.perf_counter() - t0
        stages = dict(TOTAL)
        TOTAL.clear()
        waits = defaultdict(float)
        for meth in ("submit", "drain"):
            fn = getattr(Writer, meth)

            def waited(self, *a, _fn=fn, _m=meth, **k):
                t = time.perf_counter()
                out = _fn(self, *a, **k)
                if _m == "drain":
                    out = list(out)
                waits[_m] += time.perf_counter() - t
                return out
            setattr(Writer, meth, waited)
        cpu0, t0 = time.process_time(), time.perf_counter()
        run([work / "in"], work / "out1", backbone=name, batch_size=args.batch_size, style=style)
        threaded, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = args.images
    rows = sorted(((k, 1000 * v / n) for k, v in stages.items()), key=lambda kv: -kv[1])
    print(f"{name}: {n} images, batch {args.batch_size}, --format {args.format}, torch threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}; loading {loading:.2f} s (once)")
    print(f"bare forward (inference_mode, no hooks): {1000 * bare:.1f} ms/image")
    print(f"{'stage (exclusive, writer in the main thread)':48s} {'ms/image':>9s}")
    for k, v in rows:
        print(f"  {k:46s} {v:9.2f}")
    print(f"  {'sum of stages':46s} {sum(v for _, v in rows):9.2f}")
    print(f"whole run, writer in the main thread: {1000 * serial / n:.1f} ms/image")
    print(f"whole run, writer threads (default):  {1000 * threaded / n:.1f} ms/image, CPU {1000 * cpu / n:.1f} "
          f"ms/image; main thread waited {1000 * waits['submit'] / n:.1f} (queue full) + "
          f"{1000 * waits['drain'] / n:.1f} (last batch) ms/image")
    if args.save:
        import datetime as dt
        path = ROOT / "bench" / "results" / f"{dt.datetime.now():%Y%m%d-%H%M%S}-stages-{name}-{args.format}.json"
        path.write_text(json.dumps({"mode": "profile", "backbone": name, "images": n, "format": args.format,
                                    "batch_size": args.batch_size, "bare_ms": 1000 * bare,
                                    "stages_ms": dict(rows), "serial_ms": 1000 * serial / n,
                                    "threaded_ms": 1000 * threaded / n, "cpu_ms": 1000 * cpu / n,
                                    "waits_ms": {k: 1000 * v / n for k, v in waits.items()},
                                    "loading_s": loading, "machine": bench_run.machine()}, indent=2) + "\n")
        print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
