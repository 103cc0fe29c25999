"""Images → backbone → probes → kinds → (render → report), in batches of one forward pass each.

`analyser` is the engine (one forward pass per batch), `api` the in-memory `analyse`, `runner`
the `run` that writes files, `outdir` the output-folder policy, `checks` faithfulness and sanity.
"""
from attnviz.pipeline.analyser import Analyser, AnalyserConfig, find_attention
from attnviz.pipeline.api import analyse
from attnviz.pipeline.runner import RunReport, run

__all__ = ["Analyser", "AnalyserConfig", "analyse", "run", "RunReport", "find_attention"]
