"""OUT/manifest.json: one machine-readable record of a whole run (schema documented in the README)."""
from __future__ import annotations

import contextlib
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL
import torch
import torchvision

from attnviz import __version__
from attnviz.metrics import SANITY_LIMIT
from attnviz.backbones.weights import RANDOM_NOTE
from attnviz.report.atomic import save_json
from attnviz.report.integrity import file_sizes
from attnviz.report.outputs import Style, image_entry
from attnviz.results import Result
from attnviz.settings import SCHEMA, fingerprint_names

__all__ = ["Manifest", "RunRecord", "SCHEMA_VERSION", "environment"]

SCHEMA_VERSION = 1


def environment(device: Any) -> dict[str, Any]:
    """The environment a run's numbers depend on: torch's CPU threads, the device, library versions."""
    device = torch.device(device)
    return {"torch threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            "torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__}


@dataclass(frozen=True)
class RunRecord:
    """What the manifest records of the model and the settings; the pipeline makes it from its Analyser."""

    backbone: dict[str, Any]        # manifest "backbone": name, weights, pretrained, layer, sizes, native kinds
    kinds: list[str]                # the kinds computed
    settings: dict[str, Any]        # every analyser setting of the schema (attnviz.settings), JSON-ready
    notes: list[str] = field(default_factory=list)


class Manifest:
    """Collects image records and rewrites the manifest atomically after every batch."""

    def __init__(self, out: Path, record: RunRecord, style: Style, batch_size: int, command: str,
                 checks: dict[str, bool] | None = None) -> None:
        self.path = out / "manifest.json"
        self._saved = float("-inf")    # monotonic time of the last write
        self.sanity: dict[str, float] | None = None   # kind -> rank correlation with a randomised model
        self.entries: dict[str, dict[str, Any]] = {}  # output folder -> record, once its files are written
        self.order: list[str] = []                    # output folders in manifest order (set by the runner)
        self.ext = style.ext             # file suffix of the overlays (--format)
        values = {**record.settings, **{k: getattr(style, k) for k in ("size", "colormap", "alpha", "top_k")},
                  "batch_size": batch_size, **(checks or {})}
        pretrained = record.backbone.get("pretrained", True)
        self.head = {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "attnviz", "version": __version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "python": platform.python_version()},
            "command": command or " ".join(sys.argv),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "backbone": dict(record.backbone),
            "settings": {"kinds": list(record.kinds),
                         **{s.name: values.get(s.name) for s in SCHEMA.values() if s.manifest}},
            "notes": list(record.notes) + ([] if pretrained else [RANDOM_NOTE]),
        }
        # what decides the files' content: a rerun with the same fingerprint may reuse them (resume)
        self.fingerprint = {
            "attnviz": __version__,
            "backbone": {k: v for k, v in self.head["backbone"].items() if k != "device"},
            "settings": {"kinds": list(record.kinds), **{n: values.get(n) for n in fingerprint_names()}},
        }
        # what else changes the numbers (in the last bits: kernels sum in another order): a resume
        # under another environment would mix two kinds of maps, so it is refused like other settings
        self.fingerprint["environment"] = environment(record.backbone.get("device", "cpu"))
        self.head["fingerprint"] = self.fingerprint

    @property
    def images(self) -> list[dict[str, Any]]:
        """The records written so far, in manifest order."""
        return [self.entries[o] for o in self.order if o in self.entries] + \
            [e for o, e in self.entries.items() if o not in set(self.order)]

    def add(self, r: Result, files: list[str] | None = None) -> None:
        """Record one image (call after its files are written)."""
        entry = image_entry(r, self.ext)
        if files is not None:
            entry["files"] = files
            with contextlib.suppress(OSError):     # sizes checked on resume (missing: checked by format only)
                entry["file_bytes"] = file_sizes(self.path.parent / r.output, files)
        self.entries[r.output] = entry

    def keep(self, entry: dict[str, Any]) -> None:
        """Record an earlier run's image as it stands (resume)."""
        self.entries[entry["output"]] = entry

    def rankings(self) -> dict[str, list[dict[str, Any]]]:
        """Per prompt, the images best matching it first ("which photos contain a dog, and where")."""
        ranked: dict[str, list[dict[str, Any]]] = {}
        for image in self.images:
            for m in image["maps"]:
                score = m.get("clip_score", m.get("probability"))
                if m["kind"] == "cross" and "prompt" in m and "word" not in m and not m.get("contrast") \
                        and score is not None and m.get("prompt_source") != "top-1 class" \
                        and image["output"] not in {e["output"] for e in ranked.get(m["prompt"], [])}:
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
        images = self.images
        ok = sum(1 for i in images if i["status"] == "ok")
        summary: dict[str, Any] = {"images": len(images), "ok": ok, "errors": len(images) - ok}
        if seconds is not None:
            summary["seconds"] = round(seconds, 3)
        summary["rankings"] = self.rankings()
        checks = {} if self.sanity is None else {"sanity": {
            "rank_correlation": self.sanity, "limit": SANITY_LIMIT,
            "flagged": sorted(k for k, v in self.sanity.items() if abs(v) >= SANITY_LIMIT)}}
        save_json(self.path, {**self.head, "summary": summary, **checks, "images": images})
