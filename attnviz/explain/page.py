"""Write an explanation: DIR/<kind>.png|svg per strip, DIR/explain.json and DIR/explain.html (offline)."""
from __future__ import annotations

import html
import io
import platform
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch
from PIL import Image

from attnviz import __version__
from attnviz.errors import AttnvizError
from attnviz.explain.figure import figure_bytes, strip_figure
from attnviz.explain.stages import Explained
from attnviz.render.band import RANDOM_BAND, banded
from attnviz.report.atomic import encode_png, save_json, write_atomic
from attnviz.report.gallery import BAND_CSS, random_band_html
from attnviz.text import printable, shown

__all__ = ["FORMATS", "write_explained", "record"]

FORMATS = ("png", "svg")


def record(ex: Explained, files: dict[str, str]) -> dict[str, Any]:
    """explain.json: the settings and every panel's array summary, strip by strip."""
    return {"schema_version": 1,
            "tool": {"name": "attnviz", "version": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
            "source": printable(ex.source), "size": list(ex.image.size),
            "backbone": {"name": ex.backbone, "weights": ex.weights, "pretrained": ex.pretrained},
            "predictions": [{"index": p.index, "label": p.label, "probability": p.probability} for p in ex.predictions],
            "notes": ex.notes,
            "strips": [dict(s.summary(), file=files[s.kind]) for s in ex.strips]}


def _html(ex: Explained, files: dict[str, str]) -> str:
    e = lambda t: html.escape(printable(str(t)))   # noqa: E731  (names and prompts are data)
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>attnviz explain — {e(ex.source)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em;color:#1a202c}img{max-width:100%;"
             "border:1px solid #e2e8f0}table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0 2em}"
             "td,th{border:1px solid #e2e8f0;padding:2px 6px;text-align:left}.native{color:#2f855a}"
             ".derived{color:#c05621}nav a{margin-right:1em}",
             f"{BAND_CSS}</style></head><body>", *([] if ex.pretrained else [random_band_html()]),
             f"<h1>attnviz explain: {e(ex.source)}</h1>",
             f"<p>backbone <b>{e(ex.backbone)}</b>, weights {e(ex.weights)}; top class: "
             + (e(f"{ex.predictions[0].label} ({ex.predictions[0].probability:.3f})") if ex.predictions else "—")
             + "</p>"]
    parts += [f"<p><b>note:</b> {e(n)}</p>" for n in ex.notes]
    parts.append("<nav>" + "".join(f'<a href="#{s.kind}">{s.kind}</a>' for s in ex.strips) + "</nav>")
    for s in ex.strips:
        parts += [f'<section id="{s.kind}"><h2>{e(s.title)}</h2>',
                  f'<img src="{quote(files[s.kind])}" alt="{e(s.kind)} explained step by step">']
        parts += [f"<p>{e(n)}</p>" for n in s.notes]
        parts.append("<table><tr><th>row</th><th>step</th><th>formula</th><th>provenance</th><th>source</th>"
                     "<th>shape</th><th>min</th><th>max</th><th>top indices</th></tr>")
        for row in s.summary()["rows"] + ([{"label": "beside", "panels": [s.side.summary()]}] if s.side else []):
            for p in row["panels"]:
                fmt = lambda v: "—" if v is None else f"{v:.4g}"   # noqa: E731
                parts.append(f"<tr><td>{e(row['label'])}</td><td>{e(p['step'])}</td><td>{e(p['formula'])}</td>"
                             f"<td class=\"{p['provenance']}\">{p['provenance']}</td><td>{e(p['source'])}</td>"
                             f"<td>{'×'.join(map(str, p['shape']))}</td><td>{fmt(p['min'])}</td><td>{fmt(p['max'])}</td>"
                             f"<td>{e(p['top_indices'][:3])}</td></tr>")
        parts.append("</table></section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def strip_bytes(ex: Explained, strip: Any, fmt: str = "png") -> bytes:
    """The file `<kind>.<fmt>` of one strip, encoded (a random-weights run's strip carries the band)."""
    band = "" if ex.pretrained or fmt == "png" else RANDOM_BAND           # SVG: drawn in the figure
    data = figure_bytes(strip_figure(strip, ex.image, f"   ·   {shown(ex.source)}, {ex.backbone}", band=band), fmt)
    if fmt == "png" and not ex.pretrained:                              # PNG: the band of every picture
        data = encode_png(banded(Image.open(io.BytesIO(data)).convert("RGB")))
    return data


def write_explained(ex: Explained, out: str | Path, fmt: str = "png") -> list[Path]:
    """Write every strip's figure, explain.json and explain.html into `out`; the paths written."""
    if fmt not in FORMATS:
        raise AttnvizError(f"--format {fmt!r}: use png or svg")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AttnvizError(f"-o {out}: exists and is not a folder")
    files = {s.kind: f"{s.kind}.{fmt}" for s in ex.strips}
    written = []
    for s in ex.strips:
        data = strip_bytes(ex, s, fmt)
        write_atomic(out / files[s.kind], lambda f, d=data: f.write(d))
        written.append(out / files[s.kind])
    save_json(out / "explain.json", record(ex, files))
    page = _html(ex, files).encode("utf-8")
    write_atomic(out / "explain.html", lambda f: f.write(page))
    return written + [out / "explain.json", out / "explain.html"]
