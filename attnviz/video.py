"""Video inputs: recognise a video by its content and stream its sampled frames (PyAV, the `video` extra).

    for frame in sample(path, Sampling(fps=2.0)):   # Frame(index, time, image), never all in memory
        ...

A file that breaks part way raises VideoError after the frames decoded before the break (the caller
keeps them); a container whose header promises more than the frames decoded (a truncated file) does too.
Animated GIF and WebP are images unless `animated="video"`; they are decoded with Pillow.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, ImageSequence

from attnviz.errors import AttnvizError, ImageError, one_line

__all__ = ["VIDEO_SUFFIXES", "Frame", "Sampling", "VideoError", "is_video", "require_av", "sample", "INSTALL"]

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"}
INSTALL = "pip install \"attnviz[video]\" (PyAV)"
_NO_FRAMES = "no frames: the file holds no decodable video stream or frame"
_TRUNCATED_SLACK = 0.5      # seconds the last frame may end before the container's stated duration


class VideoError(ImageError):
    """One video could not be read to its end; `frames` were decoded before the problem."""

    def __init__(self, message: str, frames: int = 0) -> None:
        super().__init__(message)
        self.frames = frames


@dataclass(frozen=True)
class Frame:
    """One sampled frame: its index among the decoded frames, its time stamp (s) and its RGB picture."""

    index: int
    time: float
    image: Image.Image


@dataclass(frozen=True)
class Sampling:
    """Which frames are analysed: `fps` per second of video, or every `every`-th frame; at most `max_frames`."""

    fps: float | None = 2.0
    every: int | None = None
    max_frames: int | None = None

    def rate(self, source_fps: float | None) -> float:
        """Frames per second of the sampled sequence (the written videos' rate)."""
        if self.every:
            return (source_fps or 25.0) / self.every
        return min(self.fps or 2.0, source_fps or self.fps or 2.0)


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(32)


def _container(head: bytes) -> bool:
    """ISO-BMFF (mp4, mov), Matroska/WebM, AVI: the containers PyAV is asked to read."""
    return (head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free")
            or head.startswith(b"\x1a\x45\xdf\xa3")
            or (head.startswith(b"RIFF") and head[8:12] == b"AVI "))


def _animated(path: Path, head: bytes) -> bool:
    """An animated GIF or WebP (more than one frame)."""
    if not (head.startswith((b"GIF87a", b"GIF89a")) or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")):
        return False
    try:
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1) > 1
    except Exception:  # noqa: BLE001  (a damaged picture: the image path says why)
        return False


def is_video(path: Path, animated: str = "image") -> bool:
    """Is `path` a video by its content? A video suffix on other content counts too (its own error
    then says it is not a readable video, rather than calling it a broken image)."""
    try:
        head = _head(path)
    except OSError:
        return False
    if _container(head) or (animated == "video" and _animated(path, head)):
        return True
    return path.suffix.lower() in VIDEO_SUFFIXES and not head.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8"))


def require_av() -> Any:
    """The `av` module, or a one-line error naming the extra to install (exit 2)."""
    try:
        import av
    except ImportError:
        raise AttnvizError(f"video input needs PyAV: {INSTALL}") from None
    av.logging.set_level(None)           # FFmpeg's own messages: the errors below say what matters
    return av


def sample(path: Path, sampling: Sampling, start: int = 0) -> Iterator[Frame]:
    """The sampled frames of a video, streamed; `start`: skip the first `start` sampled frames (resume).

    Raises VideoError (after yielding every frame decoded before it) when the file is not a video,
    breaks part way, or ends before the duration its container states."""
    with open(path, "rb") as f:
        head = f.read(32)
    frames = _pillow(path) if not _container(head) and _animated(path, head) else _pyav(path)
    n = 0
    next_time = 0.0
    for index, time, picture in frames:
        if sampling.every:
            take = index % sampling.every == 0
        else:
            take = time + 1e-6 >= next_time
            if take:     # the next sample time after this frame (steady even when frames are dropped)
                next_time = (int(time * sampling.fps + 1e-6) + 1) / sampling.fps
        if not take:
            continue
        if n >= start:         # only the frames taken become pictures (PyAV's to_image: ~1 ms at 720p)
            yield Frame(index, round(time, 6), picture if isinstance(picture, Image.Image) else picture.to_image())
        n += 1
        if sampling.max_frames and n >= sampling.max_frames:
            return


def info(path: Path) -> dict[str, Any]:
    """What the container says: frames per second, duration (s), width, height, codec (None when unknown)."""
    with open(path, "rb") as f:
        head = f.read(32)
    if not _container(head) and _animated(path, head):
        with Image.open(path) as im:
            durations = [fr.info.get("duration", 100) or 100 for fr in ImageSequence.Iterator(im)]
            return {"fps": len(durations) / (sum(durations) / 1000), "duration": sum(durations) / 1000,
                    "width": im.width, "height": im.height, "codec": im.format.lower()}
    av = require_av()
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoError(_NO_FRAMES)
            s = c.streams.video[0]
            rate = float(s.average_rate) if s.average_rate else None
            return {"fps": rate, "duration": c.duration / 1e6 if c.duration else None,
                    "width": s.codec_context.width, "height": s.codec_context.height, "codec": s.codec_context.name}
    except (av.FFmpegError, IndexError, ValueError, OSError) as e:
        raise VideoError(f"not a readable video ({one_line(e, 120)})") from None


def _pillow(path: Path) -> Iterator[tuple[int, float, Image.Image]]:
    """Frames of an animated GIF/WebP with their time stamps (their durations summed)."""
    t, n = 0.0, 0
    try:
        with Image.open(path) as im:
            for frame in ImageSequence.Iterator(im):
                rgb = frame.convert("RGB")
                yield n, t, rgb
                n += 1
                t += (frame.info.get("duration", 100) or 100) / 1000
    except (OSError, ValueError, EOFError) as e:          # a truncated GIF/WebP: the frames before it are kept
        raise VideoError(f"broken after {n} frames ({one_line(e, 120)})", n) from None


def _pyav(path: Path) -> Iterator[tuple[int, float, Any]]:
    """Every decoded frame (a PyAV VideoFrame) of the first video stream; VideoError on a broken or truncated file."""
    av = require_av()
    n, last = 0, None
    try:
        container = av.open(str(path))
    except (av.FFmpegError, IndexError, ValueError, OSError) as e:
        raise VideoError(f"not a readable video ({one_line(e, 120)})") from None
    with container:
        if not container.streams.video:
            raise VideoError(_NO_FRAMES)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"                  # frame threads: decoding keeps pace with the model
        rate = float(stream.average_rate) if stream.average_rate else 25.0
        try:
            for frame in container.decode(stream):
                time = frame.time if frame.time is not None else n / rate
                last = time
                yield n, time, frame
                n += 1
        except (av.FFmpegError, IndexError, ValueError, OSError) as e:     # a damaged stream, whatever PyAV raises
            raise VideoError(f"broken after {n} frames ({one_line(e, 120)})", n) from None
        duration = container.duration / 1e6 if container.duration else None
    if n == 0:
        raise VideoError(_NO_FRAMES, 0)
    if duration and last is not None and last + 1 / rate + _TRUNCATED_SLACK < duration:
        raise VideoError(f"truncated: frames end at {last:.2f} s of the {duration:.2f} s its header states", n)
