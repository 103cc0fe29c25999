"""attnviz against a bare forward pass and two Grad-CAM libraries, as whole processes (see README).

    python bench/run.py --images 48 --backbone resnet50      # (a) bare, (b) attnviz, (c), (d)
    python bench/run.py --backbone demo --counts 10,2000      # demo throughput and peak RSS
    python bench/run.py --gpu                                 # ResNet-50 and ViT-B/16 on CUDA (needs a GPU)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LABELS = {"bare": "(a) bare torchvision forward", "bare-passive": "(a') bare, OMP_WAIT_POLICY=PASSIVE",
          "bare-tuned": "(a'') bare, (a') + collector paused",
          "attnviz": "(b) attnviz run, all kinds", "attnviz-before": "(b0) attnviz run at --before",
          "gradcam": "(c) pytorch-grad-cam GradCAM", "torchcam": "(d) TorchCAM GradCAM"}


def make_photos(folder: Path, n: int) -> None:
    """n photos ≤ 640 px from the 4 sample photos and simple transforms, as JPEG (same every run)."""
    from PIL import Image, ImageOps
    sources = sorted((ROOT / "sample_images").glob("*.jpg"))
    transforms = [lambda im: im, ImageOps.mirror, lambda im: im.rotate(90, expand=True),
                  lambda im: im.crop((im.width // 8, im.height // 8, im.width * 7 // 8, im.height)),
                  ImageOps.grayscale, ImageOps.flip, lambda im: ImageOps.posterize(im, 4),
                  lambda im: im.crop((0, 0, im.width * 3 // 4, im.height * 2 // 3))]
    sides = [640, 512, 600, 448, 320, 576]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as im:
            im = transforms[(i // len(sources)) % len(transforms)](im.convert("RGB")).convert("RGB")
        side = sides[(i // 3) % len(sides)]
        scale = min(1.0, side / max(im.size))
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.Resampling.LANCZOS)
        im.save(folder / f"photo_{i:04d}.jpg", quality=90)


def make_scenes(folder: Path, n: int) -> None:
    """n generated demo-world scenes (96×96 PNG)."""
    import numpy as np
    from PIL import Image
    from attnviz.zoo.world import make_scene
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    for i in range(n):
        img = np.asarray(make_scene(rng).image, dtype=np.uint8)
        Image.fromarray(img).save(folder / f"scene_{i:04d}.png")


def save_weights(path: Path, arch: str = "resnet50") -> None:
    """One random-init torchvision state_dict shared by every contestant (no downloads here)."""
    import torch
    import torchvision
    torch.manual_seed(0)
    torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), path)


def timed(cmd: list[str], extra_env: dict[str, str] | None = None, cwd: Path = ROOT) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one whole process; its output is shown only on failure.

    CPU seconds (user + system, all threads) move less than wall time on a busy machine."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra_env or {})
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        sys.stdout.write(out.decode(errors="replace")[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0   # ru_maxrss: KiB


def attnviz_cmd(inputs: Path, out: Path, backbone: str, weights: str, extra: list[str]) -> list[str]:
    """`attnviz run` as a user types it, all kinds and default outputs."""
    return [sys.executable, "-m", "attnviz.cli", "run", str(inputs), "-o", str(out), "-b", backbone,
            "--weights", weights, "-q", *extra]


def machine() -> dict:
    """Where the figures were measured."""
    import torch
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "commit": commit, "loadavg": os.getloadavg(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def compare(args: argparse.Namespace, work: Path) -> dict:
    """Mode 1: the four contestants, interleaved, median of --repeats whole-process runs."""
    photos, weights = work / "photos", work / "resnet50_random.pt"
    make_photos(photos, args.images)
    save_weights(weights)
    bs = ["--batch-size", str(args.batch_size)]
    cmds = {"bare": [sys.executable, str(ROOT / "bench" / "contestants.py"), "bare"],
            "gradcam": [sys.executable, str(ROOT / "bench" / "contestants.py"), "gradcam"],
            "torchcam": [sys.executable, str(ROOT / "bench" / "contestants.py"), "torchcam"]}
    cmds["bare-passive"] = cmds["bare"]          # (a'): the OpenMP setting attnviz's CLI makes for itself
    cmds["bare-tuned"] = cmds["bare"]            # (a''): and its paused collector during start-up
    names = [n for n in ["bare", "bare-passive", "bare-tuned", "attnviz", "gradcam", "torchcam"]
             if n in args.only.split(",")]
    if args.before:                       # another checkout's attnviz (`python -m` imports from its cwd)
        names.insert(names.index("attnviz") + 1 if "attnviz" in names else len(names), "attnviz-before")
    runs: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    if "attnviz" in names:     # untimed: fills the disk caches (receptive fields, colormap tables) if cold
        one = work / "warm-up"
        one.mkdir(exist_ok=True)
        (one / "photo.jpg").write_bytes(sorted(photos.glob("*.jpg"))[0].read_bytes())
        warm = timed(attnviz_cmd(one, work / "out_warm-up", "resnet50", str(weights), bs + args.attnviz_args.split()))
        print(f"  warm-up (1 photo, untimed in the table): {warm[0]:.2f} s wall", flush=True)
    for rep in range(args.repeats):
        for name in names:                                   # interleaved: a b c d a b c d
            out = work / f"out_{name}_{rep}"
            cmd = attnviz_cmd(photos, out, "resnet50", str(weights), bs + args.attnviz_args.split()) \
                if name.startswith("attnviz") else cmds[name] + [str(photos), str(weights), str(out), *bs]
            env = {"OMP_WAIT_POLICY": "PASSIVE"} if name == "bare-passive" else None
            if name == "bare-tuned":
                env = {"OMP_WAIT_POLICY": "PASSIVE", "BENCH_PAUSE_GC": "1"}
            if name == "attnviz-before":
                env = {"PYTHONPATH": str(args.before) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            runs[name].append(timed(cmd, env, args.before if name == "attnviz-before" else ROOT))
            print(f"  {name:9s} rep {rep}: {runs[name][-1][0]:7.2f} s wall, {runs[name][-1][1]:7.2f} s CPU",
                  flush=True)
    rows = {n: {"ms_per_image": 1000 * statistics.median(w for w, _, _ in r) / args.images,
                "cpu_ms_per_image": 1000 * statistics.median(c for _, c, _ in r) / args.images,
                "peak_rss_mb": max(m for _, _, m in r), "runs_s": [round(w, 3) for w, _, _ in r],
                "cpu_s": [round(c, 3) for _, c, _ in r]}
            for n, r in runs.items()}
    pairs = [(k, n) for k, n in [("a", "bare"), ("a'", "bare-passive"), ("a''", "bare-tuned"), ("b0", "attnviz-before"),
                                 ("c", "gradcam"), ("d", "torchcam")]
             if "attnviz" in rows and n in rows]
    ratios = {f"b/{k}": rows["attnviz"]["ms_per_image"] / rows[n]["ms_per_image"] for k, n in pairs}
    ratios.update({f"cpu b/{k}": rows["attnviz"]["cpu_ms_per_image"] / rows[n]["cpu_ms_per_image"]
                   for k, n in pairs})
    print(f"\n{args.images} photos ≤ 640 px, ResNet-50 at 224, batch {args.batch_size}, "
          f"median of {args.repeats} whole processes")
    print(f"{'contestant':34s} {'ms/image':>9s} {'CPU ms/image':>13s} {'peak RSS MB':>12s}")
    for n, r in rows.items():
        print(f"{LABELS[n]:34s} {r['ms_per_image']:9.1f} {r['cpu_ms_per_image']:13.1f} "
              f"{r['peak_rss_mb']:12.0f}")
    print("  ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
    return {"mode": "compare", "images": args.images, "batch_size": args.batch_size,
            "repeats": args.repeats, "attnviz_args": args.attnviz_args, "rows": rows, "ratios": ratios,
            "before": str(args.before) if args.before else None}


def demo(args: argparse.Namespace, work: Path) -> dict:
    """Mode 2: `attnviz run --backbone demo` over generated scenes: images/s and peak RSS per count."""
    rows = {}
    for n in [int(c) for c in args.counts.split(",")]:
        scenes = work / f"scenes_{n}"
        make_scenes(scenes, n)
        walls, cpus, rss = [], [], []
        for rep in range(args.repeats):
            wall, cpu, mb = timed(attnviz_cmd(scenes, work / f"out_demo_{n}_{rep}", "demo", "DEFAULT",
                                         ["--batch-size", str(args.batch_size)] + args.attnviz_args.split()))
            walls.append(wall)
            cpus.append(cpu)
            rss.append(mb)
            print(f"  demo {n:5d} images rep {rep}: {wall:7.2f} s, {n / wall:6.2f} images/s, "
                  f"CPU {cpu:.1f} s, peak RSS {mb:.0f} MB", flush=True)
        rows[str(n)] = {"images_per_s": n / statistics.median(walls), "peak_rss_mb": max(rss),
                        "runs_s": [round(w, 3) for w in walls], "cpu_s": [round(c, 3) for c in cpus]}
    return {"mode": "demo", "batch_size": args.batch_size, "repeats": args.repeats,
            "attnviz_args": args.attnviz_args, "rows": rows}


class GpuMemory:
    """Peak memory.used of GPU 0 (nvidia-smi every 100 ms) while a `with` block runs, in MiB above
    what was in use before it (a subprocess's peak, which torch.cuda cannot see from outside)."""

    def __init__(self) -> None:
        self.peak, self.base, self._stop = 0.0, self._used(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _used() -> float:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True).stdout.strip()
        except OSError:                     # no nvidia-smi (a dry run of the mode on the CPU)
            return float("nan")
        return float(out.splitlines()[0]) if out else float("nan")

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used() - self.base)
            self._stop.wait(0.1)

    def __enter__(self) -> "GpuMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def gpu(args: argparse.Namespace, work: Path) -> dict:
    """Mode 3 (issue 24): ResNet-50 and ViT-B/16 on CUDA, batch 64, all default kinds to JPEG, against
    the bare forward on the same GPU: images/s, the ratio, peak GPU memory (nvidia-smi)."""
    photos = work / "photos"
    make_photos(photos, args.images)
    rows: dict = {}
    for arch in args.archs.split(","):
        weights = work / f"{arch}_random.pt"
        save_weights(weights, arch)
        bs = ["--batch-size", str(args.batch_size)]
        cmds = {"bare": [sys.executable, str(ROOT / "bench" / "contestants.py"), "bare", str(photos), str(weights),
                         str(work / f"out_bare_{arch}"), *bs, "--arch", arch, "--device", args.device]}
        for rep in range(args.repeats):
            cmds["attnviz"] = attnviz_cmd(photos, work / f"out_{arch}_{rep}", arch, str(weights),
                                          bs + ["--device", args.device, "--format", "jpg", *args.attnviz_args.split()])
            for name, cmd in cmds.items():
                with GpuMemory() as mem:
                    wall, cpu, rss = timed(cmd)
                rows.setdefault(f"{arch} {name}", []).append((wall, cpu, rss, mem.peak))
                print(f"  {arch:9s} {name:8s} rep {rep}: {args.images / wall:7.1f} images/s, "
                      f"{wall:6.1f} s, GPU memory +{mem.peak:.0f} MiB", flush=True)
    out = {k: {"images_per_s": args.images / statistics.median(w for w, *_ in r),
               "cpu_ms_per_image": 1000 * statistics.median(c for _, c, *_ in r) / args.images,
               "peak_rss_mb": max(m for _, _, m, _ in r), "peak_gpu_mib": max(g for *_, g in r),
               "runs_s": [round(w, 3) for w, *_ in r]} for k, r in rows.items()}
    ratios = {arch: out[f"{arch} bare"]["images_per_s"] / out[f"{arch} attnviz"]["images_per_s"]
              for arch in args.archs.split(",")}
    print(f"\n{args.images} photos, batch {args.batch_size}, --device {args.device} --format jpg (attnviz)")
    for k, r in out.items():
        print(f"{k:22s} {r['images_per_s']:8.1f} images/s  GPU +{r['peak_gpu_mib']:.0f} MiB  "
              f"RSS {r['peak_rss_mb']:.0f} MB")
    print("  ".join(f"{a}: attnviz = {v:.2f} × bare" for a, v in ratios.items()))
    return {"mode": "gpu", "images": args.images, "batch_size": args.batch_size, "repeats": args.repeats,
            "attnviz_args": args.attnviz_args, "rows": out, "ratios": ratios}


