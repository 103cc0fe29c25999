"""The folder-level reports a run writes beside its manifest: index.html, summary.csv, agreement."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from attnviz.report.agreement import write_agreement
from attnviz.report.gallery import write_gallery
from attnviz.report.integrity import CheckedView
from attnviz.report.manifest import Spooled
from attnviz.report.tables import write_summary_csv

__all__ = ["FOLDER_FILES", "write_reports"]

FOLDER_FILES = ("index.html", "summary.csv", "agreement.csv", "agreement.png")


def write_reports(out: Path, manifest: dict[str, Any], stats: bool = False) -> dict[str, Any] | None:
    """Write OUT/index.html and OUT/summary.csv, and with `stats` the agreement files; the
    agreement's folder means (None without `stats`). An entry pointing outside OUT or whose files
    are damaged is shown as an error saying why; its files are never read. The entries are read
    one at a time (a run passes its spooled manifest): memory does not grow with the folder."""
    images = manifest.get("images")
    images = images if isinstance(images, (list, Spooled)) else []
    manifest = {**manifest, "images": CheckedView(out, images)}     # damaged: an error record each
    write_gallery(out, manifest)
    write_summary_csv(out, manifest)
    return write_agreement(out, manifest) if stats else None
