"""`attnviz layers`, `inspect`, `backbones` and `kinds`: what a model offers, from the registries."""
from __future__ import annotations

import warnings
from typing import List, Optional

import typer
from rich.table import Table
from rich.text import Text

from attnviz.cli.app import app
from attnviz.cli.common import EXIT_USAGE, StartUp, backbone_name, err_console, fail, guard, out_console, shown
from attnviz.errors import AttnvizError

__all__ = ["layers", "inspect_model", "backbones", "kinds"]

# options shared by the commands that describe a model
_BACKBONE = typer.Argument("resnet50", help="Backbone name.")
_MODEL = typer.Option(None, "--model", help="Your own model: package.module:factory.")
_INPUT_SIZE = typer.Option(None, "--input-size", min=16, help="Model input side.")
_DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")


def _table(title: str, columns: tuple[str, ...]) -> Table:
    """A table whose first column (module names) folds and whose others never wrap."""
    table = Table(title=Text(shown(title)))
    table.add_column(columns[0], overflow="fold", min_width=28)
    for col in columns[1:]:
        table.add_column(col, no_wrap=True)
    return table


def _load_quietly(backbone: str, input_size: Optional[int], debug: bool):
    """Backbone and attention inventory with random weights (shapes need no download)."""
    with StartUp():                                   # see StartUp
        from attnviz.pipeline import find_attention

        def go():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return find_attention(backbone, "DEFAULT" if backbone.startswith("model:") else "none",
                                      input_size=input_size)
        return guard(go, debug)


def _t(value: object) -> Text:
    return Text(shown(str(value)))


@app.command()
def layers(
    backbone: str = _BACKBONE, model: Optional[str] = _MODEL, input_size: Optional[int] = _INPUT_SIZE,
    debug: bool = _DEBUG,
) -> None:
    """List the layer names --layer accepts, with their output shapes."""
    bb, _ = _load_quietly(backbone_name(backbone, model), input_size, debug)
    table = _table(f"{bb.name} at {bb.input_size}px: layers --layer accepts",
                   ("layer", "type", "output (C×H×W)", "layout", ""))
    for info in bb.layers.values():
        mark = []
        if info.name == bb.default_layer:
            mark.append(Text("default", style="bold green"))
        if info.name == bb.classifier_layer:
            mark.append(Text("head pools it"))
        table.add_row(_t(info.name), _t(info.type), f"{info.channels}×{info.grid[0]}×{info.grid[1]}",
                      info.layout.kind + (f" +{info.layout.prefix} tokens" if info.layout.prefix else ""),
                      Text(", ").join(mark))
    out_console.print(table)


@app.command("inspect")
def inspect_model(
    backbone: str = _BACKBONE, model: Optional[str] = _MODEL, input_size: Optional[int] = _INPUT_SIZE,
    debug: bool = _DEBUG,
) -> None:
    """List every attention module one forward pass finds, and which kinds become native."""
    from attnviz.kinds import KINDS
    from attnviz.results import Options
    bb, inv = _load_quietly(backbone_name(backbone, model), input_size, debug)
    table = _table(f"{bb.name}: attention modules ({len(inv.gates)} gates, {len(inv.attention)} attention)",
                   ("module", "type", "kind", "shape", "heads", "token grid"))
    for g in inv.gates:
        shape = f"{g.channels} ch, {g.grid[0]}×{g.grid[1]}" if g.kind == "channel" else f"1×{g.grid[0]}×{g.grid[1]}"
        table.add_row(_t(g.key), _t(g.type), f"{g.kind} gate", shape, "", "")
    for a in inv.attention:
        grid = "" if a.grid is None else (f"{a.prefix} + " if a.prefix else "") + f"{a.grid[0]}×{a.grid[1]}"
        table.add_row(_t(a.name), _t(a.type), a.kind, a.shape, str(a.heads), grid)
    out_console.print(table)
    # the same plan `run` draws from and the manifest records (Inventory.plan)
    plan = inv.plan(bb.default_layer, bb.native_cross)
    for kind, impl in KINDS.items():
        where = f"native ({plan.native[kind]})" if kind in plan.native else "derived"
        skipped = impl.unavailable(bb, Options())       # as `run` skips it (e.g. no linear head)
        if skipped and kind not in plan.native:
            where = f"not drawn: {skipped}"
        if not impl.default:                          # gradient kinds: opt-in, and whether they can run
            reason = impl.unavailable(bb, Options(texts=("a prompt",)))
            where = "opt-in, " + (f"not available: {reason}" if reason else
                                  "derived (gradient of --layer)" if kind == "gradcam" else
                                  "native (gradients through the model's own attention)")
        out_console.print(_t(f"  {kind:15s} {where}"), highlight=False)
    for line in plan.notes:      # attention found but not drawn natively, and why
        out_console.print(Text(shown(f"  {line}"), style="yellow"), highlight=False)


@app.command()
def backbones(
    family: Optional[List[str]] = typer.Argument(None, help="Only these families: a prefix (timm, clip, hf …) or "
                                                 "torchvision for bare names (default: all)."),
    names: bool = typer.Option(True, "--names/--no-names", help="List every name of each family."),
) -> None:
    """List the backbone families --backbone accepts, and their names (each list loads only its own library)."""
    from attnviz.catalog import FAMILIES
    called = {f: {f.prefix, f.lists} - {"", None} for f in FAMILIES}      # torchvision: the bare names
    asked = [f for f in FAMILIES if not family or called[f] & set(family)]
    unknown = [n for n in family or () if not any(n in c for c in called.values())]
    if unknown:
        known = ", ".join(f.prefix or f.lists or "" for f in FAMILIES)
        fail(f"unknown backbone family {unknown[0]!r}; families: {known}", EXIT_USAGE)
    for info in asked:
        out_console.print(Text.assemble((info.syntax, "bold"), f" — {info.summary}"), highlight=False)
        if names and info.lists:
            _names(info.prefix, info.lists)


def _names(prefix: str, library: str) -> None:
    """A family's names from the registry; a status line on stderr while its library loads."""
    with err_console.status(Text(f"loading {library}'s model list…")):
        try:
            from attnviz.backbones import families
            fam = next(f for f in families() if f.prefix == prefix)
            listed = fam.names()
        except AttnvizError as e:       # an optional extra that is not installed
            out_console.print(_t(f"  ({e})"), highlight=False)
            return
        except Exception as e:  # noqa: BLE001  (a family's library failing to list is not fatal)
            out_console.print(_t(f"  (cannot list: {type(e).__name__}: {e})"), highlight=False)
            return
    out_console.print(_t(f"  {len(listed)} names: " + ", ".join(listed)), highlight=False)


@app.command()
def kinds() -> None:
    """List the attention kinds --kinds accepts, in grid order."""
    from attnviz.catalog import KINDS      # the registry's metadata without importing torch
    table = Table(title="attention kinds (opt-in: only when named in --kinds)", title_justify="left")
    for col in ("kind", "what it is (native where the model has the module, else derived)"):
        table.add_column(col)
    for kind in sorted(KINDS.values(), key=lambda k: k.order):
        table.add_row(kind.name + ("" if kind.default else " (opt-in)"), _t(kind.summary))
    out_console.print(table)
