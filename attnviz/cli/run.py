"""`attnviz run`, `attnviz demo` and `attnviz evaluate`: the commands that write results."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table
from rich.text import Text

from attnviz.cli.app import app
from attnviz.cli.common import (EXIT_OK, EXIT_SOME_FAILED, Bar, backbone_name, check_paths, colormap_option,
                                command_line, err_console, guard, out_console, prompts_from, query_option,
                                say, shown, split_kinds)

__all__ = ["run", "demo", "evaluate", "agreement_table"]


@app.command()
def run(
    paths: List[str] = typer.Argument(..., help="Image files and/or folders (folders recurse)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (created; mirrors the input tree)."),
    backbone: str = typer.Option("resnet50", "--backbone", "-b", help="Backbone name (`attnviz backbones` lists every family and name)."),
    model: Optional[str] = typer.Option(None, "--model", help="Your own model instead: package.module:factory (a callable returning an nn.Module)."),
    weights: str = typer.Option("DEFAULT", "--weights", "-w", help="DEFAULT, a weights enum name or tag (IMAGENET1K_V1), a state_dict FILE, or none (random init)."),
    layer: Optional[str] = typer.Option(None, "--layer", "-l", help="Layer to read (default: the last feature stage; see `attnviz layers`)."),
    kinds: Optional[List[str]] = typer.Option(None, "--kinds", "-k", help="Kinds to compute, comma-separated or repeated (default: every raw kind; gradient kinds such as self-gae only when named; `attnviz kinds` lists them)."),
    target: Optional[List[str]] = typer.Option(None, "--target", help="Gradient kinds (self-gae, self-legrad, gradcam): a class name or index to explain (repeatable, one map per target); default: each image's top-1 class."),
    text: Optional[List[str]] = typer.Option(None, "--text", "-t", help="Cross-attention prompt (repeatable); default: the top-1 class name."),
    text_file: Optional[Path] = typer.Option(None, "--text-file", help="Prompts, one per line ('#' starts a comment)."),
    per_word: bool = typer.Option(False, "--per-word", help="CLIP: also a map for each content word of each prompt."),
    contrast: bool = typer.Option(False, "--contrast", help="CLIP: also each prompt's similarity minus the mean of the others'."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="CLIP: open_clip pretrained tag (default: the arch's usual one); same as --weights TAG."),
    clip_variant: str = typer.Option("value", "--clip-variant", help="CLIP patch tokens: value (MaskCLIP, default), clear (ClearCLIP), sclip (SCLIP), naclip (NACLIP), plain (the last block's output), or all (every one side by side)."),
    slide: Optional[str] = typer.Option(None, "--slide", help="CLIP: WINDOW,STRIDE[,SHORT] — overlapping crops of the image resized to a short side of SHORT px (default 1.5 × WINDOW), patch similarities averaged (e.g. 224,112)."),
    query: Optional[str] = typer.Option(None, "--query", callback=query_option, help="Self-attention query X,Y in image pixels (default: the spatial-map peak)."),
    faithfulness: bool = typer.Option(False, "--faithfulness", help="Also score every map by deletion/insertion AUC (extra forward passes: slower)."),
    sanity: bool = typer.Option(False, "--sanity", help="Also compare the first batch's maps with a fully randomised model's (rank correlation; ≥ 0.3 is flagged)."),
    stats: bool = typer.Option(False, "--stats", help="Also write agreement.csv/.png: per image and pair of kinds, Spearman's rho and the IoU of the top-20 % regions."),
    derived_only: bool = typer.Option(False, "--derived-only", help="Derive channel, spatial, mixed and self from --layer even where the model has its own attention modules (to compare with the native maps)."),
    align: bool = typer.Option(True, "--align/--no-align", help="Draw each CNN cell at its measured receptive-field centre (gradient centroid, measured once per backbone, layer and input size); --no-align: at the centre of its block, as before."),
    outliers: str = typer.Option("keep", "--outliers", help="Patch tokens of outlying norm (ViT artifact tokens, listed as outlier_tokens): keep (the map as computed), mask (left blank), or interpolate (their neighbours' mean)."),
    self_layer: Optional[str] = typer.Option(None, "--self-layer", help="Attention module for the per-head maps (default: the last; see `attnviz inspect`)."),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=16, max=2048, help="Model input side, 16 to 2048 (default: the weights' own, usually 224)."),
    size: int = typer.Option(512, "--size", min=16, max=8192, help="Longest side of the written pictures, 16 to 8192."),
    colormap: str = typer.Option("jet", "--colormap", callback=colormap_option, help="Matplotlib colormap name (jet, inferno, viridis ...)."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Heatmap opacity over the image."),
    top_k: int = typer.Option(20, "--top-k", min=1, help="Channels shown as bars in channel_weights.png."),
    tau: float = typer.Option(0.1, "--tau", min=1e-4, help="Temperature of derived self-attention."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward pass."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for random-init weights."),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (a Ray cluster; the ray extra)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray: the cluster to join (auto: the one `ray start` runs here); default: a local one."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Local: threads that draw and write files while the next batch runs (default: one per core; 0: none). Ray: actors, each with its own model (default: one per CPU of the cluster)."),
    fmt: str = typer.Option("png", "--format", help="Overlays and original: png, jpg or webp (charts, grids and maps.npz keep theirs)."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0.0, help="Ray: GPUs per actor (a fraction shares a GPU)."),
    resume: bool = typer.Option(True, "--resume", help="Keep the images an earlier run into OUT completed with the same settings (the default)."),
    force: bool = typer.Option(False, "--force", help="Recompute every image even if OUT holds a run with other settings or files attnviz did not write; outputs the new settings no longer produce are removed."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary (errors still print)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Write heatmaps, bar charts, grids, raw maps and a manifest for every image."""
    from attnviz.pipeline import run as run_pipeline
    from attnviz.pipeline.distributed import RayOptions
    from attnviz.report.outputs import Style

    inputs = check_paths(paths)

    def go():
        with Bar("attnviz run", quiet) as bar:
            return run_pipeline(
                inputs, out, backbone=backbone_name(backbone, model), kinds=split_kinds(kinds),
                batch_size=batch_size, style=Style(size=size, colormap=colormap, alpha=alpha, top_k=top_k,
                                                   format=fmt),
                command=command_line(), on_start=bar.start, on_batch=bar.advance,
                weights=pretrained or weights, layer=layer, texts=tuple(prompts_from(text, text_file)),
                query=query, per_word=per_word, contrast=contrast, variant=clip_variant, slide=slide,
                input_size=input_size, device=device, seed=seed, tau=tau, self_layer=self_layer,
                native=not derived_only, faithfulness=faithfulness, sanity=sanity, force=force,
                stats=stats, engine=engine, workers=workers if engine == "local" else None,
                align=align, outliers=outliers, targets=tuple(target or ()),
                ray=RayOptions(address, workers or None, gpus_per_worker) if engine == "ray" else None)

    report = guard(go, debug)
    finish(report, quiet, "attnviz run")


