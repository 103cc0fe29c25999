"""Write docs/api.md, the Python API reference, from the docstrings and the settings schema:
`python docs/api.py` (tests/test_docs.py checks that the committed page is current)."""
from __future__ import annotations

import dataclasses
import re
import inspect
from pathlib import Path

import attnviz
from attnviz.settings import SCHEMA

PAGE = Path(__file__).resolve().parent / "api.md"
OBJECTS = ["Analyser", "Results", "Result", "AttentionMap", "Prediction", "AnalyserConfig", "analyse", "run",
           "load_backbone", "overlay", "channel_bars", "grid"]
METHODS = {"Analyser": ["__init__", "__call__", "to_tensor", "preprocess", "analyse_batch", "analyse_layers"],
           "Result": ["map", "numpy", "tensor", "overlay", "grid", "explain"],
           "AttentionMap": ["numpy", "tensor", "shape", "geometry"]}


def _signature(obj) -> str:
    try:
        # a function default prints its name, not its address (the page must be reproducible)
        return re.sub(r"<function (\S+) at 0x[0-9a-f]+>", r"\1", str(inspect.signature(obj)).replace("'", ""))
    except (TypeError, ValueError):
        return ""


def _doc(obj) -> str:
    return inspect.getdoc(obj) or ""


def _settings_table() -> list[str]:
    rows = ["| keyword | CLI | default | limits | what |", "| --- | --- | --- | --- | --- |"]
    for s in SCHEMA.values():
        limits = ", ".join(x for x in (f"≥ {s.min:g}" if s.min is not None else "",
                                       f"≤ {s.max:g}" if s.max is not None else "",
                                       " · ".join(s.choices) if s.choices else "") if x)
        flag = " ".join(f"`{f}`" for f in s.flags) or "—"
        rows.append(f"| `{s.name}` | {flag} | `{s.default!r}` | {limits} | {s.help.replace('|', '/')} |")
    return rows


def page() -> str:
    """The page's text."""
    out = ["# attnviz Python API reference", "",
           "Generated from the docstrings by `python docs/api.py`; do not edit by hand. The guide is the",
           "README's *Python API* section; a worked notebook is [`notebook.ipynb`](notebook.ipynb).", ""]
    for name in OBJECTS:
        obj = getattr(attnviz, name)
        kind = "class" if inspect.isclass(obj) else "function"
        out += [f"## `attnviz.{name}`", "", f"{kind} `{name}{_signature(obj)}`", "", _doc(obj), ""]
        if dataclasses.is_dataclass(obj) and name != "AnalyserConfig":
            out += ["Fields: " + ", ".join(f"`{f.name}`" for f in dataclasses.fields(obj)), ""]
        for meth in METHODS.get(name, []):
            member = inspect.getattr_static(obj, meth)
            member = member.fget if isinstance(member, property) else getattr(obj, meth)
            sig = "" if isinstance(inspect.getattr_static(obj, meth), property) else _signature(member)
            out += [f"### `{name}.{meth}{sig}`", "", _doc(member), ""]
    out += ["## Settings (`attnviz.settings.SCHEMA`)", "",
            "Every keyword of `Analyser`, `analyse` and `run`, and every option of `attnviz run`, from one",
            "schema; `AnalyserConfig` holds the analyser's ones.", "", *_settings_table(), ""]
    return "\n".join(out)


if __name__ == "__main__":
    PAGE.write_text(page(), encoding="utf-8")
