"""`attnviz explain`: each attention mechanism step by step on one image, with the model's own numbers.

`stages` runs one forward with the Analyser and a StageTap, `gates`/`mixed`/`attend` turn the
captured tensors into strips of panels, `figure` draws a strip, `page` writes the files.
"""
from attnviz.explain.panels import Panel, Strip
from attnviz.explain.stages import EXPLAIN_KINDS, Explained, explain
from attnviz.explain.page import strip_bytes, write_explained

__all__ = ["EXPLAIN_KINDS", "Explained", "Panel", "Strip", "explain", "strip_bytes", "write_explained"]
