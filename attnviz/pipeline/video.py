"""Videos through the pipeline: sampled frames analysed in batches exactly as images (one forward
per batch, the same Analyser), written as one overlay video per map, a grid video, maps.npz with a
time axis and the channel weights over time. Frames are streamed: memory holds one batch of frames
(plus the small raw maps, a few KB per frame), however long the video.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from attnviz.images import ImageSource, identity
from attnviz.pipeline.analyser import Analyser
from attnviz.pipeline.batch import FATAL, stop, stopping_at
from attnviz.report.integrity import file_sizes
from attnviz.report.outputs import Style, map_entry
from attnviz.report.video_parts import load_parts, remove_parts, save_part
from attnviz.report.video import VideoOutputs, codec, write_arrays, write_timelines
from attnviz.results import AttentionMap
from attnviz.settings import SCHEMA, check, group
from attnviz.video import Frame, Sampling, VideoError, info, is_video, require_av, sample

__all__ = ["VideoSettings", "split_videos", "analyse_video", "run_videos", "stable_name", "peaks_over_time"]


@dataclass(frozen=True)
class VideoSettings:
    """The schema's video settings (attnviz.settings, group "video"; help and limits there)."""

    fps: float = SCHEMA["fps"].default
    every: int | None = SCHEMA["every"].default
    max_frames: int | None = SCHEMA["max_frames"].default
    smooth: float = SCHEMA["smooth"].default
    video_scale: str = SCHEMA["video_scale"].default
    animated: str = SCHEMA["animated"].default

    def __post_init__(self) -> None:
        """One-line errors for values outside the schema's limits."""
        for s in group("video"):
            check(s.name, getattr(self, s.name))

    @property
    def sampling(self) -> Sampling:
        """Which frames are analysed."""
        return Sampling(None if self.every else self.fps, self.every, self.max_frames)

    def record(self) -> dict[str, Any]:
        """The manifest's (and the resume fingerprint's) record of these settings."""
        return dataclasses.asdict(self)


def split_videos(sources: Iterable[ImageSource], animated: str = "image") -> list[ImageSource]:
    """The sources that are videos by their content (see attnviz.video.is_video)."""
    return [s for s in sources if s.error is None and is_video(s.path, animated)]


def stable_name(m: AttentionMap) -> str:
    """A map's name across frames: a cross map of each frame's own top-1 class is `cross-top-1-class`
    (its prompt, which changes from frame to frame, is in each frame's record)."""
    return "cross-top-1-class" if m.kind == "cross" and m.meta.get("prompt_source") == "top-1 class" else m.name


class _Track:
    """What a video's frames leave behind: raw maps, weights, frame records, the display maps' state."""

    def __init__(self, smooth: float) -> None:
        self.smooth = smooth
        self.raw: dict[str, list[np.ndarray]] = {}
        self.weights: dict[str, list[np.ndarray]] = {}
        self.templates: dict[str, AttentionMap] = {}        # the first frame's map of each name
        self.ema: dict[str, np.ndarray] = {}
        self.shown: dict[str, list[np.ndarray]] = {}         # the drawn (smoothed) maps, for --video-scale video
        self.frames: list[dict[str, Any]] = []
        self.saved: list[dict[str, Any]] = []                # this batch's maps' kind, layer, meta (its part)
        self.size: tuple[int, int] | None = None

    def add(self, frame: Frame, preds: list, maps: list[AttentionMap], keep_shown: bool) -> list[AttentionMap]:
        """Record one analysed frame; its maps as drawn (smoothed when asked), named stably."""
        top = {"label": preds[0].label, "probability": preds[0].probability} if preds else None
        return self.take(frame.image.size, frame.index, frame.time, top, maps, keep_shown)

    def restore(self, part: dict[str, Any], j: int, keep_shown: bool) -> list[AttentionMap]:
        """Record frame `j` of a part saved by an interrupted run (no forward pass): as `add` did."""
        r = part["records"][j]
        maps = [AttentionMap(m["kind"], m["name"], m["provenance"], m["layer"], part["raws"][m["name"]][j],
                             part["weights"][m["name"]][j] if m["name"] in part["weights"] else None, m["meta"])
                for m in r["saved"]]
        return self.take(tuple(r["size"]), r["index"], r["time"], r["top1"], maps, keep_shown)

    def take(self, size: tuple[int, int], index: int, time: float, top: dict | None, maps: list[AttentionMap],
             keep_shown: bool) -> list[AttentionMap]:
        self.size = self.size or size
        drawn, records, saved = [], [], []
        for m in maps:
            name = stable_name(m)
            if self.frames and name not in self.raw:
                continue                        # the first frame decides the videos written
            self.templates.setdefault(name, dataclasses.replace(m, name=name, extras={}))
            # copies: a map may be a view of its whole batch's array, which it would keep alive
            data = np.array(m.data, np.float32)
            self.raw.setdefault(name, []).append(data)
            if m.weights is not None:
                self.weights.setdefault(name, []).append(np.array(m.weights, np.float32))
            prev = self.ema.get(name)
            shown = data if prev is None or not self.smooth or prev.shape != data.shape else \
                ((1 - self.smooth) * data + self.smooth * prev).astype(np.float32)
            self.ema[name] = shown
            if keep_shown:
                self.shown.setdefault(name, []).append(shown)
            drawn.append(dataclasses.replace(m, name=name, data=shown))
            rec = map_entry(m, size)
            records.append({"name": name, "peak": rec["peak"], "min": rec["min"], "max": rec["max"],
                            "mean": rec["mean"], **({"prompt": m.meta["prompt"]} if "prompt" in m.meta else {})})
            saved.append({"name": name, "kind": m.kind, "provenance": m.provenance, "layer": m.layer,
                          "meta": {k: rec[k] for k in m.meta}})
        self.frames.append({"index": index, "time": time, "top1": top, "maps": records})
        self.saved.append({"index": index, "time": time, "top1": top, "size": list(size), "saved": saved})
        return drawn

    def save_part(self, folder: Path, key: str, n: int) -> None:
        """The last `n` frames as one part on disk (resume continues after it)."""
        k = len(self.frames) // n - 1
        names = [m["name"] for m in self.saved[-1]["saved"]]
        save_part(folder, k, key, self.saved[-n:], {name: self.raw[name][-n:] for name in names},
                  {name: self.weights[name][-n:] for name in names if name in self.weights})
        self.saved.clear()                  # each map's meta (its geometry: KBs) kept one batch only


