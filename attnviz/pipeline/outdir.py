"""The output folder: what OUT may be, and which inputs it must never feed back."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from attnviz.errors import AttnvizError
from attnviz.images import ImageSource

__all__ = ["check_out"]


def check_out(out: Path, sources: list[ImageSource], paths: Sequence[str | Path]) -> list[ImageSource]:
    """Refuse an OUT that is a file; never read our own outputs back as inputs.

    Files inside OUT are skipped unless they were asked for by a path that itself lies in OUT.
    """
    if out.exists() and not out.is_dir():
        raise AttnvizError(f"-o {out}: exists and is not a folder")
    real = lambda p: Path(os.path.realpath(p))   # noqa: E731  (never raises, even on link loops)
    resolved = real(out)
    inside = [real(p) for p in paths if real(p).is_relative_to(resolved)]
    kept = [s for s in sources if not real(s.path).is_relative_to(resolved)
            or any(real(s.path).is_relative_to(p) for p in inside)]
    if not kept:
        raise AttnvizError(f"no images found outside the output folder {out}")
    return kept
