"""The `attnviz` command: parses options, calls the Python API, prints. Exit codes in the README."""
from __future__ import annotations

import math
import shlex
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from attnviz import __version__
from attnviz.errors import AttnvizError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
# click's UsageError, wherever this Typer version keeps click (bundled or not)
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Attention maps of vision models: channel, spatial, mixed, self and cross.")
# piped output is read by people and grep alike: don't squeeze tables into 80 columns
out_console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _version(value: bool) -> None:
    if value:
        print(f"attnviz {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="Print the version and exit.")) -> None:
    """Attention maps of vision models: channel, spatial, mixed, self and cross."""


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} img/s" if task.speed else "– img/s", style="cyan")


class _Bar:
    """A rich progress bar that appears only once the work starts, so setup errors print alone."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.progress = Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(),
                                 _Rate(), TimeRemainingColumn(), console=err_console, disable=quiet)
        self.task = None

    def start(self, total: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("images", total=total)

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.progress.stop()


def _colormap(name: str) -> str:
    """--colormap: any matplotlib colormap name."""
    import matplotlib
    if name not in matplotlib.colormaps:
        raise typer.BadParameter(f"{name!r} is not a matplotlib colormap (e.g. jet, inferno, viridis, turbo)")
    return name


def _format(name: str) -> str:
    """--format: png, jpg or webp."""
    if name not in ("png", "jpg", "webp"):
        raise typer.BadParameter(f"{name!r}: use png, jpg or webp")
    return name


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _guard(fn, debug: bool):
    """Run fn; setup errors become one line and exit 2, bugs one line and exit 3 (unless --debug)."""
    def show_warning(message, category, filename, lineno, file=None, line=None):
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    warnings.showwarning = show_warning
    try:
        return fn()
    except AttnvizError as e:
        if debug:
            raise
        _fail(str(e), EXIT_USAGE)
    except KeyboardInterrupt:
        _fail("interrupted; files written so far are complete and listed in manifest.json", 130)
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001  (a bug: say so in one line)
        if debug:
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              EXIT_INTERNAL)


def _backbone(backbone: str, model: Optional[str]) -> str:
    """--model M:F stands in for --backbone."""
    return f"model:{model}" if model else backbone


def _prompts(text: Optional[List[str]], text_file: Optional[Path]) -> list[str]:
    """--text values, then --text-file lines (blank lines and '#' comments skipped)."""
    prompts = list(text or [])
    if text_file is not None:
        try:
            lines = text_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            _fail(f"--text-file {text_file}: cannot read it ({e})", EXIT_USAGE)
        prompts += [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]
        if not prompts:
            _fail(f"--text-file {text_file}: no prompts in it", EXIT_USAGE)
    return prompts


def _split(values: Optional[List[str]]) -> Optional[List[str]]:
    """--kinds a,b --kinds c -> [a, b, c]; given but empty is a usage error."""
    if not values:
        return None
    names = [v.strip() for item in values for v in item.split(",") if v.strip()]
    if not names:
        _fail("--kinds: name at least one kind (channel, spatial, mixed-serial, mixed-parallel, self, cross)", EXIT_USAGE)
    return names


def _query(value: Optional[str]) -> Optional[tuple[float, float]]:
    """--query X,Y: two finite numbers (image pixels); a usage error (exit 2) otherwise."""
    if value is None:
        return None
    try:
        x, y = (float(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter("expected X,Y in image pixels, e.g. 120,80") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise typer.BadParameter("X and Y must be finite numbers")
    return x, y


@app.command()
def run(
    paths: List[Path] = typer.Argument(..., help="Image files and/or folders (folders recurse)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (created; mirrors the input tree)."),
    backbone: str = typer.Option("resnet50", "--backbone", "-b", help="torchvision classifier name (see `attnviz backbones`)."),
    model: Optional[str] = typer.Option(None, "--model", help="Your own model instead: package.module:factory (a callable returning an nn.Module)."),
    weights: str = typer.Option("DEFAULT", "--weights", "-w", help="DEFAULT, a weights enum name (IMAGENET1K_V1), a state_dict FILE, or none (random init)."),
    layer: Optional[str] = typer.Option(None, "--layer", "-l", help="Layer to read (default: the last feature stage; see `attnviz layers`)."),
    kinds: Optional[List[str]] = typer.Option(None, "--kinds", "-k", help="Kinds to compute, comma-separated or repeated (default: all): channel, spatial, mixed-serial, mixed-parallel, self, cross."),
    text: Optional[List[str]] = typer.Option(None, "--text", "-t", help="Cross-attention prompt (repeatable); default: the top-1 class name."),
    text_file: Optional[Path] = typer.Option(None, "--text-file", help="Prompts, one per line ('#' starts a comment)."),
    per_word: bool = typer.Option(False, "--per-word", help="CLIP: also a map for each content word of each prompt."),
    contrast: bool = typer.Option(False, "--contrast", help="CLIP: also each prompt's similarity minus the mean of the others'."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="CLIP: open_clip pretrained tag (default: the arch's usual one); same as --weights TAG."),
    clip_variant: str = typer.Option("value", "--clip-variant", help="CLIP patch tokens: value (MaskCLIP value path, default) or plain (the last block's output)."),
    query: Optional[str] = typer.Option(None, "--query", callback=_query, help="Self-attention query X,Y in image pixels (default: the spatial-map peak)."),
    faithfulness: bool = typer.Option(False, "--faithfulness", help="Also score every map by deletion/insertion AUC (extra forward passes: slower)."),
    sanity: bool = typer.Option(False, "--sanity", help="Also compare the first batch's maps with a fully randomised model's (rank correlation; ≥ 0.3 is flagged)."),
    derived_only: bool = typer.Option(False, "--derived-only", help="Derive channel, spatial, mixed and self from --layer even where the model has its own attention modules (to compare with the native maps)."),
    self_layer: Optional[str] = typer.Option(None, "--self-layer", help="Attention module for the per-head maps (default: the last; see `attnviz inspect`)."),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=16, help="Model input side (default: the weights' own, usually 224)."),
    size: int = typer.Option(512, "--size", min=16, help="Longest side of the written pictures."),
    colormap: str = typer.Option("jet", "--colormap", callback=_colormap, help="Matplotlib colormap name (jet, inferno, viridis ...)."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Heatmap opacity over the image."),
    top_k: int = typer.Option(20, "--top-k", min=1, help="Channels shown as bars in channel_weights.png."),
    tau: float = typer.Option(0.1, "--tau", min=1e-4, help="Temperature of derived self-attention."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward pass."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Threads drawing and writing files while the next batch runs (default: one per core; 0: none)."),
    fmt: str = typer.Option("png", "--format", callback=_format, help="Overlay and original.* file format (charts and grids stay PNG)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for random-init weights."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary (errors still print)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Write heatmaps, bar charts, grids, raw maps and a manifest for every image."""
    from attnviz.pipeline import run as run_pipeline
    from attnviz.report.outputs import Style

    def go():
        with _Bar("attnviz", quiet) as bar:
            return run_pipeline(
                paths, out, backbone=_backbone(backbone, model), kinds=_split(kinds), batch_size=batch_size,
                style=Style(size=size, colormap=colormap, alpha=alpha, top_k=top_k, format=fmt),
                workers=workers, command=shlex.join(["attnviz", *sys.argv[1:]]), on_start=bar.start,
                on_batch=bar.advance, weights=pretrained or weights, layer=layer,
                texts=_prompts(text, text_file), query=query, per_word=per_word,
                contrast=contrast, variant=clip_variant, input_size=input_size, device=device,
                seed=seed, tau=tau, self_layer=self_layer, native=not derived_only,
                faithfulness=faithfulness, sanity=sanity)

    report = _guard(go, debug)
    failed = report.failed
    if not quiet:
        _summary(report)
    elif failed:
        for r in failed:
            err_console.print(f"[red]failed:[/] {r.source}: {r.error}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def _summary(report) -> None:
    ok = len(report.results) - len(report.failed)
    table = Table(title="attnviz run", show_header=False, title_justify="left")
    table.add_row("images ok", f"[green]{ok}[/]")
    table.add_row("errors", f"[red]{len(report.failed)}[/]" if report.failed else "0")
    for r in report.failed[:20]:
        table.add_row("", f"{r.source}: {r.error}")
    if len(report.failed) > 20:
        table.add_row("", f"… {len(report.failed) - 20} more in manifest.json")
    for note in report.notes:
        table.add_row("note", note)
    for prompt, ranked in list(report.rankings.items())[:5]:
        best = ", ".join(f"{r['source']} ({r['score']:.3f})" for r in ranked[:3])
        table.add_row(f"best for “{prompt}”", best)
    if len(report.rankings) > 5:
        table.add_row("", f"… {len(report.rankings) - 5} more prompts ranked in manifest.json")
    rate = len(report.results) / report.seconds if report.seconds else 0
    table.add_row("time", f"{report.seconds:.1f} s ({rate:.2f} img/s, {report.forwards} forward pass{'es' if report.forwards != 1 else ''})")
    table.add_row("outputs", f"{report.out}/ (manifest.json)")
    err_console.print(table)


# options shared by the commands that describe a model
_BACKBONE = typer.Argument("resnet50", help="Backbone name.")
_MODEL = typer.Option(None, "--model", help="Your own model: package.module:factory.")
_INPUT_SIZE = typer.Option(None, "--input-size", min=16, help="Model input side.")
_DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")


def _table(title: str, columns: tuple[str, ...]) -> Table:
    """A table whose first column (module names) folds and whose others never wrap."""
    table = Table(title=title)
    table.add_column(columns[0], overflow="fold", min_width=28)
    for col in columns[1:]:
        table.add_column(col, no_wrap=True)
    return table


def _load_quietly(backbone: str, input_size: Optional[int], debug: bool):
    """Backbone and attention inventory with random weights (shapes need no download)."""
    from attnviz.pipeline import inspect as inspect_model

    def go():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return inspect_model(backbone, "DEFAULT" if backbone.startswith("model:") else "none",
                                 input_size=input_size)
    return _guard(go, debug)


def _pointing_table(ev, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("kind", "pointing game", "energy in box", "maps"):
        table.add_column(col, justify="right" if col != "kind" else "left")
    for kind, frac in ev.pointing_game.items():
        table.add_row(kind, f"{frac:.1%}", f"{ev.energy_in_box[kind]:.1%}", str(ev.counts[kind]))
    err_console.print(table)


@app.command()
def demo(
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: scenes/, boxes.json and the usual outputs."),
    scenes: int = typer.Option(24, "--scenes", min=1, help="How many scenes to generate."),
    seed: int = typer.Option(7, "--seed", help="Scene seed (the model was trained on other seeds)."),
    size: int = typer.Option(384, "--size", min=16, help="Longest side of the written pictures."),
    colormap: str = typer.Option("jet", "--colormap", callback=_colormap, help="Matplotlib colormap name."),
    faithfulness: bool = typer.Option(False, "--faithfulness", help="Also score every map by deletion/insertion AUC."),
    sanity: bool = typer.Option(False, "--sanity", help="Also compare the maps with a fully randomised model's."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or tables."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Scenes with known answers, the model trained in this repo, and how often each kind points right."""
    from attnviz.demo.run import run_demo
    from attnviz.report.outputs import Style

    def go():
        with _Bar("attnviz demo", quiet) as bar:
            return run_demo(out, scenes, seed, style=Style(size=size, colormap=colormap),
                            faithfulness=faithfulness, sanity=sanity,
                            command=shlex.join(["attnviz", *sys.argv[1:]]), on_start=bar.start,
                            on_batch=bar.advance)

    report, ev = _guard(go, debug)
    if not quiet:
        _summary(report)
        _pointing_table(ev, f"pointing game on {len(report.results)} scenes (peak inside the right box)")
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
    ev = _guard(lambda: evaluate_run(out, load_boxes(boxes), tolerance), debug)
    _pointing_table(ev, f"{out}: pointing game and energy in the boxes")
    if ev.missing:
        err_console.print(f"[yellow]{len(ev.missing)} images have no boxes[/] (e.g. {ev.missing[0]})", highlight=False)
    out_console.print(f"written: {out / 'evaluation.json'} (and pointing_game in manifest.json)", highlight=False)


@app.command()
def layers(
    backbone: str = _BACKBONE, model: Optional[str] = _MODEL, input_size: Optional[int] = _INPUT_SIZE,
    debug: bool = _DEBUG,
) -> None:
    """List the layer names --layer accepts, with their output shapes."""
    bb, _ = _load_quietly(_backbone(backbone, model), input_size, debug)
    table = _table(f"{bb.name} at {bb.input_size}px: layers --layer accepts",
                   ("layer", "type", "output (C×H×W)", "layout", ""))
    for info in bb.layers.values():
        mark = []
        if info.name == bb.default_layer:
            mark.append("[bold green]default[/]")
        if info.name == bb.classifier_layer:
            mark.append("head pools it")
        table.add_row(info.name, info.type, f"{info.channels}×{info.grid[0]}×{info.grid[1]}",
                      info.layout.kind + (f" +{info.layout.prefix} tokens" if info.layout.prefix else ""),
                      ", ".join(mark))
    out_console.print(table)


@app.command()
def inspect(
    backbone: str = _BACKBONE, model: Optional[str] = _MODEL, input_size: Optional[int] = _INPUT_SIZE,
    debug: bool = _DEBUG,
) -> None:
    """List every attention module one forward pass finds, and which kinds become native."""
    bb, inv = _load_quietly(_backbone(backbone, model), input_size, debug)
    table = _table(f"{bb.name}: attention modules ({len(inv.gates)} gates, {len(inv.attention)} attention)",
                   ("module", "type", "kind", "shape", "heads"))
    for g in inv.gates:
        shape = f"{g.channels} ch, {g.grid[0]}×{g.grid[1]}" if g.kind == "channel" else f"1×{g.grid[0]}×{g.grid[1]}"
        table.add_row(g.name, g.type, f"{g.kind} gate", shape, "")
    for a in inv.attention:
        table.add_row(a.name, a.type, a.kind, f"{a.queries}×{a.keys} tokens", str(a.heads))
    out_console.print(table)
    native = inv.native_kinds(bb.tokens is not None)
    from attnviz.kinds import KINDS
    for kind in KINDS:
        where = f"native ({native[kind]})" if kind in native else "derived"
        out_console.print(f"  {kind:15s} {where}", highlight=False)
    for name in inv.unsupported:
        out_console.print(f"  [yellow]cannot read[/] {name}: its attention stays derived", highlight=False)


@app.command()
def backbones() -> None:
    """List the backbone names --backbone accepts."""
    from attnviz.backbones.torchvision import classification_models
    names = classification_models()
    out_console.print(f"torchvision classifiers ({len(names)}):")
    out_console.print(", ".join(names), highlight=False)
    out_console.print("\ndemo: the model trained in this repository (see `attnviz demo`)", highlight=False)
    from attnviz.backbones.clip_core import supported_archs
    try:
        archs = supported_archs()
        out_console.print(f"open_clip ViTs ({len(archs)}): " + ", ".join(f"clip:{a}" for a in archs),
                          highlight=False)
    except AttnvizError as e:       # the clip extra is not installed
        out_console.print(f"clip:ARCH — {e}", highlight=False)
    out_console.print("your own model: --model package.module:factory", highlight=False)


def main() -> None:
    """Console-script entry point: usage errors are one line too (exit 2)."""
    try:
        code = app(standalone_mode=False)
    except _USAGE_ERROR as e:
        if type(e).__name__ == "NoArgsIsHelpError":      # bare `attnviz` / `attnviz run`: the help
            print(e.format_message())
        else:
            hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
            err_console.print(f"[bold red]error:[/] {e.format_message()}{hint}", highlight=False, soft_wrap=True)
        code = EXIT_USAGE
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