def finish(report, quiet: bool, title: str) -> None:
    """The summary (or, quiet, the failed files), then the exit code: 1 when any image failed."""
    if not quiet:
        summary(report, title)
        if getattr(report, "agreement", None):
            agreement_table(report.agreement)
    else:
        for r in report.failed:
            say("failed", "red", f"{r.source}: {r.error}")
    if report.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def summary(report, title: str) -> None:
    """A short table: images ok and failed, notes, best matches per prompt, time, where."""
    t = lambda s: Text(shown(s))   # noqa: E731  (user text and file names are data)
    ok = len(report.results) - len(report.failed) + getattr(report, "resumed", 0)
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_row("images ok", Text(str(ok), style="green"))
    for label, value in getattr(report, "counts", {}).items():
        table.add_row(label, str(value))
    table.add_row("errors", Text(str(len(report.failed)), style="red") if report.failed else "0")
    for r in report.failed[:20]:
        table.add_row("", t(f"{r.source}: {r.error}"))
    if len(report.failed) > 20:
        table.add_row("", f"… {len(report.failed) - 20} more in manifest.json")
    for note in report.notes:
        table.add_row("note", t(note))
    for prompt, ranked in list(report.rankings.items())[:5]:
        best = ", ".join(f"{r['source']} ({r['score']:.3f})" for r in ranked[:3])
        table.add_row(t(f"best for “{prompt}”"), t(best))
    if len(report.rankings) > 5:
        table.add_row("", f"… {len(report.rankings) - 5} more prompts ranked in manifest.json")
    rate = len(report.results) / report.seconds if report.seconds else 0
    passes = f"{report.forwards} forward pass{'es' if report.forwards != 1 else ''}"
    table.add_row("time", f"{report.seconds:.1f} s ({rate:.2f} img/s, {passes})")
    table.add_row("outputs", t(f"{report.out}/ (manifest.json)"))
    err_console.print(table)


