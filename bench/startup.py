"""Time the commands that need no model (help, listings, refused arguments), each in a fresh process.

    python bench/startup.py [--repeats 5] [--root CHECKOUT] [--label before]

Each command runs `--repeats` times as `python -m attnviz.cli …` in a fresh interpreter (the
commands interleaved, so a busy machine slows them alike); the table shows the median wall and
CPU seconds (user + system) and whether the run left its output folder behind. `--root` times
another checkout of attnviz (put first on PYTHONPATH), e.g. the commit before a change. Writes
bench/results/<stamp>-startup[-label].json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = str(ROOT / "sample_images")

COMMANDS = [
    ["--help"], ["run", "--help"], ["kinds"], ["backbones", "--no-names"], ["backbones"],
    ["run", SAMPLES, "-o", "out", "--kinds", "chanel"],
    ["run", "absent.jpg", "-o", "out"],
    ["run", SAMPLES, "-o", "out", "--format", "gif"],
    ["run", SAMPLES, "-o", "out", "--backbone", "nope"],
]


def once(args: list[str], root: Path | None) -> tuple[float, float, bool]:
    """Wall and CPU seconds of one command in a fresh process, and whether it left `out` behind."""
    env = dict(os.environ)
    if root is not None:
        env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as cwd:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "attnviz.cli", *args], cwd=cwd, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        left = (Path(cwd) / "out").exists()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, left


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--root", type=Path, default=None, help="another attnviz checkout to time")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    runs: dict[str, list[tuple[float, float, bool]]] = {" ".join(c): [] for c in COMMANDS}
    for _ in range(a.repeats):
        for c in COMMANDS:
            runs[" ".join(c)].append(once(c, a.root))
    rows = []
    for name, r in runs.items():
        rows.append({"command": "attnviz " + name.replace(SAMPLES, "sample_images"),
                     "wall_s": round(statistics.median(x[0] for x in r), 3),
                     "cpu_s": round(statistics.median(x[1] for x in r), 3),
                     "left_out_folder": any(x[2] for x in r), "walls": [round(x[0], 3) for x in r]})
    width = max(len(r["command"]) for r in rows)
    print(f"{'command':{width}}  wall s  cpu s  out/ left")
    for r in rows:
        left = "yes" if r["left_out_folder"] else "no"
        print(f"{r['command']:{width}}  {r['wall_s']:6.2f}  {r['cpu_s']:5.2f}  {left}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = ROOT / "bench" / "results" / f"{stamp}-startup{'-' + a.label if a.label else ''}.json"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=a.root or ROOT, capture_output=True, text=True)
    dest.write_text(json.dumps({"rows": rows, "repeats": a.repeats, "root": str(a.root or ROOT),
                                "commit": commit.stdout.strip() or None, "cores": os.cpu_count(),
                                "load_average": os.getloadavg(),
                                "python": sys.version.split()[0]}, indent=1) + "\n")
    print(f"written: {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
