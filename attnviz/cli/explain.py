"""`attnviz explain`: each attention mechanism step by step on one image, with the model's own numbers."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text

from attnviz.cli.app import app
from attnviz.cli.schema import option
from attnviz.cli.common import (EXIT_USAGE, StartUp, backbone_name, check_paths, fail, guard, out_console, prompts_from,
                                say)
from attnviz.text import printable

__all__ = ["explain"]


@app.command()
def explain(
    image: str = typer.Argument(..., help="One image file."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: <kind>.png per kind, explain.html, explain.json."),
    kind: str = typer.Option("all", "--kind", "-k", help="channel, spatial, mixed, self, cross (comma-separated) or all; self-gae, self-legrad (gradient-weighted, only when named)."),
    backbone: str = option("backbone", help="Backbone name (`attnviz backbones`)."),
    model: Optional[str] = option("model", help="Your own model instead: package.module:factory."),
    weights: str = option("weights", help="DEFAULT, a weights enum name or tag, a state_dict FILE, or none."),
    layer: Optional[str] = option("layer", help="Layer of the derived stages (default: the last feature stage)."),
    text: Optional[List[str]] = option("texts", help="Cross-attention prompt (repeatable); default: the top-1 class."),
    query: Optional[str] = option("query", help="Self-attention query X,Y in image pixels."),
    target: Optional[str] = typer.Option(None, "--target", help="self-gae / self-legrad: the class to explain, by name or index (default: the top-1 class)."),
    tau: float = option("tau", help="Temperature of derived self-attention."),
    input_size: Optional[int] = option("input_size", help="Model input side."),
    fmt: str = typer.Option("png", "--format", help="png, or svg for slides."),
    seed: Optional[int] = option("seed", help="Seed for random-init weights."),
    debug: bool = option("debug", help="Show tracebacks."),
) -> None:
    """Each attention mechanism step by step on your image: one strip of stages per kind."""
    [path] = check_paths([image])
    if fmt not in ("png", "svg"):
        fail(f"--format {fmt!r}: use png or svg", EXIT_USAGE)
    from attnviz.cli.preflight import preflight     # numpy and PIL: not for --help
    guard(lambda: preflight({}, [path]), debug)          # before torch: a missing image is one line at once
    with StartUp():                 # one image: the collector resumes when it is written (see StartUp)
        from attnviz.explain import explain as run_explain, write_explained

        def go():
            ex = run_explain(path, kind, backbone=backbone_name(backbone, model), weights=weights, layer=layer,
                             texts=tuple(prompts_from(text, None)), query=query, tau=tau, input_size=input_size,
                             seed=seed, targets=(target,) if target else ())
            return ex, write_explained(ex, out, fmt)

        ex, written = guard(go, debug)
    for note in ex.notes:
        say("note", "yellow", note)
    for s in ex.strips:
        native = sum(p.provenance == "native" for p in s.panels())
        out_console.print(Text(printable(f"{s.kind}: {len(s.panels())} panels ({native} native) -> {out / f'{s.kind}.{fmt}'}")),
                          highlight=False)
    out_console.print(Text(printable(f"written: {written[-1]} and {written[-2].name}")), highlight=False)
