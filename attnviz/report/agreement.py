"""Do the kinds agree? Per image and pair of kinds: Spearman's ρ and the IoU of the top-20 % regions.

`OUT/agreement.csv` holds every image × pair; `OUT/agreement.png` the folder means (kinds × kinds).
Maps of different resolutions are compared on the finer grid (bilinear upsampling of the coarser).
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from attnviz.geometry import Geometry
from attnviz.render.overlay import heat
from attnviz.metrics import spearman
from attnviz.render.band import banded
from attnviz.report.atomic import save_png
from attnviz.report.tables import load_maps, write_csv

__all__ = ["TOP_SHARE", "top_region", "top_iou", "pairs_of", "agreement_rows", "mean_agreement",
           "write_agreement"]

TOP_SHARE = 0.2    # the "top region" of a map: its 20 % highest cells
COLUMNS = ["source", "output", "kind_a", "kind_b", "map_a", "map_b", "spearman", "top20_iou"]


def top_region(m: np.ndarray, share: float = TOP_SHARE) -> np.ndarray:
    """Boolean mask of the round(share·N) highest cells (at least one; ties: first in row-major order)."""
    flat = np.asarray(m, np.float64).ravel()
    k = max(1, int(round(share * flat.size)))
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(-flat, kind="stable")[:k]] = True
    return mask.reshape(np.shape(m))


def top_iou(a: np.ndarray, b: np.ndarray, share: float = TOP_SHARE) -> float:
    """Intersection over union of the two maps' top regions (same shape)."""
    ra, rb = top_region(a, share), top_region(b, share)
    return float((ra & rb).sum() / (ra | rb).sum())


def _common(a: np.ndarray, b: np.ndarray, ga: Geometry | None = None, gb: Geometry | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Both maps on the finer of their grids (max height, max width); a coarser map is spread as it
    is drawn (`heat`: by its cells' receptive fields when its layer has a geometry)."""
    h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
    fit = lambda m, g: m if m.shape == (h, w) else heat(m, h, w, g)   # noqa: E731
    return fit(a, ga), fit(b, gb)


def pairs_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """One map per kind (the map named after its kind, else the kind's first map), in order."""
    chosen: dict[str, dict[str, Any]] = {}
    for m in entry.get("maps", []):
        if m["kind"] not in chosen or m["name"] == m["kind"]:
            chosen[m["kind"]] = m
    return list(chosen.values())


def agreement_rows(out: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ok image × pair of kinds: Spearman's ρ and the top-20 % IoU of their maps."""
    rows = []
    for image in manifest.get("images", []):
        if image.get("status") != "ok" or "video" in image:     # videos: maps over time, not compared here
            continue
        arrays = load_maps(out, image)
        maps = [m for m in pairs_of(image) if m.get("npz_key") in arrays]
        for ma, mb in itertools.combinations(maps, 2):
            a, b = _common(arrays[ma["npz_key"]], arrays[mb["npz_key"]],
                           Geometry.from_record(ma.get("geometry")), Geometry.from_record(mb.get("geometry")))
            rows.append({"source": image["source"], "output": image["output"], "kind_a": ma["kind"],
                         "kind_b": mb["kind"], "map_a": ma["name"], "map_b": mb["name"],
                         "spearman": round(spearman(a, b), 6), "top20_iou": round(top_iou(a, b), 6)})
    return rows


def mean_agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Folder means: {"kinds": [...], "spearman": K×K, "top20_iou": K×K, "images": n} (diagonal 1)."""
    kinds = list(dict.fromkeys(k for r in rows for k in (r["kind_a"], r["kind_b"])))
    index = {k: i for i, k in enumerate(kinds)}
    result: dict[str, Any] = {"kinds": kinds, "images": len({r["output"] for r in rows})}
    for key in ("spearman", "top20_iou"):
        sums, counts = np.zeros((len(kinds),) * 2), np.zeros((len(kinds),) * 2)
        for r in rows:
            i, j = index[r["kind_a"]], index[r["kind_b"]]
            for p, q in ((i, j), (j, i)):
                sums[p, q] += r[key]
                counts[p, q] += 1
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        np.fill_diagonal(mean, 1.0)
        result[key] = [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in mean]
    return result


def _heatmap(mean: dict[str, Any], title: str) -> Image.Image:
    """Two kinds × kinds panels (ρ on −1…1, IoU on 0…1), each cell annotated with its value."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg   # here: only --stats draws a figure (~0.4 s)
    from matplotlib.figure import Figure
    kinds = mean["kinds"]
    n = len(kinds)
    side = 1.2 + 0.55 * n
    fig = Figure(figsize=(2 * side + 1.0, side + 0.6), dpi=100)
    for p, (key, label, lo, cmap) in enumerate((("spearman", "Spearman ρ", -1.0, "RdBu_r"),
                                                ("top20_iou", "IoU of top-20 % regions", 0.0, "viridis"))):
        ax = fig.add_subplot(1, 2, p + 1)
        values = np.array([[np.nan if v is None else v for v in row] for row in mean[key]], float)
        im = ax.imshow(values, vmin=lo, vmax=1.0, cmap=cmap)
        ax.set_xticks(range(n), kinds, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), kinds, fontsize=8)
        for i, j in itertools.product(range(n), range(n)):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
        ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy(), "RGB")


def write_agreement(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write OUT/agreement.csv and (with two kinds or more) OUT/agreement.png; the folder means."""
    out = Path(out)
    rows = agreement_rows(out, manifest)
    write_csv(out / "agreement.csv", COLUMNS, rows)
    mean = mean_agreement(rows)
    if len(mean["kinds"]) >= 2:
        picture = _heatmap(mean, f"agreement between kinds, mean over {mean['images']} images")
        random = not (manifest.get("backbone") or {}).get("pretrained", True)
        save_png(out / "agreement.png", banded(picture) if random else picture)
    return mean