def main(argv: list[str] | None = None) -> None:
    """Parse, run one mode, print, save JSON under bench/results/."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", choices=["resnet50", "demo"], default="resnet50")
    ap.add_argument("--images", type=int, default=48, help="photos (resnet50 mode)")
    ap.add_argument("--counts", default="10,2000", help="scene counts (demo mode)")
    ap.add_argument("--repeats", type=int, default=2, help="whole-process runs per contestant (median)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--only", default="bare,bare-passive,bare-tuned,attnviz,gradcam,torchcam", help="contestants to run")
    ap.add_argument("--attnviz-args", default="", help="extra `attnviz run` options, one string")
    ap.add_argument("--label", default="", help="a word saved with the figures (e.g. before, after)")
    ap.add_argument("--before", type=Path, help="also time `attnviz run` from this checkout (b0), interleaved")
    ap.add_argument("--work", type=Path, help="keep photos and outputs here (default: a temp folder)")
    ap.add_argument("--gpu", action="store_true", help="mode 3: CUDA, --archs, batch 64, 2,000 photos (defaults)")
    ap.add_argument("--archs", default="resnet50,vit_b_16", help="torchvision models of --gpu")
    ap.add_argument("--device", default="cuda", help="--gpu's device (cpu: a dry run of the mode)")
    args = ap.parse_args(argv)
    args.before = args.before.resolve() if args.before else None
    if args.gpu:
        args.images = args.images if "--images" in (argv or sys.argv) else 2000
        args.batch_size = args.batch_size if "--batch-size" in (argv or sys.argv) else 64
        args.repeats = args.repeats if "--repeats" in (argv or sys.argv) else 1
    with tempfile.TemporaryDirectory(prefix="attnviz-bench-") as tmp:
        work = args.work or Path(tmp)
        figures = gpu(args, work) if args.gpu else (compare if args.backbone == "resnet50" else demo)(args, work)
    figures.update(label=args.label, machine=machine(), command=" ".join(sys.argv))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    mode = "gpu" if args.gpu else args.backbone
    path = RESULTS / f"{stamp}-{mode}{'-' + args.label if args.label else ''}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
