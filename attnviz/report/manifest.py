"""OUT/manifest.json: one machine-readable record of a whole run (schema documented in the README)."""
from __future__ import annotations

import contextlib
import io
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import PIL
import torch
import torchvision

from attnviz import __version__
from attnviz.metrics import SANITY_LIMIT
from attnviz.backbones.weights import RANDOM_NOTE
import attnviz.report.atomic as atomic
from attnviz.report.atomic import strict
from attnviz.report.integrity import file_sizes
from attnviz.report.outputs import Style, image_entry
from attnviz.results import Result
from attnviz.settings import SCHEMA, fingerprint_names

__all__ = ["Manifest", "RunRecord", "SCHEMA_VERSION", "Spooled", "entry_text", "environment"]

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
    """Collects image records (spooled to disk as they come) and rewrites the manifest atomically."""

    def __init__(self, out: Path, record: RunRecord, style: Style, batch_size: int, command: str,
                 checks: dict[str, bool] | None = None) -> None:
        self.path = out / "manifest.json"
        self._saved = float("-inf")    # monotonic time of the last write
        self.sanity: dict[str, float] | None = None   # kind -> rank correlation with a randomised model
        # output folder -> (offset, bytes, ok) of its record in the spool, once its files are written:
        # the records themselves wait on disk, so memory stays flat however many images a run has
        self._at: dict[str, tuple[int, int, bool]] = {}
        self._spool: Any = None             # unbuffered: an error is raised by the write that meets it
        self._ranked: dict[str, list[tuple[str, dict[str, Any]]]] = {}   # output -> its ranking candidates
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

    def _outputs(self) -> list[str]:
        """The output folders recorded so far, in manifest order (the run's order, then any others)."""
        order = set(self.order)
        return [o for o in self.order if o in self._at] + [o for o in self._at if o not in order]

    def _text(self, output: str) -> bytes:
        """The recorded entry of `output` as the manifest writes it (from the spool)."""
        offset, size, _ = self._at[output]
        self._spool.seek(offset)
        return self._spool.read(size)

    def images(self) -> Iterator[dict[str, Any]]:
        """The records written so far, in manifest order (each read back from the spool when reached)."""
        return (json.loads(self._text(o)) for o in self._outputs())

    def document(self) -> dict[str, Any]:
        """The manifest as saved, its "images" a re-iterable view (read one at a time) instead of a list."""
        return {**self._head(), "images": Spooled(self)}

    def add(self, r: Result, files: list[str] | None = None) -> None:
        """Record one image (call after its files are written)."""
        entry = image_entry(r, self.ext)
        if files is not None:
            entry["files"] = files
            with contextlib.suppress(OSError):     # sizes checked on resume (missing: checked by format only)
                entry["file_bytes"] = file_sizes(self.path.parent / r.output, files)
        self.keep(entry)

    def keep(self, entry: dict[str, Any]) -> None:
        """Record an image's entry (a new one, or an earlier run's as it stands on resume): it goes to
        the spool as the manifest's text; only its place, status and ranking scores stay in memory."""
        if self._spool is None:      # unnamed (O_TMPFILE) beside the outputs: gone when closed or killed
            folder = self.path.parent if self.path.parent.is_dir() else None
            self._spool = tempfile.TemporaryFile(prefix=".manifest.json.", suffix=".tmp", dir=folder,
                                                 buffering=0)     # a full disk fails here, not later
        text = entry_text(entry)
        offset = self._spool.seek(0, io.SEEK_END)
        view = memoryview(text)
        while view:
            view = view[self._spool.write(view):]
        self._at[entry["output"]] = (offset, len(text), entry.get("status") == "ok")   # once it is whole
        self._ranked.pop(entry["output"], None)
        candidates = _candidates(entry)
        if candidates:
            self._ranked[entry["output"]] = candidates

    def rankings(self) -> dict[str, list[dict[str, Any]]]:
        """Per prompt, the images best matching it first ("which photos contain a dog, and where")."""
        ranked: dict[str, list[dict[str, Any]]] = {}
        seen: dict[str, set[str]] = {}
        for output in self._outputs():
            for prompt, record in self._ranked.get(output, ()):
                if output not in seen.setdefault(prompt, set()):
                    seen[prompt].add(output)
                    ranked.setdefault(prompt, []).append(dict(record))
        return {p: sorted(r, key=lambda e: -e["score"]) for p, r in ranked.items()}

    def _head(self, seconds: float | None = None) -> dict[str, Any]:
        """Everything of the manifest but "images" (which comes last)."""
        ok = sum(1 for _, _, good in self._at.values() if good)
        summary: dict[str, Any] = {"images": len(self._at), "ok": ok, "errors": len(self._at) - ok}
        if seconds is not None:
            summary["seconds"] = round(seconds, 3)
        summary["rankings"] = self.rankings()
        checks = {} if self.sanity is None else {"sanity": {
            "rank_correlation": self.sanity, "limit": SANITY_LIMIT,
            "flagged": sorted(k for k, v in self.sanity.items() if abs(v) >= SANITY_LIMIT)}}
        return {**self.head, "summary": summary, **checks}

    def save(self, seconds: float | None = None, every: float = 0.0) -> None:
        """Write the manifest as it stands (atomically); skip if written less than `every` s ago.

        The bytes are `save_json`'s of the whole document; the image entries are copied from the
        spool one at a time, so a run's memory does not grow with its number of images."""
        now = time.monotonic()
        if every and now - self._saved < every:
            return
        self._saved = now
        text = json.dumps(strict({**self._head(seconds), "images": []}), indent=2, ensure_ascii=False,
                          allow_nan=False)
        head = text[:-len(_EMPTY)].encode("utf-8", "backslashreplace")
        outputs = self._outputs()

        def write(f: io.BufferedWriter) -> None:
            f.write(head)
            if not outputs:
                f.write(_EMPTY.encode() + b"\n")
                return
            for k, output in enumerate(outputs):
                f.write(b",\n    " if k else b"[\n    ")
                f.write(self._text(output))
            f.write(b"\n  ]\n}\n")
        atomic.write_atomic(self.path, write)      # looked up when called (tests fill the disk there)

    def close(self) -> None:
        """Let go of the spool (the saved manifest stays); the records are gone from this object."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._at.clear()
        self._ranked.clear()


_EMPTY = "[]\n}"          # how json.dumps(indent=2) ends a document whose last key is "images": []


def entry_text(entry: dict[str, Any]) -> bytes:
    """One image entry as `save_json` writes it inside the manifest's "images" list (4 spaces in)."""
    text = json.dumps(strict(entry), indent=2, ensure_ascii=False, allow_nan=False)
    return text.replace("\n", "\n    ").encode("utf-8", "backslashreplace")   # newlines: only between items


def _candidates(image: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(prompt, ranking record) of an entry's cross maps that score the image against a prompt."""
    found = []
    for m in image.get("maps") or []:
        score = m.get("clip_score", m.get("probability"))
        if m.get("kind") == "cross" and "prompt" in m and "word" not in m and not m.get("contrast") \
                and score is not None and m.get("prompt_source") != "top-1 class":
            found.append((m["prompt"], {"source": image["source"], "output": image["output"], "score": score,
                                        "peak": m["peak"], "file": m["file"]}))
    return found


class Spooled:
    """A manifest's image entries, read back from its spool one at a time on every iteration."""

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._manifest.images()

    def __len__(self) -> int:
        return len(self._manifest._at)
