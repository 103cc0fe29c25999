"""Per-video outputs: one overlay video per map, the original and a grid video, maps.npz with a time
axis, and the channel weights over time (layout in the README, "Video").

Every video file is encoded into a temporary file beside it and renamed when complete, like every
other output (report/atomic.py); frames go to the encoders as they come, never all in memory.
"""
from __future__ import annotations

import os
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from attnviz.render import blender, fit
from attnviz.render.draw import font, text
from attnviz.render.timeline import channel_timeline
from attnviz.report.atomic import save_npz, save_png
from attnviz.report.outputs import Style, map_picture
from attnviz.results import AttentionMap
from attnviz.text import shown

__all__ = ["codec", "VideoOutputs", "stamp", "SCALES"]

DEPTH = 16       # frames queued for drawing at most (each a decoded frame and its maps)
SCALES = {"frame": "colour scale: each frame's own min–max", "video": "colour scale: one range across the video"}


def codec(av: Any) -> str:
    """H.264 (libx264) where this FFmpeg build has the encoder, else MPEG-4 part 2 (always built in)."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def stamp(picture: Image.Image, time: float, index: int, note: str = "") -> Image.Image:
    """`picture` with its time stamp (and `note`) drawn in its top-left corner on a dark band."""
    picture = picture.copy()
    draw = ImageDraw.Draw(picture)
    f = font(max(10, min(18, picture.width // 24)))
    label = f"t {time:.2f} s · frame {index}" + (f" · {note}" if note else "")
    box = draw.textbbox((4, 3), label, font=f)
    draw.rectangle((0, 0, min(picture.width, box[2] + 4), box[3] + 3), fill=(0, 0, 0))
    text(draw, (4, 3), label, f, fill=(255, 255, 255))
    return picture


def _even(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The picture at the encoder's size (even sides, as yuv420p needs): cropped by at most a pixel,
    or resized when a later frame differs."""
    if picture.size == size:
        return picture
    if picture.width - size[0] in (0, 1) and picture.height - size[1] in (0, 1):
        return picture.crop((0, 0, *size))
    return picture.resize(size, Image.Resampling.BILINEAR)


