"""OUT/manifest.json: one machine-readable record of a whole run (schema documented in the README)."""
from __future__ import annotations

import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torchvision

from attnviz import __version__
from attnviz.checks import SANITY_LIMIT
from attnviz.report.atomic import save_json
from attnviz.report.outputs import Style, image_entry
from attnviz.types import Result

__all__ = ["Manifest", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


class Manifest:
    """Collects image records and rewrites the manifest atomically after every batch."""

    def __init__(self, out: Path, analyser, style: Style, batch_size: int, command: str,
                 options: dict[str, Any]) -> None:
        bb = analyser.backbone
        self.path = out / "manifest.json"
        self._saved = float("-inf")    # monotonic time of the last write
        self.sanity: dict[str, float] | None = None   # kind -> rank correlation with a randomised model
        self.images: list[dict[str, Any]] = []
        self.ext = style.ext             # file suffix of the overlays (--format)
        self.head = {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "attnviz", "version": __version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "python": platform.python_version()},
            "command": command or " ".join(sys.argv),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "backbone": {"name": bb.name, "weights": bb.weights, "pretrained": bb.pretrained,
                         "layer": analyser.layer, "classifier_layer": bb.classifier_layer,
                         "input_size": bb.input_size, "mean": list(bb.mean), "std": list(bb.std),
                         "device": str(bb.device),
                         "native": analyser.inventory.native_kinds(bb.tokens is not None),
                         "unreadable_attention": list(analyser.inventory.unsupported)},
            "settings": {"kinds": [k.name for k in analyser.kinds], "texts": list(analyser.options.texts),
                         "query": list(analyser.options.query) if analyser.options.query else None,
                         "tau": analyser.options.tau, "size": style.size, "colormap": style.colormap,
                         "alpha": style.alpha, "top_k": style.top_k, "batch_size": batch_size,
                         "seed": options.get("seed")},
            "notes": list(analyser.notes) + list(bb.notes)
            + ([] if bb.pretrained else ["random weights (--weights none): the maps mean nothing"]),
        }

    def add(self, r: Result) -> None:
        """Record one image (call after its files are written)."""
        self.images.append(image_entry(r, self.ext))

    def rankings(self) -> dict[str, list[dict[str, Any]]]:
        """Per prompt, the images best matching it first ("which photos contain a dog, and where")."""
        ranked: dict[str, list[dict[str, Any]]] = {}
        for image in self.images:
            for m in image["maps"]:
                score = m.get("clip_score", m.get("probability"))
                if m["kind"] == "cross" and "prompt" in m and "word" not in m and not m.get("contrast") \
                        and score is not None and m.get("prompt_source") != "top-1 class":
                    ranked.setdefault(m["prompt"], []).append(
                        {"source": image["source"], "output": image["output"], "score": score,
                         "peak": m["peak"], "file": m["file"]})
        return {p: sorted(r, key=lambda e: -e["score"]) for p, r in ranked.items()}

    def save(self, seconds: float | None = None, every: float = 0.0) -> None:
        """Write the manifest as it stands (atomically); skip if written less than `every` s ago."""
        now = time.monotonic()
        if every and now - self._saved < every:
            return
        self._saved = now
        ok = sum(1 for i in self.images if i["status"] == "ok")
        summary: dict[str, Any] = {"images": len(self.images), "ok": ok, "errors": len(self.images) - ok}
        if seconds is not None:
            summary["seconds"] = round(seconds, 3)
        summary["rankings"] = self.rankings()
        checks = {} if self.sanity is None else {"sanity": {
            "rank_correlation": self.sanity, "limit": SANITY_LIMIT,
            "flagged": sorted(k for k, v in self.sanity.items() if abs(v) >= SANITY_LIMIT)}}
        save_json(self.path, {**self.head, "summary": summary, **checks, "images": self.images})
