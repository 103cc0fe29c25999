"""Video throughput and memory, as whole `attnviz run` processes (results JSON in bench/results/).

    python bench/video.py throughput --seconds 60 --backbone resnet50     # 720p clip vs its frames as images
    python bench/video.py memory --minutes 1,10                           # peak RSS on long 160×120 streams

throughput: a generated 1280×720 clip at 30 fps, `--fps 2` sampled (120 frames for 60 s), against the
same 120 frames saved as PNG images and run as a folder: frames per second vs images per second,
both with every kind and every output of their kind (videos vs PNGs).
memory: generated 160×120 clips at 10 fps of the given lengths, each run in a fresh process; peak RSS
(ru_maxrss of the child) should not grow with the length (frames are streamed).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ATTNVIZ = [sys.executable, "-m", "attnviz.cli"] if not (Path(sys.executable).parent / "attnviz").exists() \
    else [str(Path(sys.executable).parent / "attnviz")]


def scene(t: float, w: int, h: int) -> np.ndarray:
    """A frame at time t: a gradient background with a red disc and a blue square moving across it."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 120 + 60, yy / h * 120 + 60, np.full_like(xx, 110)], -1)
    cx, cy = (0.1 + 0.8 * ((t / 7) % 1)) * w, (0.5 + 0.3 * np.sin(t)) * h
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < (0.08 * h) ** 2] = (220, 40, 40)
    sx, sy = (0.9 - 0.8 * ((t / 5) % 1)) * w, 0.25 * h
    img[(abs(xx - sx) < 0.06 * h) & (abs(yy - sy) < 0.06 * h)] = (40, 60, 220)
    return img.astype(np.uint8)


def make_clip(path: Path, seconds: float, w: int, h: int, fps: int) -> None:
    """Write the moving-shapes clip (H.264, ultrafast: generating it should not dominate)."""
    import av
    frames = int(seconds * fps)
    cache: dict[int, np.ndarray] = {}
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for i in range(frames):
            key = i % (fps * 35)                  # the motion repeats every 35 s: frames reused
            if key not in cache:
                cache[key] = scene(key / fps, w, h)
            for p in s.encode(av.VideoFrame.from_ndarray(cache[key], format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def timed(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds and peak RSS (KiB) of a command, run in a fresh process; its stderr tail."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode); "
               "sys.stderr.write(p.stderr[-2000:])")
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    seconds, rss, rc = p.stdout.split()
    if rc != "0":
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}): {p.stderr}")
    return float(seconds), int(rss), p.stderr


def throughput(args: argparse.Namespace) -> dict:
    from PIL import Image
    from attnviz.video import Sampling, sample
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        (d / "video").mkdir()
        make_clip(d / "video" / "clip.mp4", args.seconds, 1280, 720, 30)
        made = time.perf_counter() - t0
        (d / "frames").mkdir()
        n = 0
        for f in sample(d / "video" / "clip.mp4", Sampling(fps=args.fps)):
            f.image.save(d / "frames" / f"frame{f.index:05d}.png")
            n += 1
        common = ["-b", args.backbone, "--weights", args.weights, "--batch-size", str(args.batch_size), "-q"]
        v_s, v_rss, _ = timed([*ATTNVIZ, "run", str(d / "video"), "-o", str(d / "out-video"), "--fps", str(args.fps),
                               *common])
        i_s, i_rss, _ = timed([*ATTNVIZ, "run", str(d / "frames"), "-o", str(d / "out-images"), *common])
        manifest = json.loads((d / "out-video" / "manifest.json").read_text())
        frames = manifest["images"][0]["video"]["frames"]
    return {"clip": {"seconds": args.seconds, "size": [1280, 720], "fps": 30, "generated_in_s": round(made, 1)},
            "sampled_frames": frames, "images": n,
            "video": {"wall_s": round(v_s, 2), "frames_per_s": round(frames / v_s, 3), "peak_rss_mib": v_rss // 1024},
            "images_run": {"wall_s": round(i_s, 2), "images_per_s": round(n / i_s, 3),
                           "peak_rss_mib": i_rss // 1024},
            "ratio_video_to_images": round((frames / v_s) / (n / i_s), 3)}


def memory(args: argparse.Namespace) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in [float(m) for m in args.minutes.split(",")]:
            d = Path(tmp) / f"m{minutes:g}"
            (d / "in").mkdir(parents=True)
            make_clip(d / "in" / "clip.mp4", minutes * 60, 160, 120, 10)
            s, rss, _ = timed([*ATTNVIZ, "run", str(d / "in"), "-o", str(d / "out"), "-b", args.backbone,
                               "--weights", args.weights, "--fps", str(args.fps), "--batch-size", str(args.batch_size),
                               "--size", "160", "-q"])
            entry = json.loads((d / "out" / "manifest.json").read_text())["images"][0]
            rows.append({"minutes": minutes, "frames": entry["video"]["frames"], "wall_s": round(s, 1),
                         "peak_rss_mib": rss // 1024,
                         "maps_npz_kib": (d / "out" / "clip" / "maps.npz").stat().st_size // 1024})
            print(rows[-1], flush=True)
    return {"clip": {"size": [160, 120], "fps": 10}, "runs": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("throughput", "memory"))
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--minutes", default="1,10")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--weights", default="none")
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tag", default="")
    args = p.parse_args()
    result = throughput(args) if args.mode == "throughput" else memory(args)
    record = {"bench": f"video-{args.mode}", "backbone": args.backbone, "weights": args.weights, "fps": args.fps,
              "batch_size": args.batch_size, "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
              "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"{dt.datetime.now():%Y%m%d-%H%M%S}-video-{args.mode}-{args.backbone}{'-' + args.tag if args.tag else ''}.json"
    (RESULTS / name).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
