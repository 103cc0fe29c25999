"""attnviz: attention maps of vision models — channel, spatial, mixed, self and cross — from one forward pass."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "analyse", "run", "Analyser", "AnalyserConfig", "Result", "Results",
           "Settings", "SCHEMA", "AttentionMap", "Prediction",
           "load_backbone", "overlay", "channel_bars", "grid", "GridRow", "GridCell"]

_LAZY = {  # the heavy imports (torch) wait until something is used
    "analyse": "attnviz.pipeline", "run": "attnviz.pipeline", "Analyser": "attnviz.notebook",
    "AnalyserConfig": "attnviz.pipeline", "Results": "attnviz.notebook", "Settings": "attnviz.settings",
    "SCHEMA": "attnviz.settings",
    "Result": "attnviz.results", "AttentionMap": "attnviz.results", "Prediction": "attnviz.results",
    "load_backbone": "attnviz.backbones", "overlay": "attnviz.render", "channel_bars": "attnviz.render",
    "grid": "attnviz.render", "GridRow": "attnviz.render", "GridCell": "attnviz.render",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnviz' has no attribute {name!r}")
