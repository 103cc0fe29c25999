"""`compare`: sheets that set images side by side — by kinds, layers or backbones — from images
(through the pipeline's Analyser, one forward pass per backbone per batch) or from a run folder
(its manifest.json and maps.npz, nothing recomputed). Pages go to one PDF or to numbered PNGs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from attnviz.backbones import Backbone
from attnviz.errors import AttnvizError, one_line
from attnviz.geometry import Geometry
from attnviz.images import check_inputs, discover
from attnviz.maps import query_point
from attnviz.pipeline.analyser import Analyser
from attnviz.pipeline.batch import aligned_batches
from attnviz.pipeline.outdir import read_manifest
from attnviz.pipeline.runner import PIXEL_BUDGET
from attnviz.render.band import unbanded
from attnviz.render.overlay import fit
from attnviz.render.sheet import SCALES, SheetCell, SheetRow, render_pages
from attnviz.report.atomic import save_png, write_atomic
from attnviz.report.integrity import checked, damage, original_of
from attnviz.report.tables import column, load_maps
from attnviz.results import AttentionMap, Prediction
from attnviz.text import shown

__all__ = ["BY", "CompareReport", "compare", "is_run_folder", "page_paths"]

BY = ("kinds", "layers", "backbones")
DEFAULT_ACROSS = ["spatial"]     # kinds shown per layer/backbone when --kinds is not given


@dataclass
class CompareReport:
    """What `compare` wrote: files, rows, columns, pages, images that failed, forward passes."""

    files: list[Path] = field(default_factory=list)
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)     # (source, one-line error)
    forwards: int = 0
    random: bool = False


@dataclass
class _Image:
    """One row in the making: source, the image fitted to a cell, labels and map records by column."""

    source: str
    image: Image.Image
    label: str
    size: tuple[int, int] = (1, 1)                                        # the original's (width, height)
    maps: dict[str, tuple[str, str, Any, Any, Any]] = field(default_factory=dict)   # key -> (title, group, array, point, geometry)


def is_run_folder(path: Path) -> bool:
    """Does `path` hold an attnviz run (a folder with manifest.json)?"""
    return path.is_dir() and (path / "manifest.json").is_file()


def page_paths(output: Path, pages: int) -> list[Path]:
    """Where the pages go: the PDF itself, one PNG as named, or NAME-001.png, NAME-002.png …"""
    if output.suffix.lower() == ".pdf" or pages == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{k:03d}{output.suffix}") for k in range(1, pages + 1)]


def _label(source: str, preds: Sequence[Any], prompts: Sequence[str], whose: str = "") -> str:
    lines = [shown(source)]                   # names are data: a newline in one is drawn as \x0a
    if preds:
        p = preds[0]
        label, prob = (p.label, p.probability) if isinstance(p, Prediction) else (p["label"], p["probability"])
        lines.append(f"top-1{f' ({whose})' if whose else ''}: {label} ({100 * prob:.1f} %)")
    if prompts:
        lines.append("prompt: " + " · ".join(shown(p) for p in prompts))
    return "\n".join(lines)


def _record(m: AttentionMap) -> dict[str, Any]:
    return {"kind": m.kind, "name": m.name, "provenance": m.provenance, "layer": m.layer, **m.meta}


def _point(meta: dict[str, Any], size: tuple[int, int]) -> tuple[float, float] | None:
    """The query of a self map that is one query's row, as fractions of the image."""
    return query_point(str(meta.get("kind")), str(meta.get("name")), meta, size)


def _add(item: _Image, maps: Sequence[AttentionMap], kinds: set[str] | None, prefix: str = "") -> None:
    """File the maps under their column keys (`prefix`: the layer or backbone of the column)."""
    for m in maps:
        if kinds is not None and m.kind not in kinds:
            continue
        record = _record(m)
        key, title = column(record)
        item.maps[f"{prefix}\n{key}" if prefix else key] = (
            f"{prefix}\n{title} · {m.provenance}" if prefix else f"{title} · {m.provenance}", key, m.data,
            _point(record, item.size), m.geometry)


