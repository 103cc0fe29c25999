"""Do the maps point at the objects? Pointing game and energy-in-box for any run, given boxes."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from attnviz.errors import AttnvizError, one_line
from attnviz.geometry import Geometry
from attnviz.metrics import Box, chance_rate, energy_in_boxes, peak, pointing_hit
from attnviz.report.atomic import save_json
from attnviz.report.integrity import MANIFEST_LIMIT, checked
from attnviz.report.tables import write_summary_csv
from attnviz.report.lock import locked
from attnviz.text import read_small, words

__all__ = ["load_boxes", "evaluate_run", "Evaluation", "BOXES_LIMIT"]

BOXES_LIMIT = 1 << 30          # --boxes: 1 GiB (COCO's largest annotation file is under 0.5 GiB)


def _number(value: Any, where: str) -> float:
    """A finite coordinate; strings, booleans, NaN and Inf are the file's mistake (one line)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AttnvizError(f"--boxes: {where}: expected finite numbers [x0, y0, x1, y1], got {value!r}")
    return float(value)


def _box(item: Any, where: str) -> Box:
    if isinstance(item, Mapping):
        if "box" not in item:
            raise AttnvizError(f"--boxes: {where}: a box record needs a 'box': [x0, y0, x1, y1], got {item!r}"[:300])
        label = item.get("label")
        if label is not None and not isinstance(label, str):
            raise AttnvizError(f"--boxes: {where}: a label must be text, got {label!r}"[:300])
        return Box(*_corners(item["box"], where), label=label)
    return Box(*_corners(item, where))


def _corners(item: Any, where: str) -> list[float]:
    if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 4:
        raise AttnvizError(f"--boxes: {where}: expected [x0, y0, x1, y1], got {item!r}"[:300])
    x0, y0, x1, y1 = (_number(v, where) for v in item)
    if x1 < x0 or y1 < y0:
        raise AttnvizError(f"--boxes: {where}: x1 < x0 or y1 < y0 in {list(item)!r}")
    return [x0, y0, x1, y1]


def _coco(data: Mapping[str, Any]) -> dict[str, list[Box]]:
    """COCO: images, annotations with bbox [x, y, w, h], categories naming the labels."""
    try:
        names = {c["id"]: str(c["name"]) for c in data.get("categories") or []}
        files = {im["id"]: str(im["file_name"]) for im in data["images"]}
    except (KeyError, TypeError) as e:
        raise AttnvizError(f"--boxes: COCO images and categories need id, file_name and name ({e!r} missing)") from None
    out: dict[str, list[Box]] = {f: [] for f in files.values()}
    for k, a in enumerate(data["annotations"] or []):
        where = f"annotation {k}"
        if not isinstance(a, Mapping) or "bbox" not in a or "image_id" not in a:
            raise AttnvizError(f"--boxes: {where}: a COCO annotation needs image_id and bbox")
        if a["image_id"] not in files:
            raise AttnvizError(f"--boxes: {where}: image_id {a['image_id']!r} is not in the file's images")
        bbox = a["bbox"]
        if isinstance(bbox, (str, bytes)) or not isinstance(bbox, Sequence) or len(bbox) != 4:
            raise AttnvizError(f"--boxes: {where}: bbox must be [x, y, w, h], got {bbox!r}"[:300])
        x, y, w, h = (_number(v, where) for v in bbox)
        out[files[a["image_id"]]].append(Box(x, y, x + w, y + h, names.get(a.get("category_id"))))
    return out


def load_boxes(path: str | Path) -> dict[str, list[Box]]:
    """Boxes per image: {"sub/cat.jpg": [[x0, y0, x1, y1] | {"box": […], "label": "…"}, …]} or COCO."""
    try:
        data = json.loads(read_small(path, "--boxes", BOXES_LIMIT).decode("utf-8"))
    except (OSError, ValueError) as e:
        raise AttnvizError(f"--boxes {path}: cannot read it as JSON ({one_line(e, 160)})") from None
    if isinstance(data, Mapping) and "annotations" in data and "images" in data:
        return _coco(data)
    if not isinstance(data, Mapping):
        raise AttnvizError(f"--boxes {path}: expected a mapping of image -> boxes, or COCO")
    boxes = {}
    for k, v in data.items():
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
            raise AttnvizError(f"--boxes: {k}: expected a list of boxes, got {v!r}"[:300])
        boxes[str(k)] = [_box(b, f"{k}, box {i}") for i, b in enumerate(v)]
    return boxes


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
    """Per kind: how often the peak hits, the hit rate of a peak on a random cell (chance), the
    mean energy in the boxes, and how many maps; whether the run's weights were random."""

    pointing_game: dict[str, float] = field(default_factory=dict)
    energy_in_box: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)      # images with no boxes
    skipped: list[str] = field(default_factory=list)      # "source: why" of images whose files are damaged
    chance: dict[str, float] = field(default_factory=dict)
    random_weights: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"pointing_game": self.pointing_game, "chance": self.chance, "energy_in_box": self.energy_in_box,
                "counts": self.counts, "images_without_boxes": self.missing, "images_skipped": self.skipped,
                "random_weights": self.random_weights}


