"""The `attnviz` command: parses options, calls the Python API, prints. Exit codes in the README."""
from __future__ import annotations

import os
import sys

# Before torch is imported: its OpenMP threads sleep while they wait instead of spinning, since
# attnviz's writer threads share the cores with them (bench/README.md: the same run on a busy
# 2-core machine took ~40 % less CPU). A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from attnviz.cli import compare, describe, explain, run  # noqa: F401  (each registers its commands)
from attnviz.cli.app import app
from attnviz.cli.common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, say

__all__ = ["app", "main"]

# click's UsageError, wherever this Typer version keeps click (bundled or not)
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def main() -> None:
    """Console-script entry point: usage errors are one line too (exit 2); SIGTERM acts as Ctrl-C."""
    from attnviz.cli.common import STARTED, exit_now, process_start
    from attnviz.cli.signals import sigterm_as_interrupt
    STARTED[:] = [process_start()]       # the summary's time covers the whole process
    try:
        with sigterm_as_interrupt():
            code = app(standalone_mode=False)
    except _USAGE_ERROR as e:
        if type(e).__name__ == "NoArgsIsHelpError":      # bare `attnviz` / `attnviz run`: the help
            print(e.format_message())
        else:
            hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
            say("error", "bold red", f"{e.format_message()}{hint}")
        code = EXIT_USAGE
    except (typer.Abort, KeyboardInterrupt):
        code = EXIT_INTERRUPTED
    code = code if isinstance(code, int) else EXIT_OK
    exit_now(code)                       # the command's own process: skip torch's slow teardown
    sys.exit(code)
