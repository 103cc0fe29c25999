"""What every command shares: consoles, exit codes, one-line errors, the progress bar, option parsers.

Everything printed that a user typed or a file is called goes through `rich.text.Text`, never
through rich's markup parser: `[x]` in a file name is data.
"""
from __future__ import annotations

import gc
import math
import os
import shlex
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text

from attnviz.errors import AttnvizError, one_line
from attnviz.settings import SCHEMA, split_list
from attnviz.text import printable, read_prompts, shown

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "out_console",
           "err_console", "shown", "say", "fail", "guard", "Bar", "colormap_option", "query_option", "prompts_from",
           "split_kinds", "backbone_name", "command_line", "check_paths", "STARTED", "process_start", "command_started",
           "own_process", "exit_now", "StartUp"]

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# piped output is read by people and grep alike: don't squeeze tables into 80 columns
out_console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


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
    Ctrl-C/SIGTERM exit 130, and only bugs exit 3. With `debug` the traceback is printed first;
    the line and the exit code stay the same."""
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
        _traceback(debug)
        fail(str(e), EXIT_USAGE)
    except OSError as e:        # disk full, read-only folder, permissions: the user's machine, not a bug
        _traceback(debug)
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        fail(f"{where}{e.strerror or one_line(e)}", EXIT_USAGE)
    except Exception as e:  # noqa: BLE001  (a bug: say so in one line)
        _traceback(debug)
        hint = "" if debug else " (rerun with --debug for the traceback)"
        fail(f"internal error: {type(e).__name__}: {one_line(e)}{hint}", EXIT_INTERNAL)


def _traceback(debug: bool) -> None:
    """--debug: the traceback of the exception being handled, on stderr (names escaped as data)."""
    if debug:
        lines = traceback.format_exc().rstrip().splitlines()
        err_console.print(Text("\n".join(shown(ln) for ln in lines)), highlight=False, soft_wrap=True)


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} img/s" if task.speed else "– img/s", style="cyan")


class Bar:
    """A rich progress bar that appears only once the work starts, so setup errors print alone;
    before that, `status` shows what is being done (loading, measuring) on a status line."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.progress = Progress(TextColumn(label, style="bold", markup=False), BarColumn(),
                                 MofNCompleteColumn(), _Rate(), TimeRemainingColumn(),
                                 console=err_console, disable=quiet)
        self.task = None
        self.label, self.quiet = label, quiet
        self._status = None

    def status(self, text: str) -> None:
        """Say what is being done before the images start (a spinner line; text is never markup)."""
        if self.quiet or self.task is not None:
            return
        line = Text.assemble((self.label, "bold"), " · ", text)
        if self._status is None:
            self._status = err_console.status(line)
            self._status.start()
        else:
            self._status.update(line)

    def _end_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def start(self, total: int) -> None:
        """Show the bar for `total` images."""
        self._end_status()
        self.progress.start()
        self.task = self.progress.add_task("images", total=total)

    def advance(self, n: int) -> None:
        """`n` more images done."""
        self.progress.advance(self.task, n)

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc: object) -> None:
        self._end_status()
        if self.task is not None:
            self.progress.stop()


class StartUp:
    """`with StartUp() as boot:` around a command's imports of torch and its model load: Python's
    cyclic garbage collector is paused, then `boot.done()` (at the latest on exit) freezes what was
    made and resumes it. torch and torchvision make about a million long-lived objects; the
    collector would traverse them again and again while they load, and at every full collection of
    the run after — ~0.5 s of a ResNet-50 run's start-up (bench/README.md "Start-up").

    Only in the `attnviz` command's own process (`active`, default `own_process()`): a test or a
    notebook calling `main()` keeps its collector as it is, and its garbage is never frozen."""

    def __init__(self, active: Optional[bool] = None) -> None:
        self.active = own_process() if active is None else active
        self._open = False

    def __enter__(self) -> "StartUp":
        if self.active and gc.isenabled():
            gc.disable()
            self._open = True
        return self

    def done(self) -> None:
        """Start-up is over: what it made is frozen (never traversed again), the collector resumes."""
        if self._open:
            self._open = False
            gc.freeze()
            gc.enable()

    def then(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, calling `done()` first (e.g. the progress bar's start: the images begin)."""
        def call(*args: Any) -> Any:
            self.done()
            return fn(*args)
        return call

    def __exit__(self, *exc: object) -> None:
        self.done()


STARTED: list[float] = []   # set by the console script: the process's start, as a perf_counter() value


def own_process() -> bool:
    """Is this process the `attnviz` command (console script or `python -m attnviz.cli`)?"""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", "") or ""
    return spec_name.startswith("attnviz") or Path(getattr(main, "__file__", "") or "").stem == "attnviz"


def exit_now(code: int) -> None:
    """End the `attnviz` process without Python's teardown of torch (seconds on a busy machine, after
    the summary has said the time): atexit handlers run and stdio is flushed first. Returns (normal
    exit) when another non-daemon thread is still alive or this is not the command's own process."""
    import atexit
    import threading
    main = threading.main_thread()
    if not own_process() or any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not main):
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):     # a closed pipe: nothing more can be said
            pass
    os._exit(code)


def process_start() -> float:
    """When this process started, as a `time.perf_counter()` value (Linux /proc); now when the
    process is not the `attnviz` command itself (a test or a notebook calling `main()`)."""
    now = time.perf_counter()
    if not own_process():
        return now
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])     # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return now - age if 0 <= age < 3600 else now


def command_started() -> float:
    """The start of this command: the process's under the console script, else now (in-process calls)."""
    return STARTED[0] if STARTED else time.perf_counter()


def colormap_option(name: str) -> str:
    """--colormap: any matplotlib colormap name."""
    if name == SCHEMA["colormap"].default:      # a matplotlib colormap (tests/test_cli_startup.py): no import
        return name
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
            prompts += read_prompts(text_file)
        except AttnvizError as e:
            fail(str(e), EXIT_USAGE)
    return prompts


def split_kinds(values: Optional[List[str]]) -> Optional[List[str]]:
    """--kinds a,b --kinds c -> [a, b, c]; given but empty is a usage error naming the kinds."""
    if not values:
        return None
    names = split_list(values)
    if not names:
        from attnviz.catalog import KINDS
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
