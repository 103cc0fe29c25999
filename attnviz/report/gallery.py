"""OUT/index.html: an offline gallery of a run (images × kinds), from its manifest and its own PNGs.

Self-contained: inline CSS and script, relative links only, nothing fetched from the network.
Every text a user or a file name supplies is HTML-escaped.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

from attnviz.render.band import BAND_COLOUR, RANDOM_BAND
from attnviz.render.overlay import colormap_lut
from attnviz.report.atomic import write_atomic
from attnviz.report.integrity import original_of
from attnviz.report.tables import columns_of

__all__ = ["write_gallery", "gallery_html", "RANDOM_BAND", "BAND_CSS", "random_band_html"]

BAND_CSS = (".random{background:#%02x%02x%02x;color:#fff;font-weight:bold;font-size:18px;padding:10px 14px;"
            "margin-bottom:12px}" % BAND_COLOUR)


def random_band_html() -> str:
    """The HTML twin of the pictures' random-weights band (style: BAND_CSS)."""
    return f'<div class="random" id="random">⚠ {html.escape(RANDOM_BAND)}</div>'


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fff}
""" + BAND_CSS + """
.meta{color:#555}.notes li{color:#7a4b00}
.filters{display:flex;flex-wrap:wrap;gap:14px;margin:12px 0;position:sticky;top:0;background:#fff;padding:6px 0}
.filters [data-filter]{display:flex;flex-wrap:wrap;gap:3px}
.filters button{border:1px solid #999;background:#f4f4f4;border-radius:4px;padding:3px 9px;cursor:pointer}
.filters button.on{background:#234;color:#fff;border-color:#234}
table{border-collapse:collapse;width:100%;table-layout:fixed}
th,td{border:1px solid #ddd;padding:3px;vertical-align:top;overflow-wrap:break-word}
th{background:#eef1f5;font-weight:600;font-size:11px;position:sticky;top:44px;padding:3px 2px}
th.label{width:13%}td.label{font-size:12px}
td img{width:100%;max-width:220px;height:auto;display:block;cursor:zoom-in}
td video{width:100%;max-width:220px;height:auto;display:block}
figcaption{font-size:11px;color:#444}
.legend{display:flex;align-items:center;gap:8px;font-size:12px;color:#444;margin:4px 0 10px}
.legend .ramp{width:240px;height:12px;border:1px solid #888}
tr.error td.label{color:#b00020}.err{color:#b00020}
.prov{font-weight:normal;color:#666;font-size:10px}
#lightbox{position:fixed;inset:0;background:rgba(0,0,0,.85);display:flex;flex-direction:column;
align-items:center;justify-content:center;cursor:zoom-out}
#lightbox[hidden]{display:none}#lightbox img{max-width:95vw;max-height:88vh}
#lightbox p{color:#fff}
"""

_SCRIPT = """
const state = {kind: "", provenance: "", status: ""};
function matches(el) {
  return (!state.kind || el.dataset.kind === state.kind) &&
         (!state.provenance || el.dataset.provenance === state.provenance);
}
function apply() {
  document.querySelectorAll("[data-col]").forEach(el => {
    const head = document.querySelector(`th[data-col="${el.dataset.col}"]`);
    el.hidden = head.dataset.kind !== undefined && !matches(head);
  });
  document.querySelectorAll("#gallery tbody tr").forEach(tr => {
    const cells = [...tr.querySelectorAll("td[data-kind]")];
    const anyMap = !state.kind && !state.provenance || cells.some(matches);
    tr.hidden = !(anyMap && (!state.status || tr.dataset.status === state.status));
  });
  document.getElementById("shown").textContent =
    document.querySelectorAll("#gallery tbody tr:not([hidden])").length;
}
document.querySelectorAll(".filters [data-filter]").forEach(group => {
  group.addEventListener("click", e => {
    const b = e.target.closest("button"); if (!b) return;
    state[group.dataset.filter] = b.dataset.value;
    group.querySelectorAll("button").forEach(x => x.classList.toggle("on", x === b));
    apply();
  });
});
const box = document.getElementById("lightbox");
document.querySelectorAll("#gallery img").forEach(img => img.addEventListener("click", () => {
  box.querySelector("img").src = img.getAttribute("src");
  box.querySelector("p").textContent = img.alt; box.hidden = false;
}));
box.addEventListener("click", () => { box.hidden = true; });
document.addEventListener("keydown", e => { if (e.key === "Escape") box.hidden = true; });
apply();
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _src(output: str, file: str) -> str:
    """A relative URL to OUT/<output>/<file> (every character that is not safe in a URL quoted)."""
    return quote(f"{output}/{file}", safe="/", errors="backslashreplace")


def _buttons(name: str, label: str, values: list[str]) -> str:
    items = [f'<button type="button" data-value="" class="on">all {_e(label)}</button>']
    items += [f'<button type="button" data-value="{_e(v)}">{_e(v)}</button>' for v in values]
    return f'<div data-filter="{name}">{"".join(items)}</div>'


def _name(text: Any) -> str:
    """A file name, escaped, breakable after / _ - . (never inside a word)."""
    return re.sub(r"([/_\-.])", r"\1<wbr>", _e(text))


def _legend(colormap: str) -> str:
    """The colour bar every overlay is drawn with (render.overlay's lookup table as a CSS gradient)."""
    try:
        lut = colormap_lut(colormap)
    except ValueError:
        return ""
    stops = ", ".join("#%02x%02x%02x" % tuple(int(v) for v in lut[round(k * (len(lut) - 1) / 10)]) for k in range(11))
    return (f'<div class="legend" id="legend"><span>0 (min)</span><span class="ramp" '
            f'style="background:linear-gradient(to right, {stops})"></span><span>1 (max)</span>'
            f"<span>each map min–max normalised on its own · colormap {_e(colormap)}</span></div>")


def _label(image: dict[str, Any]) -> str:
    parts = [f"<b>{_name(image['source'])}</b>"]
    video = image.get("video") if isinstance(image.get("video"), dict) else None
    if video:              # a video: its frames and colour scale, not one prediction
        parts.append(_e(f"video · {video.get('frames')} frames at {video.get('rate', 0):.3g}/s · "
                        f"{video.get('scale')} colour scale" + (f" · smoothed {video['smooth']}" if video.get('smooth') else "")))
    if image.get("status") != "ok":
        parts.append(f'<span class="err">error: {_e(image.get("error"))}</span>')
    for p in (image.get("predictions") or [])[:3]:
        prob = p.get("probability")
        parts.append(f"{_e(p['label'])} {100 * prob:.1f} %" if isinstance(prob, (int, float)) else _e(p["label"]))
    return "<br>".join(parts)


def _media(src: str, alt: str) -> str:
    """An <img>, or for a video's outputs (.mp4) a looping, muted <video> that plays in the page."""
    if src.lower().endswith(".mp4"):
        return (f'<video src="{src}" title="{_e(alt)}" autoplay loop muted playsinline controls '
                f'preload="metadata"></video>')
    return f'<img src="{src}" alt="{_e(alt)}">'


def _row(image: dict[str, Any], keys: list[str]) -> str:
    status = image.get("status", "ok")
    cells = [f'<td class="label">{_label(image)}</td>']
    if status == "ok":
        original = _src(image["output"], original_of(image))         # .jpg/.webp with --format
        cells.append(f'<td data-col="0">{_media(original, image["source"])}</td>')
    else:
        cells.append('<td data-col="0"></td>')
    by_key = columns_of([image])
    for c, key in enumerate(keys, start=1):
        m = by_key.get(key, (None, None))[1] if status == "ok" else None
        if m is None:
            cells.append(f'<td data-col="{c}"></td>')
            continue
        alt = f"{image['source']} · {m['name']} · {m['provenance']}"
        caption = f"<figcaption>{_e(m['prompt'])}</figcaption>" if m.get("prompt") else ""
        cells.append(f'<td data-col="{c}" data-kind="{_e(m["kind"])}" data-provenance="{_e(m["provenance"])}">'
                     f'<figure style="margin:0">{_media(_src(image["output"], m["file"]), alt)}'
                     f"{caption}</figure></td>")
    return f'<tr data-status="{_e(status)}" class="{_e(status)}">{"".join(cells)}</tr>'


def gallery_html(manifest: dict[str, Any]) -> str:
    """The gallery page of a run's manifest."""
    return "\n".join(_parts(manifest))


def _parts(manifest: dict[str, Any]) -> Iterator[str]:
    """The page's lines. Two passes over the entries (columns and errors first, then one row per
    image), none of them held: "images" may be a re-iterable view of a large run's spooled entries."""
    every = manifest.get("images", [])
    images = lambda: (i for i in every if isinstance(i, dict))   # noqa: E731
    columns: dict[str, tuple[str, dict[str, Any]]] = {}          # key -> (title, an example map)
    errors: list[tuple[Any, Any]] = []
    n = 0
    for image in images():
        n += 1
        for key, found in columns_of([image]).items():
            columns.setdefault(key, found)
        if image.get("status") != "ok":
            errors.append((image.get("source"), image.get("error")))
    keys = list(columns)
    bb = manifest.get("backbone") or {}
    kinds = list(dict.fromkeys(m["kind"] for _, m in columns.values()))
    provenances = sorted({m["provenance"] for _, m in columns.values()})
    heads = ['<th class="label">image</th>', '<th data-col="0">original</th>']
    for c, key in enumerate(keys, start=1):
        title, m = columns[key]
        heads.append(f'<th data-col="{c}" data-kind="{_e(m["kind"])}" data-provenance="{_e(m["provenance"])}">'
                     f'{_name(title)}<br><span class="prov">{_e(m["provenance"])} · {_name(m.get("layer", ""))}</span></th>')
    ok = n - len(errors)
    yield from ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                f"<title>attnviz · {_e(bb.get('name', ''))} · {n} images</title>",
                f"<style>{_STYLE}</style></head><body>"]
    if bb and not bb.get("pretrained", True):
        yield random_band_html()
    yield f"<h1>attnviz · {_e(bb.get('name', ''))}</h1>"
    yield (f'<p class="meta">weights {_e(bb.get("weights"))} · layer {_e(bb.get("layer"))} · '
           f"{ok} ok, {len(errors)} errors · <code>{_e(manifest.get('command', ''))}</code></p>")
    texts = (manifest.get("settings") or {}).get("texts") or []
    if texts:
        yield f'<p class="meta">prompts: {_e(" · ".join(texts))}</p>'
    notes = manifest.get("notes") or []
    if notes:
        yield '<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"
    yield ('<div class="filters">' + _buttons("kind", "kinds", kinds)
           + _buttons("provenance", "provenances", provenances)
           + _buttons("status", "statuses", ["ok", "error"])
           + f'<span><span id="shown">{n}</span> of {n} images shown</span></div>')
    yield _legend((manifest.get("settings") or {}).get("colormap", "jet"))
    yield f'<table id="gallery"><thead><tr>{"".join(heads)}</tr></thead><tbody>'
    yield from (_row(i, keys) for i in images())
    yield "</tbody></table>"
    if errors:
        yield (f'<h2 id="errors">Errors ({len(errors)})</h2><ul class="errors">'
               + "".join(f"<li><b>{_e(source)}</b>: {_e(error)}</li>" for source, error in errors)
               + "</ul>")
    yield '<div id="lightbox" hidden><img alt=""><p></p></div>'
    yield f"<script>{_SCRIPT}</script></body></html>\n"


def write_gallery(out: Path, manifest: dict[str, Any]) -> Path:
    """Write OUT/index.html for a run's manifest (atomically, line by line); its path."""
    path = Path(out) / "index.html"

    def write(f: Any) -> None:
        for k, part in enumerate(_parts(manifest)):
            f.write((b"\n" if k else b"") + part.encode("utf-8", "backslashreplace"))
    write_atomic(path, write)
    return path