def evaluate_run(out: str | Path, boxes: Mapping[str, list[Box]], tolerance: float = 0.0,
                 write: bool = True) -> Evaluation:
    """Score every map of a run in OUT against ground-truth boxes (matched by source, or file name)."""
    out = Path(out)
    if not (out / "manifest.json").is_file():
        raise AttnvizError(f"{out}: no manifest.json there; run `attnviz run` first")
    with locked(out, "attnviz evaluate"):
        return _evaluate(out, boxes, tolerance, write)


def _read(out: Path) -> dict[str, Any]:
    """OUT's manifest, checked enough to evaluate (one line when it is not an attnviz manifest)."""
    try:
        manifest = json.loads(read_small(out / "manifest.json", "run folder", MANIFEST_LIMIT).decode("utf-8"))
    except (OSError, ValueError) as e:
        raise AttnvizError(f"{out}: no readable manifest.json ({one_line(e, 160)}); run `attnviz run` first") from None
    ok = isinstance(manifest, dict) and isinstance(manifest.get("images"), list) and all(
        isinstance(i, dict) and isinstance(i.get("source"), str) and isinstance(i.get("output"), str)
        and isinstance(i.get("maps", []), list) for i in manifest["images"])
    if not ok:
        raise AttnvizError(f"{out}/manifest.json is not an attnviz manifest (no images with source, output, maps)")
    return manifest


def _evaluate(out: Path, boxes: Mapping[str, list[Box]], tolerance: float, write: bool) -> Evaluation:
    manifest = _read(out)
    by_name = {Path(k).name: v for k, v in boxes.items()}
    hits: dict[str, list[bool]] = {}
    energy: dict[str, list[float]] = {}
    chance: dict[str, list[float]] = {}
    ev = Evaluation(random_weights=not (manifest.get("backbone") or {}).get("pretrained", True))
    images, ev.skipped = checked(out, manifest["images"], ["maps.npz"])     # damaged or foreign: a note each, never read
    for image in images:
        if image.get("status") != "ok" or "video" in image:      # videos: boxes move; not scored here
            continue
        gt = boxes.get(image["source"], by_name.get(Path(image["source"]).name))
        if not gt:
            ev.missing.append(image["source"])
            continue
        try:
            arrays = dict(np.load(out / image["output"] / "maps.npz"))
            size = (int(image["size"][0]), int(image["size"][1]))
            for m in image["maps"]:
                targets = _targets(m, gt)
                if targets is None:
                    continue
                key = "cross" if m["kind"] == "cross" else m["name"]
                g = Geometry.from_record(m.get("geometry"))    # measured cell centres, if recorded
                data = arrays[m["npz_key"]]
                point = peak(data, size, g) if g is not None else [float(v) for v in m["peak"]]
                hit = pointing_hit(point, targets, tolerance)
                share = energy_in_boxes(data, size, targets, g)
                # chance: a peak on a uniformly random cell hits this often (≈ the boxes' share of the image)
                chance.setdefault(key, []).append(chance_rate(data.shape, size, targets, tolerance, g))
                hits.setdefault(key, []).append(hit)
                energy.setdefault(key, []).append(share)
        except Exception as e:  # noqa: BLE001  (BadZipFile, EOFError, a hand-edited record …: this image only)
            ev.skipped.append(f"{image['source']}: its maps.npz or manifest record is unusable ({one_line(e, 120)}); "
                              f"rerun `attnviz run` to redo it")
    ev.pointing_game = {k: round(float(np.mean(v)), 4) for k, v in hits.items()}
    ev.energy_in_box = {k: round(float(np.mean(v)), 4) for k, v in energy.items()}
    ev.chance = {k: round(float(np.mean(v)), 4) for k, v in chance.items()}
    ev.counts = {k: len(v) for k, v in hits.items()}
    if write:
        save_json(out / "evaluation.json", ev.as_dict())
        manifest.update({"pointing_game": ev.pointing_game, "energy_in_box": ev.energy_in_box})
        save_json(out / "manifest.json", manifest)
        write_summary_csv(out, {**manifest, "images": images})   # its pointing_game/energy_in_box columns
    return ev

