"""`attnviz run`, `attnviz demo` and `attnviz evaluate`: the commands that write results."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table
from rich.text import Text

from attnviz.cli.app import app
from attnviz.cli.common import (EXIT_OK, EXIT_SOME_FAILED, Bar, StartUp, backbone_name, check_paths,
                                colormap_option, command_line, command_started, err_console, guard, out_console,
                                prompts_from, say, shown, split_kinds)
from attnviz.cli.schema import option
from attnviz.settings import split_list

__all__ = ["run", "demo", "evaluate", "agreement_table"]


@app.command()
def run(
    paths: List[str] = typer.Argument(..., help="Image and video files and/or folders (folders recurse)."),
    out: Path = option("out", default=...),
    backbone: str = option("backbone"),
    model: Optional[str] = option("model"),
    weights: str = option("weights"),
    layer: Optional[str] = option("layer"),
    kinds: Optional[List[str]] = option("kinds"),
    text: Optional[List[str]] = option("texts"),
    text_file: Optional[Path] = option("text_file"),
    target: Optional[List[str]] = option("targets"),
    per_word: bool = option("per_word"),
    contrast: bool = option("contrast"),
    pretrained: Optional[str] = option("pretrained"),
    clip_variant: str = option("variant"),
    slide: Optional[str] = option("slide"),
    query: Optional[str] = option("query"),
    faithfulness: bool = option("faithfulness"),
    sanity: bool = option("sanity"),
    stats: bool = option("stats"),
    derived_only: bool = option("native"),
    align: bool = option("align"),
    outliers: str = option("outliers"),
    self_layer: Optional[str] = option("self_layer"),
    input_size: Optional[int] = option("input_size"),
    size: int = option("size"),
    colormap: str = option("colormap"),
    alpha: float = option("alpha"),
    top_k: int = option("top_k"),
    tau: float = option("tau"),
    batch_size: int = option("batch_size"),
    device: str = option("device"),
    seed: Optional[int] = option("seed"),
    engine: str = option("engine"),
    address: Optional[str] = option("address"),
    workers: Optional[int] = option("workers"),
    fmt: str = option("format"),
    gpus_per_worker: float = option("gpus_per_worker"),
    fps: float = option("fps"),
    every: Optional[int] = option("every"),
    max_frames: Optional[int] = option("max_frames"),
    smooth: float = option("smooth"),
    video_scale: str = option("video_scale"),
    animated: str = option("animated"),
    resume: bool = option("resume"),
    force: bool = option("force"),
    quiet: bool = option("quiet"),
    debug: bool = option("debug"),
) -> None:
    """Write heatmaps, bar charts, grids, raw maps and a manifest for every image."""
    params = dict(locals())             # the options as given, by parameter name
    started = command_started()
    inputs = check_paths(paths)
    prompts = tuple(prompts_from(text, text_file))
    names = split_kinds(kinds)
    from attnviz.cli.preflight import preflight     # numpy and PIL: not for --help
    guard(lambda: preflight(params, inputs, out), debug)     # before torch: one line at once, nothing written
    with StartUp() as boot:                           # until the model is loaded (see StartUp)
        from attnviz.pipeline import run as run_pipeline
        from attnviz.pipeline.distributed import RayOptions
        from attnviz.pipeline.video import VideoSettings
        from attnviz.report.outputs import Style

        def go():
            with Bar("attnviz run", quiet) as bar:
                return run_pipeline(
                    inputs, out, backbone=backbone_name(backbone, model), kinds=names,
                    batch_size=batch_size, style=Style(size=size, colormap=colormap, alpha=alpha, top_k=top_k,
                                                       format=fmt),
                    command=command_line(), on_start=boot.then(bar.start), on_batch=bar.advance,
                    weights=pretrained or weights, layer=layer, texts=prompts,
                    query=query, per_word=per_word, contrast=contrast, variant=clip_variant, slide=slide,
                    input_size=input_size, device=device, seed=seed, tau=tau, self_layer=self_layer,
                    native=not derived_only, faithfulness=faithfulness, sanity=sanity, force=force,
                    stats=stats, engine=engine, workers=workers if engine == "local" else None,
                    align=align, outliers=outliers, on_status=bar.status, started=started,
                    targets=tuple(split_list(target)),
                    video=VideoSettings(fps, every, max_frames, smooth, video_scale, animated),
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
    parts = getattr(report, "timings", {}) or {}
    busy = parts.get("images", report.seconds)
    rate = len(report.results) / busy if busy else 0
    passes = f"{report.forwards} forward pass{'es' if report.forwards != 1 else ''}"
    shares = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()
                       if k in ("starting", "loading", "measuring", "images") and (k != "starting" or v >= 0.05))
    table.add_row("time", f"{report.seconds:.1f} s in all" + (f" ({shares})" if shares else "")
                  + f"; {rate:.2f} img/s, {passes}")
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
    table = Table(title=Text(shown(title)), title_justify="left",
                  caption="chance: the hit rate of a peak on a random cell (≈ the share of the image the boxes cover)",
                  caption_justify="left")
    for col in ("kind", "pointing game", "chance", "energy in box", "maps"):
        table.add_column(col, justify="right" if col != "kind" else "left")
    for kind, frac in ev.pointing_game.items():
        table.add_row(kind, f"{frac:.1%}", f"{ev.chance.get(kind, float('nan')):.1%}", f"{ev.energy_in_box[kind]:.1%}",
                      str(ev.counts[kind]))
    err_console.print(table)
    if ev.random_weights:
        say("random weights", "bold red", "the run's model was never trained: its maps mean nothing, and neither "
            "do these scores (compare them with chance)")


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
    with StartUp() as boot:
        from attnviz.demo.run import run_demo
        from attnviz.report.outputs import Style

        def go():
            with Bar("attnviz demo", quiet) as bar:
                return run_demo(out, scenes, seed, style=Style(size=size, colormap=colormap),
                                faithfulness=faithfulness, sanity=sanity, command=command_line(),
                                on_start=boot.then(bar.start), on_batch=bar.advance)

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
    for note in ev.skipped:
        say("skipped", "yellow", note)
    if ev.missing:
        say(f"{len(ev.missing)} images have no boxes", "yellow", f"(e.g. {ev.missing[0]})")
    out_console.print(Text(shown(f"written: {out / 'evaluation.json'} (and pointing_game in manifest.json)")),
                      highlight=False)
    if ev.skipped:                       # damaged or foreign records: not scored, like failed images
        raise typer.Exit(EXIT_SOME_FAILED)
