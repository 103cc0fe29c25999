"""`run`: analyse images in batches and write every output plus OUT/manifest.json (layout in the README)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from attnviz.backbones import Backbone
from attnviz.images import ImageSource, discover
import attnviz.pipeline.checks as checks
from attnviz.pipeline.analyser import Analyser, decode
from attnviz.pipeline.api import check_batch_size
from attnviz.pipeline.outdir import check_out
from attnviz.report.manifest import Manifest
from attnviz.report.outputs import Style, write_outputs
from attnviz.results import Result

__all__ = ["run", "RunReport", "MANIFEST_EVERY_S"]

MANIFEST_EVERY_S = 5.0   # a long run rewrites manifest.json at most this often (and at the end)


def _batches(sources: list[ImageSource], size: int) -> Iterator[list[ImageSource]]:
    for i in range(0, len(sources), size):
        yield sources[i:i + size]


@dataclass
class RunReport:
    """What `run` did: results (maps dropped after writing), where, how long."""

    out: Path
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    forwards: int = 0
    rankings: dict = field(default_factory=dict)   # prompt -> images best matching it first

    @property
    def failed(self) -> list[Result]:
        """Results whose status is "error"."""
        return [r for r in self.results if r.status != "ok"]


def run(paths: Sequence[str | Path], out: str | Path, *, backbone: str | Backbone = "resnet50",
        kinds: Sequence[str] | None = None, batch_size: int = 8, style: Style | None = None,
        command: str = "", on_start: Callable[[int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        prompts: Mapping[str, list[str]] | None = None,
        boxes: Mapping[str, list[Sequence[float]]] | None = None, faithfulness: bool = False,
        sanity: bool = False, **options) -> RunReport:
    """Analyse images and write every output plus OUT/manifest.json; see the README for the layout.

    `prompts` and `boxes` are keyed by an image's `source`: per-image prompts for text backbones
    that take them, and ground-truth boxes drawn on its grid. `faithfulness` adds deletion and
    insertion AUCs to every map; `sanity` compares the first batch's maps with a randomised model's.
    """
    check_batch_size(batch_size)
    style = style or Style()
    out = Path(out)
    sources = check_out(out, discover(paths), paths)
    analyser = Analyser(backbone, kinds, **options)
    manifest = Manifest(out, analyser, style, batch_size, command)
    report = RunReport(out, notes=list(analyser.notes))
    t0 = time.perf_counter()
    if on_start:
        on_start(len(sources))
    try:
        for i, batch in enumerate(_batches(sources, batch_size)):
            loaded = _write_batch(analyser, batch, out, style, prompts or {}, boxes or {}, faithfulness,
                                  manifest if sanity and i == 0 else None)
            for r in loaded:
                manifest.add(r)
                r.maps = []                      # written; keep memory flat on big folders
            report.results.extend(loaded)
            manifest.save(every=MANIFEST_EVERY_S)
            if on_batch:
                on_batch(len(batch))
    finally:   # also on Ctrl-C: the manifest lists every image written so far
        manifest.save(seconds=time.perf_counter() - t0)
    report.seconds = time.perf_counter() - t0
    report.forwards = analyser.forwards
    report.rankings = manifest.rankings()
    report.notes += [n for n in analyser.backbone.notes if n not in report.notes]
    return report


def _write_batch(analyser: Analyser, batch: list[ImageSource], out: Path, style: Style,
                 prompts: Mapping[str, list[str]], boxes: Mapping[str, list], faithful: bool = False,
                 sanity_to=None) -> list[Result]:
    """Decode, analyse (one forward) and write one batch; failures become error Results."""
    loaded, good = decode(batch)
    if not good:
        return loaded
    images = [im for _, im in good]
    per_image = [list(prompts.get(r.source, ())) for r, _ in good] if prompts else None
    if sanity_to:
        sanity_to.sanity = checks.sanity(analyser, images, per_image)
    for (r, image), (preds, maps) in zip(good, analyser.analyse_batch(images, per_image)):
        r.predictions, r.maps = preds, maps
        if faithful:
            scores = checks.faithfulness(analyser, image, maps)
            for m in maps:
                m.meta["faithfulness"] = scores[m.name]
        try:
            write_outputs(out, r, image, style, boxes.get(r.source, ()))
        except OSError as e:
            r.status, r.error = "error", f"cannot write outputs: {e}"
    return loaded