def analyse_video(analyser: Analyser, src: ImageSource, out: Path, style: Style, settings: VideoSettings,
                  batch_size: int, key: str = "") -> dict[str, Any]:
    """Analyse and write one video; its manifest record (status "error" with the frames kept said
    when it breaks part way; nothing written when no frame could be decoded). `key`: the run's
    settings (its fingerprint), which an interrupted run's saved batches must match to be used."""
    av = require_av()
    entry: dict[str, Any] = {"source": src.source, **({"source_bytes": src.source_bytes} if src.source_bytes else {}),
                             "input": identity(src.path), "output": src.output, "status": "ok", "error": None,
                             "size": None, "predictions": [], "maps": []}
    try:
        meta = info(src.path)
    except VideoError as e:
        return {**entry, "status": "error", "error": str(e)}
    folder = out / src.output
    if not folder.resolve().is_relative_to(out.resolve()):
        raise OSError(f"output folder {src.output!r} would lie outside {out}")
    sampling = settings.sampling
    rate = sampling.rate(meta["fps"])
    scale = settings.video_scale
    track = _Track(settings.smooth)
    outputs = VideoOutputs(av, folder, rate, style, scale, src.source)
    error = None
    try:
        error = _first_pass(analyser, src.path, sampling, batch_size, track, outputs if scale == "frame" else None,
                            folder, f"{key} {json.dumps(entry['input'], sort_keys=True)} {batch_size}")
        if track.frames and scale == "video":
            outputs.spans = _spans(track.shown)
            _second_pass(src.path, sampling, track, outputs)
        files = outputs.close() if track.frames else []
    except BaseException:
        outputs.abort()
        raise
    if not track.frames:
        outputs.abort()
        remove_parts(folder)
        return {**entry, "status": "error", "error": error or "no frames sampled"}
    times = [f["time"] for f in track.frames]
    files += write_arrays(folder, track.raw, track.weights, times, [f["index"] for f in track.frames])
    layers = {n: m.layer for n, m in track.templates.items()}
    files += write_timelines(folder, track.weights, times, style.top_k, layers, style)
    maps = []
    for name, t in track.templates.items():
        stack = np.stack(track.raw[name])
        finite = stack[np.isfinite(stack)]
        rec = {k: v for k, v in map_entry(t, track.size).items()
               if k not in ("probability", "clip_score", "faithfulness")}    # the first frame's: per frame below
        maps.append({**rec, "file": f"{name}.mp4", "shape": list(stack.shape), "peak": None,
                     "min": float(finite.min()) if finite.size else None,
                     "max": float(finite.max()) if finite.size else None,
                     "mean": float(finite.mean()) if finite.size else None,
                     "npz_extras": [f"{name}_weights"] * (name in track.weights)})
    kept = len(track.frames)
    video = {"frames": kept, "source_fps": meta["fps"], "duration": meta["duration"], "rate": rate,
             "codec": codec(av), "sampling": {"fps": sampling.fps, "every": sampling.every,
                                              "max_frames": sampling.max_frames},
             "scale": scale, "spans": {k: list(v) for k, v in outputs.spans.items()}, "smooth": settings.smooth,
             "complete": error is None}
    entry.update(size=list(track.size), maps=maps, video=video, frames=track.frames, files=files,
                 file_bytes=file_sizes(folder, files))
    if error:
        entry.update(status="error", error=f"{error}; the {kept} frames sampled before it are kept and written")
    remove_parts(folder)                          # the files are whole: the record replaces the parts
    return entry


