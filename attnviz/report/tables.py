"""OUT/summary.csv: one row per image × map, for pandas and spreadsheets (columns in the README)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from attnviz.maps import normalise
from attnviz.report.atomic import write_atomic
from attnviz.text import shown

__all__ = ["COLUMNS", "cell", "column", "columns_of", "entropy", "load_maps", "summary_rows", "write_summary_csv", "write_csv"]

COLUMNS = ["source", "output", "status", "error", "kind", "name", "provenance", "layer", "prompt",
           "min", "max", "mean", "entropy", "peak_x", "peak_y", "top1_label", "top1_probability",
           "deletion", "insertion", "pointing_game", "energy_in_box", "backbone", "weights", "frame", "time"]


def entropy(m: np.ndarray) -> float:
    """Normalised entropy of a map in [0, 1]: p = min–max-normalised map / its sum,
    H = −Σ p log p / log N (1: spread evenly, as a constant map; 0: one cell holds everything)."""
    p = normalise(m).astype(np.float64).ravel()
    n = p.size
    if n < 2:
        return 0.0
    total = p.sum()
    if total <= 0:                    # a constant map: nothing stands out, all cells alike
        return 1.0
    p = p[p > 0] / total
    return float(-(p * np.log(p)).sum() / np.log(n))


def load_maps(out: Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """The raw maps of one image of a run (its maps.npz), by npz key; {} when unreadable."""
    try:
        with np.load(out / entry["output"] / "maps.npz") as z:
            return {m["npz_key"]: np.asarray(z[m["npz_key"]], np.float32)
                    for m in entry.get("maps", []) if m.get("npz_key") in z.files}
    except Exception:  # noqa: BLE001  (a damaged file: BadZipFile, EOFError, zlib.error … ; checked() says why)
        return {}


def column(m: dict[str, Any]) -> tuple[str, str]:
    """(key, title) of a map's column when images are compared: its name, and for cross maps
    "cross · <prompt>" (one shared column for the default prompt, each image's top-1 class)."""
    if m.get("kind") != "cross":
        return m["name"], m["name"]
    if m.get("prompt_source") == "top-1 class" and "word" not in m and not m.get("contrast"):
        return "cross · top-1 class", "cross · top-1 class"
    title = f"cross · {shown(m.get('prompt', m['name']))}"      # drawn on sheets: control characters escaped
    if "word" in m:
        title += f" · word: {shown(m['word'])}"
    return m["name"], title + (" · contrast" if m.get("contrast") else "")


def columns_of(images: list[dict[str, Any]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Column key -> (title, the first map in it), over the maps of the ok images, in order met."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for image in images:
        if image.get("status") != "ok":
            continue
        for m in image.get("maps") or []:
            key, title = column(m)
            found.setdefault(key, (title, m))
    return found


_FORMULA = ("=", "+", "-", "@", "\t", "\r", "\n")   # what makes a spreadsheet read a cell as a formula


def cell(v: Any) -> Any:
    """One CSV cell: None empty, numbers as they are, and text a spreadsheet would run as a formula
    (a leading = + - @ tab or line break: OWASP's CSV-injection rule) with a leading `'`."""
    if v is None:
        return ""
    if isinstance(v, str) and v.startswith(_FORMULA):
        return "'" + v
    return v


def summary_rows(out: Path, manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The rows of summary.csv: every map of every ok image; one row (no map) per failed image."""
    pointing = manifest.get("pointing_game") or {}
    energy = manifest.get("energy_in_box") or {}
    bb = manifest.get("backbone") or {}          # every row says which model drew it ("none": random init)
    for image in manifest.get("images", []):
        base = {"source": image.get("source"), "output": image.get("output"),
                "status": image.get("status"), "error": image.get("error") or "",
                "backbone": bb.get("name"), "weights": bb.get("weights")}
        preds = image.get("predictions") or []
        if preds:
            base.update(top1_label=preds[0].get("label"), top1_probability=preds[0].get("probability"))
        maps = image.get("maps") or []
        if isinstance(image.get("frames"), list) and image["frames"]:     # a video: one row per frame × map
            yield from _frame_rows(base, image, load_maps(out, image))
            continue
        if image.get("status") != "ok" or not maps:
            yield base
            continue
        arrays = load_maps(out, image)
        for m in maps:
            key = "cross" if m.get("kind") == "cross" else m.get("name")
            faith = m.get("faithfulness") or {}
            data = arrays.get(m.get("npz_key"))
            yield {**base, "kind": m.get("kind"), "name": m.get("name"), "provenance": m.get("provenance"),
                   "layer": m.get("layer"), "prompt": m.get("prompt", ""),
                   "min": m.get("min"), "max": m.get("max"), "mean": m.get("mean"),
                   "entropy": None if data is None else round(entropy(data), 6),
                   "peak_x": (m.get("peak") or [None, None])[0], "peak_y": (m.get("peak") or [None, None])[1],
                   "deletion": faith.get("deletion"), "insertion": faith.get("insertion"),
                   "pointing_game": pointing.get(key), "energy_in_box": energy.get(key)}


def _frame_rows(base: dict[str, Any], video: dict[str, Any], arrays: dict[str, np.ndarray]
                ) -> Iterator[dict[str, Any]]:
    """A video's rows: every map of every sampled frame, with the frame's index and time stamp (s);
    a video that broke part way has rows for the frames kept (status "error", its error said)."""
    maps = {m.get("name"): m for m in video.get("maps") or [] if isinstance(m, dict)}
    for k, frame in enumerate(video["frames"]):
        top = frame.get("top1") or {}
        for fm in frame.get("maps") or []:
            m = maps.get(fm.get("name"), {})
            data = arrays.get(m.get("npz_key"))
            peak = fm.get("peak") or [None, None]
            yield {**base, "kind": m.get("kind"), "name": fm.get("name"), "provenance": m.get("provenance"),
                   "layer": m.get("layer"), "prompt": fm.get("prompt", ""), "min": fm.get("min"),
                   "max": fm.get("max"), "mean": fm.get("mean"), "peak_x": peak[0], "peak_y": peak[1],
                   "entropy": None if data is None or k >= len(data) else round(entropy(data[k]), 6),
                   "top1_label": top.get("label"), "top1_probability": top.get("probability"),
                   "frame": frame.get("index"), "time": frame.get("time")}


def write_csv(path: Path, columns: list[str], rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> Path:
    """Write rows (dicts; missing keys and None are empty cells) as UTF-8 CSV, atomically; each row
    goes to the file as it comes (a run's summary is never held whole)."""
    def write(f: Any) -> None:
        # undecodable names stay visible (backslashreplace); no newline translation: the csv module's
        # CRLF rows (RFC 4180) go out as they are, so a name holding a lone CR or LF stays one quoted cell
        text = io.TextIOWrapper(f, encoding="utf-8", errors="backslashreplace", newline="")
        writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\r\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: cell(row.get(k)) for k in columns})
        text.flush()
        text.detach()                  # write_atomic closes the file itself
    write_atomic(path, write)
    return path


def write_summary_csv(out: Path, manifest: dict[str, Any]) -> Path:
    """Write OUT/summary.csv from a run's manifest and maps; its path."""
    return write_csv(Path(out) / "summary.csv", COLUMNS, summary_rows(Path(out), manifest))
