"""`run`: analyse images in batches and write every output plus OUT/manifest.json (layout in the README).

A run holds OUT's lock, resumes what an earlier run with the same settings completed, and stops
with one line (exit 2) when OUT cannot be written; the manifest always lists exactly the images
whose files are complete.
"""
from __future__ import annotations

import contextlib
import errno
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

import attnviz.pipeline.checks as checks
from attnviz.backbones import Backbone
from attnviz.errors import AttnvizError
from attnviz.images import ImageSource, check_inputs, discover
from attnviz.pipeline.analyser import Analyser, decode
from attnviz.pipeline.api import check_batch_size
from attnviz.pipeline.outdir import (entry_files, locked, outputs_filter, plan_run, read_manifest,
                                     remove_stale_temporaries)
from attnviz.report.manifest import Manifest
from attnviz.report.outputs import Style, write_outputs
from attnviz.results import Result

__all__ = ["run", "RunReport", "MANIFEST_EVERY_S", "PIXEL_BUDGET"]

MANIFEST_EVERY_S = 5.0      # a long run rewrites manifest.json at most this often (and at the end)
PIXEL_BUDGET = 2 ** 27      # decoded pixels per batch (134 MP ≈ 400 MB of RGB): bigger batches are split
# the disk or the folder, not the image: the run cannot go on (exit 2, naming the path)
_FATAL = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}


@dataclass
class RunReport:
    """What `run` did: results (maps dropped after writing), where, how long."""

    out: Path
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    forwards: int = 0
    rankings: dict = field(default_factory=dict)   # prompt -> images best matching it first
    resumed: int = 0                               # images an earlier run had completed (not redone)

    @property
    def failed(self) -> list[Result]:
        """Results whose status is "error"."""
        return [r for r in self.results if r.status != "ok"]

    @property
    def counts(self) -> dict[str, int]:
        """Extra counts for the summary."""
        return {"already done (resumed)": self.resumed} if self.resumed else {}


