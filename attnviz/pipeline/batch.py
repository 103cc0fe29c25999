"""One decoded batch through the engine and onto disk: the work every engine shares."""
from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

import attnviz.pipeline.checks as checks
from attnviz.errors import AttnvizError
from attnviz.pipeline.analyser import Analyser
from attnviz.pipeline.outdir import entry_files
from attnviz.report.outputs import Style, write_outputs
from attnviz.results import Result

__all__ = ["process_batch", "remove_files"]

# the disk or the folder, not the image: the run cannot go on (exit 2, naming the path)
_FATAL = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}


def process_batch(analyser: Analyser, loaded: list[Result], good: list, out: Path, style: Style,
                  prompts: Mapping[str, list[str]], boxes: Mapping[str, list], faithful: bool,
                  old: Mapping[str, dict[str, Any]]) -> list[tuple[Result, list[str] | None]]:
    """Analyse (one forward) and write one decoded batch: each image with the files written for it
    (None for an error), in input order. A disk that cannot be written stops the run (AttnvizError)."""
    images = [im for _, im in good]
    per_image = [list(prompts.get(r.source, ())) for r, _ in good] if prompts else None
    outcomes = dict(zip((id(r) for r, _ in good), analyser.analyse_batch(images, per_image) if good else []))
    image_of = {id(r): im for r, im in good}
    done: list[tuple[Result, list[str] | None]] = []
    for r in loaded:
        if id(r) not in outcomes:
            done.append((r, None))                     # decoding failed: an error record
            continue
        r.predictions, r.maps = outcomes[id(r)]
        problem = _not_finite(r)
        if problem:
            r.status, r.error, r.maps = "error", problem, []
            done.append((r, None))
            continue
        if faithful:
            scores = checks.faithfulness(analyser, image_of[id(r)], r.maps)
            for m in r.maps:
                m.meta["faithfulness"] = scores[m.name]
        try:
            files = write_outputs(out, r, image_of[id(r)], style, boxes.get(r.source, ()))
        except OSError as e:
            if e.errno in _FATAL:
                raise AttnvizError(f"cannot write {e.filename or out / r.output}: {e.strerror}; "
                                   f"manifest.json lists the images written before it (rerun to resume)") from None
            r.status, r.error, files = "error", f"cannot write outputs: {e.strerror or e}", None
        if r.output in old and files is not None:     # outputs these settings no longer produce
            remove_files(out / r.output, set(entry_files(old[r.output])) - set(files))
        done.append((r, files))
    return done


def _not_finite(r: Result) -> str | None:
    """A one-line reason when this image cannot be drawn honestly: the model produced NaN or Inf, or
    --query lies outside it (a map of the nearest border cell would answer another question)."""
    for m in r.maps:
        if m.meta.get("query_clamped") and r.size:
            x, y = m.meta.get("query_asked", (None, None))
            return (f"--query {x:g},{y:g} lies outside this {r.size[0]}×{r.size[1]} image"
                    if x is not None else f"--query lies outside this {r.size[0]}×{r.size[1]} image")
    if any(not np.isfinite(p.probability) for p in r.predictions):
        return "the model's output is not finite (NaN/Inf): check its weights"
    for m in r.maps:
        if not np.isfinite(m.data).all() or (m.weights is not None and not np.isfinite(m.weights).all()):
            return f"map {m.name} is not finite (NaN/Inf): check the model's weights"
    return None


def remove_files(folder: Path, names: Iterable[str]) -> None:
    """Delete these files of an image folder (those a new run no longer produces)."""
    for name in names:
        with contextlib.suppress(OSError):
            (folder / name).unlink()
