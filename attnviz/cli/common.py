"""What every command shares: consoles, exit codes, one-line errors, the progress bar, option parsers.

Everything printed that a user typed or a file is called goes through `rich.text.Text`, never
through rich's markup parser: `[x]` in a file name is data.
"""
from __future__ import annotations

import math
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text

from attnviz.errors import AttnvizError, one_line
from attnviz.settings import split_list
from attnviz.text import printable

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "out_console",
           "err_console", "shown", "say", "fail", "guard", "Bar", "colormap_option", "query_option", "prompts_from",
           "split_kinds", "backbone_name", "command_line", "check_paths"]

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# piped output is read by people and grep alike: don't squeeze tables into 80 columns
out_console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


# control characters (C0, DEL, C1) as \xNN: a file named "a\nb" or "\x1b[2J…" prints on one line, inert
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7f, 0xa0)]}


def shown(text: str) -> str:
    """`text` as printed: valid UTF-8 (`printable`), control characters escaped."""
    return printable(str(text)).translate(_CONTROL)


def say(label: str, style: str, message: str, console: Console = err_console) -> None:
    """Print `label: message` with the label styled and the message taken literally (never markup)."""
    console.print(Text.assemble((f"{label}:", style), " ", shown(message)),
                  highlight=False, soft_wrap=True)


def fail(message: str, code: int) -> None:
    """One line on stderr, then exit with `code`."""
    say("error", "bold red", message)
    raise typer.Exit(code)


def guard(fn: Callable[[], Any], debug: bool) -> Any:
    """Run fn; setup errors become one line and exit 2, OS conditions exit 2 naming the path,
    Ctrl-C/SIGTERM exit 130, and only bugs exit 3 (with --debug: tracebacks)."""
    def show_warning(message, category, filename, lineno, file=None, line=None):
        say("warning", "yellow", str(message))
    warnings.showwarning = show_warning
    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        fail("interrupted; files written so far are complete and listed in manifest.json "
             "(rerun the same command to resume)", EXIT_INTERRUPTED)
    except AttnvizError as e:
        if debug:
            raise
        fail(str(e), EXIT_USAGE)
    except OSError as e:        # disk full, read-only folder, permissions: the user's machine, not a bug
        if debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        fail(f"{where}{e.strerror or one_line(e)}", EXIT_USAGE)
    except Exception as e:  # noqa: BLE001  (a bug: say so in one line)
        if debug:
            raise
        fail(f"internal error: {type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)",
             EXIT_INTERNAL)


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} img/s" if task.speed else "– img/s", style="cyan")


class Bar:
    """A rich progress bar that appears only once the work starts, so setup errors print alone."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.progress = Progress(TextColumn(label, style="bold", markup=False), BarColumn(),
                                 MofNCompleteColumn(), _Rate(), TimeRemainingColumn(),
                                 console=err_console, disable=quiet)
        self.task = None

    def start(self, total: int) -> None:
        """Show the bar for `total` images."""
        self.progress.start()
        self.task = self.progress.add_task("images", total=total)

    def advance(self, n: int) -> None:
        """`n` more images done."""
        self.progress.advance(self.task, n)

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.progress.stop()


def colormap_option(name: str) -> str:
    """--colormap: any matplotlib colormap name."""
    import matplotlib
    if name not in matplotlib.colormaps:
        raise typer.BadParameter(f"{name!r} is not a matplotlib colormap (e.g. jet, inferno, viridis, turbo)")
    return name


def query_option(value: Optional[str]) -> Optional[tuple[float, float]]:
    """--query X,Y: two finite numbers (image pixels); a usage error (exit 2) otherwise."""
    if value is None:
        return None
    try:
        x, y = (float(v) for v in value.split(","))      # exactly two: "1,,2" is not a point
    except ValueError:
        raise typer.BadParameter("expected X,Y in image pixels, e.g. 120,80") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise typer.BadParameter("X and Y must be finite numbers")
    return x, y


def backbone_name(backbone: str, model: Optional[str]) -> str:
    """--model M:F stands in for --backbone."""
    return f"model:{model}" if model else backbone


def prompts_from(text: Optional[List[str]], text_file: Optional[Path]) -> list[str]:
    """--text values, then --text-file lines (blank lines and '#' comments skipped)."""
    prompts = list(text or [])
    if text_file is not None:
        try:
            lines = text_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            fail(f"--text-file {text_file}: cannot read it ({one_line(e)})", EXIT_USAGE)
        prompts += [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]
        if not prompts:
            fail(f"--text-file {text_file}: no prompts in it", EXIT_USAGE)
    return prompts


def split_kinds(values: Optional[List[str]]) -> Optional[List[str]]:
    """--kinds a,b --kinds c -> [a, b, c]; given but empty is a usage error naming the kinds."""
    if not values:
        return None
    names = split_list(values)
    if not names:
        from attnviz.kinds import KINDS
        fail(f"--kinds: name at least one kind ({', '.join(KINDS)})", EXIT_USAGE)
    return names


def check_paths(paths: List[str]) -> List[Path]:
    """Input paths as given: an empty one is a mistake, never "the current folder"."""
    if any(not p.strip() for p in paths):
        fail("an input path is empty (''); give image files or folders", EXIT_USAGE)
    return [Path(p) for p in paths]


def command_line() -> str:
    """The command as typed, for the manifest."""
    return shlex.join(["attnviz", *sys.argv[1:]])