def _analysers(by: str, backbone: str | Backbone, kinds: list[str] | None, layers: list[str],
               backbones: list[str], options: dict[str, Any]) -> list[tuple[str, Analyser]]:
    """(column prefix, analyser) per column group: one for kinds, one per layer or backbone."""
    if by == "kinds":
        return [("", Analyser(backbone, kinds, **options))]
    kinds = kinds or DEFAULT_ACROSS
    if by == "backbones":
        if not backbones:
            raise AttnvizError("--by backbones: name them with --backbones a,b (e.g. resnet50,vit_b_16)")
        return [(name, Analyser(name, kinds, **options)) for name in backbones]
    if not layers:
        raise AttnvizError("--by layers: name them with --layers a,b (`attnviz layers NAME` lists them)")
    options = {**options, "native": False}     # each column derived from its own layer
    first = Analyser(backbone, kinds, layer=layers[0], **options)
    return [(layers[0], first)] + [(name, Analyser(first.backbone, kinds, dataclasses.replace(first.config, layer=name)))
                                   for name in layers[1:]]


def _compute(paths: Sequence[str | Path], by: str, backbone: str | Backbone, kinds: list[str] | None,
             layers: list[str], backbones: list[str], cell: int, batch_size: int,
             options: dict[str, Any], report: CompareReport, on_start, on_batch) -> tuple[list[_Image], str]:
    check_inputs(paths)
    groups = _analysers(by, backbone, kinds, layers, backbones, options)
    wanted = set(kinds or DEFAULT_ACROSS) if by != "kinds" else None   # by kinds: the analyser chose them
    sources = discover(paths)
    if on_start:
        on_start(len(sources))
    items: list[_Image] = []
    for loaded, good in aligned_batches(sources, {}, batch_size, PIXEL_BUDGET):
        report.failed += [(r.source, r.error or "") for r in loaded if r.status != "ok"]
        images = [im for _, im in good]
        if images and by == "layers":
            first, *others = [a for _, a in groups]
            preds, per_group = first.analyse_layers(images, others)     # one forward for every layer
        elif images:
            outcomes = [a.analyse_batch(images) for _, a in groups]   # one forward per backbone
            preds = [o[0] for o in outcomes[0]]
            per_group = [[o[1] for o in outs] for outs in outcomes]
        for i, (r, im) in enumerate(good):
            whose = groups[0][0] if by == "backbones" else ""          # the first backbone's prediction
            item = _Image(r.source, fit(im, cell), _label(r.source, preds[i], list(groups[0][1].options.texts), whose),
                          im.size)
            for (prefix, _), maps in zip(groups, per_group):
                _add(item, maps[i], wanted, prefix)
            items.append(item)
        if on_batch:
            on_batch(len(loaded))
    report.forwards = sum(a.forwards for _, a in groups)
    report.random = any(not a.backbone.pretrained for _, a in groups)
    a0 = groups[0][1]
    what = (", ".join(f"{a.backbone.name} ({a.backbone.weights})" for _, a in groups) if by == "backbones"
            else f"{a0.backbone.name} ({a0.backbone.weights}) · layer {', '.join(layers) if by == 'layers' else a0.layer}")
    return items, what


def _from_run(out: Path, kinds: list[str] | None, cell: int, report: CompareReport) -> tuple[list[_Image], str]:
    """Rows from a run folder: its original picture and maps.npz (nothing recomputed)."""
    manifest = read_manifest(out)
    if manifest is None:
        raise AttnvizError(f"{out}: no manifest.json (not an attnviz run folder)")
    wanted = set(kinds) if kinds else None
    items = []
    for entry in checked(out, manifest["images"], ["maps.npz"])[0]:      # damaged or foreign: one failed line each
        if entry.get("status") != "ok":
            report.failed.append((entry.get("source", "?"), entry.get("error") or "error"))
            continue
        if "video" in entry:            # its maps have a time axis: the run's <map>.mp4 shows them
            report.failed.append((entry["source"], "a video: compare draws images (see its <map>.mp4 and grid.mp4)"))
            continue
        original = original_of(entry)
        why = damage(out, entry, [original])
        if why:
            report.failed.append((entry["source"], f"files damaged: {why}; rerun `attnviz run` to redo it"))
            continue
        arrays = load_maps(out, entry)
        try:
            with Image.open(out / entry["output"] / original) as im:
                image = fit(unbanded(im.convert("RGB")), cell)      # a random run's band is not the image
        except Exception as e:  # noqa: BLE001  (damaged after the check: one line, never a crash)
            report.failed.append((entry["source"], f"{original} unreadable ({one_line(e, 80)})"))
            continue
        prompts = sorted({m["prompt"] for m in entry.get("maps", []) if m.get("prompt")
                          and m.get("prompt_source") != "top-1 class"})
        size = tuple(entry.get("size") or image.size)
        item = _Image(entry["source"], image, _label(entry["source"], entry.get("predictions") or [], prompts), size)
        for m in entry.get("maps", []):
            if (wanted is None or m["kind"] in wanted) and m.get("npz_key") in arrays:
                key, title = column(m)
                item.maps[key] = (f"{title} · {m['provenance']}", key, arrays[m["npz_key"]], _point(m, size),
                                  Geometry.from_record(m.get("geometry")))
        items.append(item)
    bb = manifest.get("backbone") or {}
    report.random = not bb.get("pretrained", True)
    return items, f"{bb.get('name')} ({bb.get('weights')}) · layer {bb.get('layer')} · from {out.name or out}"