def agreement_table(mean: dict) -> None:
    """Folder means of the agreement between kinds: ρ / top-20 % IoU for every pair."""
    kinds = mean["kinds"]
    table = Table(title=f"agreement between kinds, mean over {mean['images']} images "
                        f"(Spearman ρ / IoU of the top-20 % regions)", title_justify="left")
    table.add_column("kind")
    for k in kinds:
        table.add_column(k, justify="right")
    for i, k in enumerate(kinds):
        cells = ["—" if i == j or mean["spearman"][i][j] is None
                 else f"{mean['spearman'][i][j]:+.2f} / {mean['top20_iou'][i][j]:.2f}" for j in range(len(kinds))]
        table.add_row(k, *cells)
    err_console.print(table)


def pointing_table(ev, title: str) -> None:
    """Pointing game and energy in box per kind."""
    table = Table(title=Text(shown(title)), title_justify="left")
    for col in ("kind", "pointing game", "energy in box", "maps"):
        table.add_column(col, justify="right" if col != "kind" else "left")
    for kind, frac in ev.pointing_game.items():
        table.add_row(kind, f"{frac:.1%}", f"{ev.energy_in_box[kind]:.1%}", str(ev.counts[kind]))
    err_console.print(table)


@app.command()
def demo(
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: scenes/, boxes.json and the usual outputs."),
    scenes: int = typer.Option(24, "--scenes", min=1, max=100_000, help="How many scenes to generate."),
    seed: int = typer.Option(7, "--seed", min=0, max=2**32 - 1, help="Scene seed (the model was trained on other seeds)."),
    size: int = typer.Option(384, "--size", min=16, help="Longest side of the written pictures."),
    colormap: str = typer.Option("jet", "--colormap", callback=colormap_option, help="Matplotlib colormap name."),
    faithfulness: bool = typer.Option(False, "--faithfulness", help="Also score every map by deletion/insertion AUC."),
    sanity: bool = typer.Option(False, "--sanity", help="Also compare the maps with a fully randomised model's."),
    vit: bool = typer.Option(True, "--vit/--no-vit", help="Also score demo-vit: raw class-token attention, rollout, GAE, LeGrad, and class specificity (demo_vit.json)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or tables."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Scenes with known answers, the model trained in this repo, and how often each kind points right."""
    from attnviz.demo.run import run_demo
    from attnviz.report.outputs import Style

    def go():
        with Bar("attnviz demo", quiet) as bar:
            return run_demo(out, scenes, seed, style=Style(size=size, colormap=colormap),
                            faithfulness=faithfulness, sanity=sanity, command=command_line(),
                            on_start=bar.start, on_batch=bar.advance)

    report, ev = guard(go, debug)
    if not quiet:
        summary(report, "attnviz demo")
        pointing_table(ev, f"pointing game on {len(report.results)} scenes (peak inside the right box)")
    if vit:
        from attnviz.demo.run import score_vit
        vr = guard(lambda: score_vit(out, scenes, seed), debug)
        if not quiet:
            out_console.print(Text(f"demo-vit on the same {scenes} scenes (demo_vit.json)\n" + vr.table()),
                              highlight=False)
    raise typer.Exit(EXIT_SOME_FAILED if report.failed else EXIT_OK)


@app.command()
def evaluate(
    out: Path = typer.Argument(..., help="The output folder of an `attnviz run`."),
    boxes: Path = typer.Option(..., "--boxes", help="Ground-truth boxes: {image: [[x0,y0,x1,y1] | {box, label}]} or COCO JSON."),
    tolerance: float = typer.Option(0.0, "--tolerance", min=0.0, help="Pixels a peak may lie outside a box and still hit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Pointing game and energy-in-box of every kind of a run, against your boxes."""
    from attnviz.report.evaluate import evaluate_run, load_boxes
    ev = guard(lambda: evaluate_run(out, load_boxes(boxes), tolerance), debug)
    pointing_table(ev, f"{out}: pointing game and energy in the boxes")
    if ev.missing:
        say(f"{len(ev.missing)} images have no boxes", "yellow", f"(e.g. {ev.missing[0]})")
    out_console.print(Text(shown(f"written: {out / 'evaluation.json'} (and pointing_game in manifest.json)")),
                      highlight=False)
