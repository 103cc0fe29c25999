"""`attnviz compare`: images side by side — by kinds, layers or backbones — on paginated sheets."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text

from attnviz.cli.app import app
from attnviz.cli.schema import option
from attnviz.cli.common import (EXIT_SOME_FAILED, Bar, StartUp, backbone_name, check_paths, guard,
                                out_console, prompts_from, say, split_kinds)
from attnviz.settings import split_list
from attnviz.text import printable

__all__ = ["compare"]


def _names(value: Optional[str]) -> list[str]:
    return split_list(value)


@app.command()
def compare(
    paths: List[str] = typer.Argument(..., help="Image files and/or folders, or ONE run folder (reads its manifest.json and maps.npz; nothing recomputed)."),
    out: Path = typer.Option(..., "-o", "--out", help="sheet.png (several pages: sheet-001.png …) or sheets.pdf (one page each)."),
    by: str = typer.Option("kinds", "--by", help="Columns: kinds (every map of one backbone), layers (--layers) or backbones (--backbones)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="--by layers: comma-separated layers (`attnviz layers NAME`); maps are derived from each."),
    backbones: Optional[str] = typer.Option(None, "--backbones", help="--by backbones: comma-separated backbone names."),
    kinds: Optional[List[str]] = option("kinds", help="Kinds to show, comma-separated or repeated (default: all by kinds; spatial by layers/backbones)."),
    scale: str = typer.Option("cell", "--scale", help="cell: each map min–max on its own; row: one scale per row; shared: one scale per kind across the sheet (equal values, equal colours)."),
    per_page: int = typer.Option(8, "--per-page", min=1, help="Rows (images) per page."),
    cell: int = typer.Option(256, "--cell", min=64, max=1024, help="Side of each square cell in pixels."),
    backbone: str = option("backbone", help="Backbone for --by kinds/layers (`attnviz backbones`)."),
    model: Optional[str] = option("model", help="Your own model instead: package.module:factory."),
    weights: str = option("weights", help="DEFAULT, a weights enum name or tag, a state_dict FILE, or none (random init)."),
    layer: Optional[str] = option("layer", help="--by kinds/backbones: layer to read (default: the last feature stage)."),
    text: Optional[List[str]] = option("texts", help="Cross-attention prompt (repeatable); default: the top-1 class name."),
    text_file: Optional[Path] = option("text_file", help="Prompts, one per line ('#' starts a comment)."),
    query: Optional[str] = option("query", help="Self-attention query X,Y in image pixels."),
    input_size: Optional[int] = option("input_size", help="Model input side (default: the weights' own)."),
    colormap: str = option("colormap", help="Matplotlib colormap name."),
    alpha: float = option("alpha", help="Heatmap opacity over the image."),
    batch_size: int = option("batch_size", help="Images per forward pass."),
    device: str = option("device", help="cpu, cuda or auto."),
    seed: Optional[int] = option("seed", help="Seed for random-init weights."),
    quiet: bool = option("quiet", help="No progress bar or summary (errors still print)."),
    debug: bool = option("debug", help="Show tracebacks."),
) -> None:
    """Sheets of images side by side: rows are images, columns are kinds, layers or backbones."""
    params = dict(locals())             # the options as given, by parameter name
    inputs = check_paths(paths)
    prompts = tuple(prompts_from(text, text_file))
    names = split_kinds(kinds)
    from attnviz.cli.preflight import preflight     # numpy and PIL: not for --help
    guard(lambda: preflight(params, inputs), debug)     # before torch: one line at once
    with StartUp() as boot:                           # until the model is loaded (see StartUp)
        from attnviz.compare import compare as compare_api

        options = dict(weights=weights, texts=prompts, query=query,
                       input_size=input_size, device=device, seed=seed)
        if layer is not None:
            options["layer"] = layer

        def go():
            with Bar("attnviz compare", quiet) as bar:
                return compare_api(inputs, out, by=by, backbone=backbone_name(backbone, model), kinds=names,
                                   layers=_names(layers), backbones=_names(backbones), per_page=per_page, scale=scale,
                                   cell=cell, colormap=colormap, alpha=alpha, batch_size=batch_size,
                                   on_start=boot.then(bar.start), on_batch=bar.advance, **options)

        report = guard(go, debug)
    for source, error in report.failed:
        say("failed", "red", f"{source}: {error}")
    if not quiet:
        if report.random:
            say("warning", "yellow", "random weights: the maps mean nothing (the sheet says so)")
        pages = f"{len(report.files)} file{'s' if len(report.files) != 1 else ''}"
        out_console.print(Text(printable(f"{report.rows} images × {len(report.columns)} columns, {pages}: "
                                         + ", ".join(str(p) for p in report.files))), highlight=False)
    if report.failed:
        raise typer.Exit(EXIT_SOME_FAILED)
