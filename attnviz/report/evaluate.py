"""Do the maps point at the objects? Pointing game and energy-in-box for any run, given boxes."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from attnviz.errors import AttnvizError
from attnviz.metrics import Box, energy_in_boxes, pointing_hit
from attnviz.report.atomic import save_json
from attnviz.text import words

__all__ = ["load_boxes", "evaluate_run", "Evaluation"]


def _box(item: Any) -> Box:
    if isinstance(item, Mapping):
        if "box" in item:
            return Box(*map(float, item["box"]), label=item.get("label"))
        raise AttnvizError(f"--boxes: a box record needs a 'box': [x0, y0, x1, y1], got {item}")
    if isinstance(item, Sequence) and len(item) == 4:
        return Box(*map(float, item))
    raise AttnvizError(f"--boxes: expected [x0, y0, x1, y1], got {item!r}")


def load_boxes(path: str | Path) -> dict[str, list[Box]]:
    """Boxes per image: {"sub/cat.jpg": [[x0, y0, x1, y1] | {"box": […], "label": "…"}, …]} or COCO."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AttnvizError(f"--boxes {path}: cannot read it as JSON ({e})") from None
    if isinstance(data, Mapping) and "annotations" in data and "images" in data:   # COCO
        names = {c["id"]: c["name"] for c in data.get("categories", [])}
        files = {im["id"]: im["file_name"] for im in data["images"]}
        out: dict[str, list[Box]] = {f: [] for f in files.values()}
        for a in data["annotations"]:
            x, y, w, h = map(float, a["bbox"])
            out[files[a["image_id"]]].append(Box(x, y, x + w, y + h, names.get(a.get("category_id"))))
        return out
    if not isinstance(data, Mapping):
        raise AttnvizError(f"--boxes {path}: expected a mapping of image -> boxes, or COCO")
    return {str(k): [_box(b) for b in v] for k, v in data.items()}


def _targets(m: dict[str, Any], boxes: list[Box]) -> list[Box] | None:
    """Boxes a map should point at: the named object's for a prompt, any object otherwise."""
    if m["kind"] != "cross":
        return boxes
    if any(k in m for k in ("word", "contrast")):
        return None
    wanted = words(m.get("prompt", ""))
    named = [b for b in boxes if b.label is not None and words(b.label) == wanted]
    return named or None


@dataclass
class Evaluation:
    """Per kind: how often the peak hits, the mean energy in the boxes, and how many maps."""

    pointing_game: dict[str, float] = field(default_factory=dict)
    energy_in_box: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)      # images with no boxes

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"pointing_game": self.pointing_game, "energy_in_box": self.energy_in_box,
                "counts": self.counts, "images_without_boxes": self.missing}


def evaluate_run(out: str | Path, boxes: Mapping[str, list[Box]], tolerance: float = 0.0,
                 write: bool = True) -> Evaluation:
    """Score every map of a run in OUT against ground-truth boxes (matched by source, or file name)."""
    out = Path(out)
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AttnvizError(f"{out}: no readable manifest.json ({e}); run `attnviz run` first") from None
    by_name = {Path(k).name: v for k, v in boxes.items()}
    hits: dict[str, list[bool]] = {}
    energy: dict[str, list[float]] = {}
    ev = Evaluation()
    for image in manifest["images"]:
        if image["status"] != "ok":
            continue
        gt = boxes.get(image["source"], by_name.get(Path(image["source"]).name))
        if not gt:
            ev.missing.append(image["source"])
            continue
        arrays = np.load(out / image["output"] / "maps.npz")
        for m in image["maps"]:
            targets = _targets(m, gt)
            if targets is None:
                continue
            key = "cross" if m["kind"] == "cross" else m["name"]
            hits.setdefault(key, []).append(pointing_hit(m["peak"], targets, tolerance))
            energy.setdefault(key, []).append(energy_in_boxes(arrays[m["npz_key"]], tuple(image["size"]), targets))
    ev.pointing_game = {k: round(float(np.mean(v)), 4) for k, v in hits.items()}
    ev.energy_in_box = {k: round(float(np.mean(v)), 4) for k, v in energy.items()}
    ev.counts = {k: len(v) for k, v in hits.items()}
    if write:
        save_json(out / "evaluation.json", ev.as_dict())
        manifest.update({"pointing_game": ev.pointing_game, "energy_in_box": ev.energy_in_box})
        save_json(out / "manifest.json", manifest)
    return ev