def _save(pages: list[Image.Image], output: Path) -> list[Path]:
    """Every page: one PDF (a page each, 100 dpi), or PNGs (numbered when more than one)."""
    targets = page_paths(output, len(pages))
    if output.suffix.lower() == ".pdf":
        write_atomic(output, lambda f: pages[0].save(f, format="PDF", save_all=True,
                                                     append_images=pages[1:], resolution=100.0))
        return targets
    for page, path in zip(pages, targets):
        save_png(path, page)
    return targets


def compare(paths: Sequence[str | Path], output: str | Path, *, by: str = "kinds",
            backbone: str | Backbone = "resnet50", kinds: Sequence[str] | None = None,
            layers: Sequence[str] = (), backbones: Sequence[str] = (), per_page: int = 8,
            scale: str = "cell", cell: int = 256, colormap: str = "jet", alpha: float = 0.5,
            batch_size: int = 8, on_start: Callable[[int], None] | None = None,
            on_batch: Callable[[int], None] | None = None, **options: Any) -> CompareReport:
    """Write comparison sheets of `paths` (images/folders, or one run folder) to `output` (.png or .pdf).

    Rows are images; columns are the maps of `kinds` (by="kinds"), or those kinds per layer of
    `layers` or per backbone of `backbones`. `scale`: cell | row | shared (see attnviz.render.sheet).
    """
    output = Path(output)
    if output.suffix.lower() not in (".png", ".pdf"):
        raise AttnvizError(f"-o {output}: name a .png (one per page: NAME-001.png …) or a .pdf")
    if by not in BY:
        raise AttnvizError(f"--by {by!r}: use one of {', '.join(BY)}")
    if scale not in SCALES:
        raise AttnvizError(f"--scale {scale!r}: use one of {', '.join(SCALES)}")
    if isinstance(per_page, bool) or not isinstance(per_page, int) or per_page < 1:
        raise AttnvizError(f"--per-page {per_page!r}: use a whole number ≥ 1")
    kinds = list(kinds) if kinds else None
    report = CompareReport()
    runs = [Path(p) for p in paths if is_run_folder(Path(p))]
    if runs:
        if len(paths) != 1 or by != "kinds":
            raise AttnvizError("a run folder is compared on its own, by kinds: `attnviz compare OUT/ -o sheet.png` "
                               "(to compare layers or backbones, give the images)")
        items, what = _from_run(runs[0], kinds, cell, report)
    else:
        items, what = _compute(paths, by, backbone, kinds, list(layers), list(backbones), cell, batch_size,
                               options, report, on_start, on_batch)
    if not items:
        raise AttnvizError("no image could be compared" + (f" ({report.failed[0][0]}: {report.failed[0][1]})"
                                                           if report.failed else ""))
    keys = list(dict.fromkeys(k for it in items for k in it.maps))
    titles = {k: t for it in items for k, (t, *_) in it.maps.items()}
    rows = [SheetRow(it.image, it.label, [SheetCell(it.maps[k][2], it.maps[k][1], it.maps[k][3], it.maps[k][4])
                                          if k in it.maps else None for k in keys]) for it in items]
    title = shown(f"attnviz compare · {what} · by {by} · scale {scale}")     # a run folder's name is data
    pages = render_pages([titles[k] for k in keys], rows, per_page=per_page, scale=scale, colormap=colormap,
                         alpha=alpha, cell=cell, title=title, random=report.random)
    report.files = _save(pages, output)
    report.rows, report.columns = len(rows), [titles[k] for k in keys]
    return report