def _first_pass(analyser: Analyser, path: Path, sampling: Sampling, batch_size: int, track: _Track,
                outputs: VideoOutputs | None, folder: Path, key: str) -> str | None:
    """Decode, analyse in batches, record (and draw, with `outputs`); the error that stopped it, if any.

    The batches an interrupted run saved (same key) are read back instead of analysed; every full
    batch is saved as a part, so that the next interruption loses at most one batch."""
    parts = load_parts(folder, key)
    restored = [(p, j) for p in parts for j in range(len(p["records"]))]
    if any(len(p["records"]) != batch_size for p in parts):
        restored = []                                       # laid out otherwise: compute everything
    chunk: list[Frame] = []

    def flush() -> None:
        for frame, (preds, maps) in zip(chunk, analyser.analyse_batch([f.image for f in chunk])):
            drawn = track.add(frame, preds, maps, keep_shown=outputs is None)
            if outputs is not None:
                outputs.add(frame.image, drawn, frame.time, frame.index)
        if len(chunk) == batch_size:
            track.save_part(folder, key, batch_size)
        chunk.clear()
    try:
        for k, frame in enumerate(sample(path, sampling)):
            if k < len(restored):                          # done by the interrupted run: its maps, no forward
                drawn = track.restore(*restored[k], keep_shown=outputs is None)
                if outputs is not None:
                    outputs.add(frame.image, drawn, frame.time, frame.index)
                continue
            chunk.append(frame)
            if len(chunk) >= batch_size:
                flush()
    except VideoError as e:
        flush()                                  # the frames decoded before the break are kept
        return str(e)
    flush()
    return None


def _spans(shown: dict[str, list[np.ndarray]]) -> dict[str, tuple[float, float]]:
    """One colour range per map across the whole video (of the maps as drawn)."""
    spans = {}
    for name, arrays in shown.items():
        values = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
        if values.size:
            spans[name] = (float(values.min()), float(values.max()))
    return spans


def _second_pass(path: Path, sampling: Sampling, track: _Track, outputs: VideoOutputs) -> None:
    """--video-scale video: decode the same frames again and draw them with the video's ranges."""
    frames = track.frames
    try:
        for k, frame in enumerate(sample(path, sampling)):
            if k >= len(frames):
                break
            drawn = [dataclasses.replace(t, data=track.shown[n][k]) for n, t in track.templates.items()
                     if k < len(track.shown.get(n, ()))]
            outputs.add(frame.image, drawn, frame.time, frame.index)
    except VideoError:
        pass                                     # the same break as the first pass: its frames are drawn


def peaks_over_time(entry: dict[str, Any], name: str) -> list[tuple[float, Sequence[float] | None]]:
    """(time, peak (x, y) in frame pixels) of map `name` in every frame of a video's record."""
    return [(f["time"], next((m["peak"] for m in f["maps"] if m["name"] == name), None)) for f in entry["frames"]]



def run_videos(analyser: Analyser, manifest: Any, todo: Sequence[ImageSource], out: Path, style: Style,
               settings: VideoSettings, batch_size: int, report: Any, on_batch: Any = None) -> None:
    """Every video of `todo` in turn: analysed, written, recorded in the manifest (saved after each)."""
    from attnviz.results import Result
    t0, forwards = time.perf_counter(), analyser.forwards
    for src in todo:
        try:
            entry = analyse_video(analyser, src, out, style, settings, batch_size,
                                  json.dumps(manifest.fingerprint, sort_keys=True, default=str))
        except OSError as e:
            entry = {"source": src.source, "output": src.output, "status": "error", "size": None,
                     "error": f"cannot write outputs: {e.strerror or e}", "predictions": [], "maps": []}
            if e.errno in FATAL:
                raise stop(e, out / src.output) from None
        with stopping_at(manifest.path):   # the manifest's spool and file: the same disk as the outputs
            manifest.keep(entry)
        report.results.append(Result(src.source, src.path, src.output, entry["status"], entry["error"],
                                     tuple(entry["size"]) if entry.get("size") else None))
        with stopping_at(manifest.path):
            manifest.save()
        if on_batch:
            on_batch(1)
    report.seconds += time.perf_counter() - t0          # the summary's time and forward passes
    report.forwards += analyser.forwards - forwards
