"""Argument checks that need no model, made before torch is imported: a mistake is one line at once,
with the message and exit code the Python API gives for it, and nothing is written.

Only torch-free modules are imported here (tests/test_cli_startup.py holds the CLI to it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from attnviz.catalog import check_kind_names
from attnviz.images import check_inputs
from attnviz.report.lock import check_folder
from attnviz.settings import SCHEMA, check, check_device, parse_slide, split_list

__all__ = ["preflight"]


def preflight(params: Mapping[str, Any], paths: Sequence[Path], out: Path | None = None) -> None:
    """Raise the API's one-line AttnvizError for the first option a model is not needed to refuse.

    `params`: the command's parameters by name (`locals()` at its top); every one that is a setting
    of the schema is checked against its limits and choices, --kinds against the kinds, --slide and
    --device by their syntax, the inputs for existence, and `out` (a folder to create) for not being a file."""
    check_inputs(paths)
    if out is not None:
        check_folder(out)
    if params.get("kinds"):
        check_kind_names(split_list(params["kinds"]))
    for s in SCHEMA.values():
        if s.cli_param in params and s.cli_param != "kinds":
            check(s.name, params[s.cli_param])
    parse_slide(params.get("slide"))
    check_device(params.get("device"))