def run(paths: Sequence[str | Path], out: str | Path, *, backbone: str | Backbone = "resnet50",
        kinds: Sequence[str] | None = None, batch_size: int = 8, style: Style | None = None,
        command: str = "", on_start: Callable[[int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        prompts: Mapping[str, list[str]] | None = None,
        boxes: Mapping[str, list[Sequence[float]]] | None = None, faithfulness: bool = False,
        sanity: bool = False, force: bool = False, own: Sequence[str] = (), **options: Any) -> RunReport:
    """Analyse images and write every output plus OUT/manifest.json; see the README for the layout.

    `prompts` and `boxes` are keyed by an image's `source`: per-image prompts for text backbones
    that take them, and ground-truth boxes drawn on its grid. `faithfulness` adds deletion and
    insertion AUCs to every map; `sanity` compares the first batch's maps with a randomised model's.
    A rerun with the same settings resumes (images already complete are kept); other settings are
    refused unless `force`. `own`: top-level names in OUT the caller wrote (not foreign files).
    """
    check_batch_size(batch_size)
    style = style or Style()
    out = Path(out)
    outputs_filter(out, paths)                                   # refuse an OUT that is a file, early
    check_inputs(paths)                                          # and missing inputs, before the lock
    with locked(out, command):
        remove_stale_temporaries(out)
        try:
            earlier = [e["output"] for e in (read_manifest(out) or {}).get("images", []) if isinstance(e, dict)]
        except AttnvizError:
            if not force:
                raise
            earlier = []
        sources = discover(paths, outputs_filter(out, paths, earlier))
        analyser = Analyser(backbone, kinds, **options)
        manifest = Manifest(out, analyser, style, batch_size, command,
                            {"faithfulness": faithfulness, "sanity": sanity})
        plan = plan_run(out, sources, manifest.fingerprint, force, own)
        return _execute(analyser, manifest, plan, sources, out, style, prompts or {}, boxes or {}, faithfulness,
                        sanity, on_start, on_batch)


def _execute(analyser: Analyser, manifest: Manifest, plan, sources: list[ImageSource], out: Path, style: Style,
             prompts: Mapping[str, list[str]], boxes: Mapping[str, list], faithfulness: bool, sanity: bool,
             on_start: Callable[[int], None] | None, on_batch: Callable[[int], None] | None) -> RunReport:
    manifest.order = plan.order
    for entry in plan.kept.values():
        manifest.keep(entry)
    if sanity and plan.previous and plan.previous.get("sanity") and len(plan.todo) < len(plan.order):
        manifest.sanity = plan.previous["sanity"]["rank_correlation"]     # its first batch is done
    for output, entry in plan.old.items():        # --force over other settings: earlier records go
        if output not in plan.order:
            _remove(out, output, entry_files(entry))
    # resumed: the images given to this run an earlier run completed (a subset rerun's others are not counted)
    report = RunReport(out, notes=list(analyser.notes), resumed=sum(1 for s in sources if s.output in plan.kept))
    t0 = time.perf_counter()
    if on_start:
        on_start(len(plan.todo) + report.resumed)
        if report.resumed and on_batch:
            on_batch(report.resumed)
    try:
        batches = _aligned_batches(sources, plan.kept, manifest.head["settings"]["batch_size"], PIXEL_BUDGET)
        for i, (loaded, good) in enumerate(batches):
            _analyse_and_write(analyser, loaded, good, out, style, prompts, boxes, faithfulness,
                               manifest if sanity and i == 0 and manifest.sanity is None else None,
                               manifest, plan.old)
            report.results.extend(loaded)
            try:
                manifest.save(every=MANIFEST_EVERY_S)
            except OSError as e:
                raise _stop(e, manifest.path) if e.errno in _FATAL else e from None
            if on_batch:
                on_batch(len(loaded))
    finally:   # also on Ctrl-C or a full disk: the manifest lists every image written so far
        with contextlib.suppress(OSError):
            manifest.save(seconds=time.perf_counter() - t0)
    report.seconds = time.perf_counter() - t0
    report.forwards = analyser.forwards
    report.rankings = manifest.rankings()
    report.notes += [n for n in analyser.backbone.notes if n not in report.notes]
    return report


def _aligned_batches(sources: list[ImageSource], kept: Mapping[str, dict[str, Any]], batch_size: int,
                     budget: int) -> Iterator[tuple[list[Result], list[tuple[Result | ImageSource, Image.Image]]]]:
    """Decoded batches laid out over every source as one uninterrupted run lays them out (at most
    `batch_size` files and `budget` decoded pixels; an image over the budget alone), resumed images
    included: each forward pass then has the same batch size, so its maps the same bits (CPU kernels
    round differently at other batch sizes). A resumed image in a batch with others to compute is
    decoded again to fill its slot (never written); batches of resumed images only are skipped."""
    slots: list[tuple[Result | ImageSource, Image.Image | None, int]] = []   # (to compute | kept, image, pixels)
    for src in sources:
        if src.output in kept:
            w, h = kept[src.output].get("size") or (0, 0)
            slot: tuple[Result | ImageSource, Image.Image | None, int] = (src, None, w * h)
        else:
            (r,), good = decode([src])
            image = good[0][1] if good else None
            slot = (r, image, image.width * image.height if image else 0)
        if slot[2] and any(s[2] for s in slots) and sum(s[2] for s in slots) + slot[2] > budget:
            yield from _fill(slots)
            slots = []
        slots.append(slot)
        if len(slots) >= batch_size:
            yield from _fill(slots)
            slots = []
    yield from _fill(slots)


def _fill(slots: list[tuple[Result | ImageSource, Image.Image | None, int]]
          ) -> Iterator[tuple[list[Result], list[tuple[Result | ImageSource, Image.Image]]]]:
    """One batch: the results to record, and (result or kept source, image) in slot order."""
    loaded = [s for s, _, _ in slots if isinstance(s, Result)]
    if not loaded:
        return
    compute = any(image is not None for _, image, _ in slots)
    batch: list[tuple[Result | ImageSource, Image.Image]] = []
    for s, image, _ in slots:
        if image is not None:
            batch.append((s, image))
        elif isinstance(s, ImageSource) and compute:
            batch += [(s, im) for _, im in decode([s])[1]]
    yield loaded, batch


def _analyse_and_write(analyser: Analyser, loaded: list[Result], batch: list, out: Path, style: Style,
                       prompts: Mapping[str, list[str]], boxes: Mapping[str, list], faithful: bool,
                       sanity_to: Manifest | None, manifest: Manifest, old: dict[str, dict[str, Any]]) -> None:
    """Analyse (one forward) and write one decoded batch; each image is recorded once its files are.
    `batch`: (result, image) to write, or (source, image) of a resumed image only filling its slot."""
    images = [im for _, im in batch]
    per_image = [list(prompts.get(r.source, ())) for r, _ in batch] if prompts else None
    if batch and sanity_to is not None:
        sanity_to.sanity = checks.sanity(analyser, images, per_image)
    outcomes = analyser.analyse_batch(images, per_image) if batch else []
    good = [(pair, outcome) for pair, outcome in zip(batch, outcomes) if isinstance(pair[0], Result)]
    done = {id(r) for (r, _), _ in good}
    for r in loaded:
        if id(r) not in done:
            manifest.add(r)                      # decoding failed: an error record
    for (r, image), (preds, maps) in good:
        r.predictions, r.maps = preds, maps
        problem = _not_finite(r)
        if problem:
            r.status, r.error, r.maps = "error", problem, []
            manifest.add(r)
            continue
        if faithful:
            scores = checks.faithfulness(analyser, image, maps)
            for m in maps:
                m.meta["faithfulness"] = scores[m.name]
        try:
            files = write_outputs(out, r, image, style, boxes.get(r.source, ()))
        except OSError as e:
            if e.errno in _FATAL:
                raise _stop(e, out / r.output) from None
            r.status, r.error, files = "error", f"cannot write outputs: {e.strerror or e}", None
        if r.output in old and files is not None:     # outputs these settings no longer produce
            _remove(out, r.output, set(entry_files(old[r.output])) - set(files))
        manifest.add(r, files)
        r.maps = []                                   # written; keep memory flat on big folders


def _stop(e: OSError, where: Path) -> AttnvizError:
    """The disk or the folder, not the image: the run stops in one line naming the path (exit 2)."""
    return AttnvizError(f"cannot write {e.filename or where}: {e.strerror or e}; "
                        f"manifest.json lists the images written before it (rerun to resume)")


def _not_finite(r: Result) -> str | None:
    """A one-line reason when the model produced NaN or Inf for this image (no map is drawn from it)."""
    if any(not np.isfinite(p.probability) for p in r.predictions):
        return "the model's output is not finite (NaN/Inf): check its weights"
    for m in r.maps:
        if not np.isfinite(m.data).all() or (m.weights is not None and not np.isfinite(m.weights).all()):
            return f"map {m.name} is not finite (NaN/Inf): check the model's weights"
    return None


def _remove(out: Path, output: str, names) -> None:
    """Delete an earlier record's files; never outside OUT, whatever a (hand-edited) manifest says."""
    inside = out.resolve()
    for name in names:
        path = out / output / name
        with contextlib.suppress(OSError, ValueError):
            if path.resolve().is_relative_to(inside):
                path.unlink()