class _Encoder:
    """One video file, encoded frame by frame into a temporary beside it, renamed when closed."""

    def __init__(self, av: Any, path: Path, rate: float, codec_name: str) -> None:
        self.av, self.path, self.codec = av, path, codec_name
        self.rate = Fraction(rate).limit_denominator(1000)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self.container = None
        self.size: tuple[int, int] | None = None

    def add(self, picture: Image.Image) -> None:
        if self.container is None:
            self.size = (max(2, picture.width // 2 * 2), max(2, picture.height // 2 * 2))
            self.container = self.av.open(self.tmp, "w", format="mp4")
            s = self.container.add_stream(self.codec, rate=self.rate)
            s.width, s.height, s.pix_fmt = *self.size, "yuv420p"
            if self.codec == "libx264":
                s.options = {"preset": "ultrafast", "crf": "20", "threads": "1"}
            self.stream = s
        frame = self.av.VideoFrame.from_image(_even(picture.convert("RGB"), self.size))
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> bool:
        """Flush and rename into place; False (nothing kept) when no frame came."""
        if self.container is None:
            Path(self.tmp).unlink(missing_ok=True)
            return False
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)
        return True

    def abort(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # noqa: BLE001  (already failing: the temporary goes either way)
                pass
        Path(self.tmp).unlink(missing_ok=True)


class VideoOutputs:
    """The files of one video under `folder`: add frames with their display maps, then `close`."""

    def __init__(self, av: Any, folder: Path, rate: float, style: Style, scale: str, source: str,
                 spans: dict[str, tuple[float, float]] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.av, self.folder, self.rate, self.style, self.scale = av, folder, rate, style, scale
        self.source, self.spans = source, spans or {}
        self.codec = codec(av)
        self.encoders: dict[str, _Encoder] = {}
        self._pool = ThreadPoolExecutor(1, "attnviz-video")
        self._pending: deque[Future] = deque()

    def _put(self, name: str, picture: Image.Image) -> None:
        if name not in self.encoders:
            self.encoders[name] = _Encoder(self.av, self.folder / name, self.rate, self.codec)
        self.encoders[name].add(picture)

    def add(self, image: Image.Image, maps: Sequence[AttentionMap], time: float, index: int) -> None:
        """Queue one sampled frame (drawn and encoded in one thread, in order, while the next batch
        runs its forward; at most DEPTH frames wait: memory stays flat)."""
        while len(self._pending) >= DEPTH:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._draw, image, list(maps), time, index))

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()        # a drawing or encoding error is raised here

    def _draw(self, image: Image.Image, maps: Sequence[AttentionMap], time: float, index: int) -> None:
        """The original, each map's overlay (its time stamp drawn) and the grid of one frame."""
        st = self.style
        fitted = fit(image, st.size)
        paint = blender(fitted, st.colormap, st.alpha)
        note = "video scale" if self.scale == "video" else ""
        self._put("original.mp4", st.mark(stamp(fitted, time, index)))
        cells = [("original", fitted)]
        for m in maps:
            span = self.spans.get(m.name)
            draw = (lambda d, g, s=span: paint(d, g, span=s)) if span else paint
            picture = map_picture(m, image, draw)
            self._put(f"{m.name}.mp4", st.mark(stamp(picture, time, index, note)))
            cells.append((f"{m.name} · {m.provenance}", picture))
        self._put("grid.mp4", st.mark(tile(cells, f"{shown(self.source)} · t {time:.2f} s · frame {index} · "
                                                  f"{SCALES[self.scale]}")))

    def close(self) -> list[str]:
        """Finish every video; the names of the files written."""
        self._drain()
        self._pool.shutdown()
        return [name for name, e in self.encoders.items() if e.close()]

    def abort(self) -> None:
        """Drop every unfinished video (an interruption): no partial file is left under its name."""
        for f in self._pending:
            f.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        for e in self.encoders.values():
            e.abort()


def tile(cells: Sequence[tuple[str, Image.Image]], label: str, cell: int = 256, columns: int = 6) -> Image.Image:
    """The grid video's picture: a label band, then each picture fitted to `cell` under its title."""
    f = font(13)
    fb = font(14, bold=True)
    pad, title_h, label_h = 6, 18, 24
    cols = min(columns, len(cells))
    rows = -(-len(cells) // cols)
    width = pad + cols * (cell + pad)
    height = label_h + rows * (title_h + cell + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    text(draw, (pad, 4), label, fb)
    for k, (title, picture) in enumerate(cells):
        r, c = divmod(k, cols)
        left, top = pad + c * (cell + pad), label_h + r * (title_h + cell + pad)
        text(draw, (left + cell / 2, top + 2), title, f, anchor="ma")
        small = fit(picture, cell)
        sheet.paste(small, (left + (cell - small.width) // 2, top + title_h + (cell - small.height) // 2))
    return sheet


def write_arrays(folder: Path, maps: dict[str, list[np.ndarray]], weights: dict[str, list[np.ndarray]],
                 times: Sequence[float], indices: Sequence[int]) -> list[str]:
    """maps.npz: each map as (T, H, W), each channel map's weights as (T, C), with `frame_time` (s)
    and `frame_index` (T,); it holds the raw maps (never smoothed)."""
    arrays: dict[str, np.ndarray] = {name: np.stack(v).astype(np.float32) for name, v in maps.items()}
    arrays.update({f"{name}_weights": np.stack(v).astype(np.float32) for name, v in weights.items()})
    arrays["frame_time"] = np.asarray(times, np.float64)
    arrays["frame_index"] = np.asarray(indices, np.int64)
    save_npz(folder / "maps.npz", arrays)
    return ["maps.npz"]


def write_timelines(folder: Path, weights: dict[str, list[np.ndarray]], times: Sequence[float], top_k: int,
                    layers: dict[str, str], style: Style) -> list[str]:
    """<name>_weights.png: the top-k channels × time heatmap of every map with channel weights."""
    files = []
    for name, rows in weights.items():
        title = f"{name} weights over time · {layers.get(name, '')} · top {top_k} by mean"
        save_png(folder / f"{name}_weights.png", style.mark(channel_timeline(np.stack(rows), times, top_k, title)))
        files.append(f"{name}_weights.png")
    return files
