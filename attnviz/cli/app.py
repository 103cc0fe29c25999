"""The Typer app every command registers on."""
from __future__ import annotations

import typer

from attnviz import __version__

__all__ = ["app"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Attention maps of vision models: channel, spatial, mixed, self and cross.")


def _version(value: bool) -> None:
    if value:
        print(f"attnviz {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="Print the version and exit.")) -> None:
    """Attention maps of vision models: channel, spatial, mixed, self and cross."""
