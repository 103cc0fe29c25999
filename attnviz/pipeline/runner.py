"""`run`: analyse images in batches and write every output plus OUT/manifest.json (layout in the README).

A run holds OUT's lock, resumes what an earlier run with the same settings completed, and stops
with one line (exit 2) when OUT cannot be written; the manifest always lists exactly the images
whose files are complete.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


import attnviz.pipeline.checks as checks
from attnviz.backbones import Backbone
from attnviz.backbones.weights import RANDOM_NOTE
from attnviz.errors import AttnvizError
from attnviz.images import ImageSource, check_inputs, discover
from attnviz.pipeline.analyser import Analyser
from attnviz.pipeline.api import check_batch_size
from attnviz.pipeline.batch import (aligned_batches, analysed, remove_files, stopping_at, write_one,
                                    written_or_error)
from attnviz.pipeline.distributed import RayOptions, ray_records
from attnviz.pipeline.video import VideoSettings, run_videos, split_videos
from attnviz.pipeline.outdir import (OWN_FILES, entry_files, locked, outputs_filter, plan_run, read_manifest,
                                     remove_stale_temporaries)
from attnviz.report.folder import write_reports
from attnviz.report.integrity import foreign
from attnviz.report.manifest import Manifest
from attnviz.report.outputs import Style
from attnviz.report.writer import Writer
from attnviz.results import Result
from attnviz.settings import check
from attnviz.video import require_av

__all__ = ["run", "RunReport", "MANIFEST_EVERY_S", "PIXEL_BUDGET"]

MANIFEST_EVERY_S = 5.0      # a long run rewrites manifest.json at most this often (and at the end)
PIXEL_BUDGET = 2 ** 27      # decoded pixels per batch (134 MP ≈ 400 MB of RGB): bigger batches are split


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
    agreement: dict | None = None                  # --stats: folder means of agreement between kinds
    timings: dict = field(default_factory=dict)    # seconds of the parts: loading, measuring, images

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
        sanity: bool = False, force: bool = False, own: Sequence[str] = (), stats: bool = False,
        engine: str = "local", ray: RayOptions | None = None, workers: int | None = None,
        on_status: Callable[[str], None] | None = None, started: float | None = None,
        video: VideoSettings | None = None, **options: Any) -> RunReport:
    """Analyse images and write every output plus OUT/manifest.json; see the README for the layout.

    `prompts` and `boxes` are keyed by an image's `source`: per-image prompts for text backbones
    that take them, and ground-truth boxes drawn on its grid. `faithfulness` adds deletion and
    insertion AUCs to every map; `sanity` compares the first batch's maps with a randomised model's.
    A rerun with the same settings resumes (images already complete are kept); other settings are
    refused unless `force`. `own`: top-level names in OUT the caller wrote (not foreign files).
    `engine="ray"` runs the images on a Ray cluster (`ray`: address, workers, GPUs per worker);
    locally, `workers` threads draw and write each batch's files while the next batch runs (None: one
    per core; 0: in this thread) — the files are the same for any number.
    Every run also writes OUT/index.html and OUT/summary.csv; `stats` adds OUT/agreement.csv/.png.
    `on_status(text)` hears what is done before the first image (loading, measuring); the report's
    `seconds` run from `started` (a `time.perf_counter()` value; default: now) to the end.
    Videos among the inputs (by content) are sampled and written as videos (`video`: the sampling,
    smoothing and colour scale; README "Video").
    """
    entered = time.perf_counter()
    started = entered if started is None else started
    check_batch_size(batch_size)
    check("workers", workers)                                    # limits from the settings schema
    check("engine", engine)
    style = style or Style()
    out = Path(out)
    outputs_filter(out, paths)                                   # refuse an OUT that is a file, early
    check_inputs(paths)                                          # and missing inputs, before the lock
    with locked(out, command):
        remove_stale_temporaries(out)
        try:
            earlier = [e["output"] for e in (read_manifest(out) or {}).get("images", []) if foreign(out, e) is None]
        except AttnvizError:
            if not force:
                raise
            earlier = []
        sources = discover(paths, outputs_filter(out, paths, earlier), reserved=OWN_FILES | set(own))
        video = video or VideoSettings()
        videos = {s.output for s in split_videos(sources, video.animated)}
        if videos:
            require_av()                       # the extra is missing: one line naming it, before loading
        analyser = Analyser(backbone, kinds, progress=on_status, **options)
        if not analyser.backbone.pretrained:        # every grid says so, not only the terminal
            style = dataclasses.replace(style, banner=RANDOM_NOTE)
        manifest = Manifest(out, analyser.record(), style, batch_size, command,
                            {"faithfulness": faithfulness, "sanity": sanity, **video.record()})
        plan = plan_run(out, sources, manifest.fingerprint, force, own)
        remote = (backbone, ray or RayOptions()) if engine == "ray" else None
        images = [s for s in sources if s.output not in videos]
        try:
            report = _execute(analyser, manifest, plan, images, out, style, prompts or {}, boxes or {},
                              faithfulness, sanity, on_start, on_batch, remote, workers,
                              resumed=sum(1 for s in sources if s.output in videos and s.output in plan.kept))
            run_videos(analyser, manifest, [s for s in plan.todo if s.output in videos], out, style, video,
                       manifest.head["settings"]["batch_size"], report, on_batch)
            # the saved manifest, its entries read back one at a time (never all in memory)
            report.agreement = write_reports(out, manifest.document(), stats)
        finally:
            manifest.close()
        report.timings = {"starting": entered - started, **analyser.timings, "images": report.seconds}
        report.seconds = time.perf_counter() - started                 # the whole command
        return report


def _execute(analyser: Analyser, manifest: Manifest, plan, sources: list[ImageSource], out: Path, style: Style,
             prompts: Mapping[str, list[str]], boxes: Mapping[str, list], faithfulness: bool, sanity: bool,
             on_start: Callable[[int], None] | None, on_batch: Callable[[int], None] | None,
             remote: tuple[Any, RayOptions] | None = None, workers: int | None = None,
             resumed: int = 0) -> RunReport:
    manifest.order = plan.order
    for entry in plan.kept.values():
        manifest.keep(entry)
    if sanity and plan.previous and plan.previous.get("sanity") and len(plan.todo) < len(plan.order):
        manifest.sanity = plan.previous["sanity"]["rank_correlation"]     # its first batch is done
    for output, entry in plan.old.items():        # --force over other settings: earlier records go
        if output not in plan.order:
            remove_files(out, output, entry_files(entry))
    # the earlier records are in the manifest's spool now: of each, keep only what the run reads
    # (its size fills its batch slot, its files are removed when redone), not the whole record
    plan.kept = {o: _slim(e) for o, e in plan.kept.items()}
    plan.old = {o: _slim(e) for o, e in plan.old.items()}
    if plan.previous:
        plan.previous = {k: v for k, v in plan.previous.items() if k != "images"}
    # resumed: the images given to this run an earlier run completed (a subset rerun's others are not counted)
    report = RunReport(out, notes=list(analyser.notes),
                       resumed=resumed + sum(1 for s in sources if s.output in plan.kept))
    if plan.redone:        # resume verified what it keeps: say what it did not keep
        more = f" (and {len(plan.redone) - 1} more)" if len(plan.redone) > 1 else ""
        report.notes.append(f"computed again: {plan.redone[0]}{more}")
    t0, finished = time.perf_counter(), False
    if on_start:
        on_start(len(plan.todo) + report.resumed)      # videos count one each
        if report.resumed and on_batch:
            on_batch(report.resumed)
    earlier = ((plan.previous or {}).get("settings") or {}).get("batch_size")
    if plan.kept and isinstance(earlier, int) and earlier != manifest.head["settings"]["batch_size"]:
        # the same batches give the same bits: a resume lays them out as the earlier run did
        report.notes.append(f"resumed with the earlier run's --batch-size {earlier} (the same batches "
                            f"give the same numbers)")
        manifest.head["settings"]["batch_size"] = earlier
    try:
        batch_size = manifest.head["settings"]["batch_size"]
        if remote is not None:
            _on_ray(analyser, manifest, plan, sources, out, style, prompts, boxes, faithfulness, sanity,
                    batch_size, remote, report, on_batch)
        local = aligned_batches(sources, plan.kept, batch_size, PIXEL_BUDGET) if remote is None else ()
        writer = Writer(workers)            # files drawn and written while the next batch runs
        device = analyser.backbone.device
        draw_on = device if getattr(device, "type", "cpu") == "cuda" else None   # overlays drawn there
        try:
            for loaded, batch in local:
                if sanity and batch and manifest.sanity is None:     # the first batch, before its maps
                    per_image = [list(prompts.get(s.source, ())) for s, _ in batch] if prompts else None
                    manifest.sanity = checks.sanity(analyser, [im for _, im in batch], per_image)
                for r, image in analysed(analyser, loaded, batch, prompts, faithfulness):
                    files: list[str] = []                      # filled by the writer with what it wrote
                    writer.submit(write_one if image is not None else None, out, r, image, style, boxes,
                                  plan.old, files, tag=(r, files), device=draw_on)
                _record(writer.finished(), manifest, report, out, style, on_batch)
            _record(writer.drain(), manifest, report, out, style, on_batch)
        except BaseException:               # Ctrl-C, a full disk: keep what is already on disk
            done = list(writer.settle())
            writer.close(cancel=True)
            with contextlib.suppress(Exception):
                _record(done, manifest, report, out, style, None)
            raise
        writer.close()
        _save(manifest, 0.0, seconds=time.perf_counter() - t0)
        finished = True
    finally:   # also on Ctrl-C or a full disk: the manifest lists every image written so far
        if not finished:
            with contextlib.suppress(OSError):
                manifest.save(seconds=time.perf_counter() - t0)
        report.seconds = time.perf_counter() - t0
        report.forwards += analyser.forwards
        report.rankings = manifest.rankings()
        report.notes += [n for n in analyser.backbone.notes if n not in report.notes]
    return report


def _record(done, manifest: Manifest, report: RunReport, out: Path, style: Style,
            on_batch: Callable[[int], None] | None) -> None:
    """Images whose files are written (in input order): into the manifest, the report and the bar."""
    n = 0
    for (r, files), error in done:
        files = written_or_error(r, error, out, files)
        with stopping_at(manifest.path):     # the spool beside the outputs: the same disk, named by the manifest
            manifest.add(r, files)
        r.maps = []                                  # recorded; keep memory flat on big folders
        report.results.append(r)
        n += 1
    if n:
        _save(manifest, MANIFEST_EVERY_S)
        if on_batch:
            on_batch(n)


def _slim(entry: dict[str, Any]) -> dict[str, Any]:
    """What a run reads of an earlier image record: its folder, size and files."""
    return {"output": entry["output"], "size": entry.get("size"), "files": entry_files(entry)}


def _save(manifest: Manifest, every: float, **kw: Any) -> None:
    """Rewrite the manifest; a disk that refuses it stops the run in one line naming it."""
    with stopping_at(manifest.path):
        manifest.save(every=every, **kw)


def _on_ray(analyser: Analyser, manifest: Manifest, plan, sources: list[ImageSource], out: Path, style: Style,
            prompts: Mapping[str, list[str]], boxes: Mapping[str, list], faithfulness: bool, sanity: bool,
            batch_size: int, remote: tuple[Any, RayOptions], report: RunReport,
            on_batch: Callable[[int], None] | None) -> None:
    """The images of `plan` through a Ray actor pool; records enter the manifest as they come back."""
    backbone, options = remote
    if sanity and plan.todo and manifest.sanity is None:     # on the driver: it has the model too
        _, batch = next(aligned_batches(sources, plan.kept, batch_size, PIXEL_BUDGET), (None, []))
        per_image = [list(prompts.get(s.source, ())) for s, _ in batch] if prompts else None
        manifest.sanity = checks.sanity(analyser, [im for _, im in batch], per_image) if batch else None
    for entry in ray_records(backbone, analyser, sources, plan.kept, out, style, batch_size, prompts, boxes,
                             faithfulness, plan.old, PIXEL_BUDGET, options):
        with stopping_at(manifest.path):
            manifest.keep(entry)
        report.results.append(Result(entry["source"], Path(entry["source"]), entry["output"], entry["status"],
                                     entry["error"], tuple(entry["size"]) if entry["size"] else None))
        _save(manifest, MANIFEST_EVERY_S)
        if on_batch:
            on_batch(1)
