"""Atomic writes: a file is either its old content or its complete new content, never half."""
from __future__ import annotations

import io
import json
import math
import os
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

try:                       # ISA-L's deflate: 3.6–5.7× zlib's level 1 on our pictures, files as small
    from isal import isal_zlib as _deflate
except ImportError:        # not installed: the standard zlib (the same pictures, slower)
    _deflate = zlib

__all__ = ["PNG_LEVEL", "FORMATS", "encode_png", "write_atomic", "save_png", "save_image", "save_pixels",
           "save_npz", "save_json"]

# PNG: every row "Up"-filtered (minus the row above) and deflated at level 1 — by ISA-L (`isal`,
# a dependency) where it is installed: an overlay 512² in 4.6 ms instead of 16.9, a grid in 9.0
# instead of 51, files within 1 % of zlib's (bench/README.md "Where the time goes"). Measured with zlib on 7
# of attnviz's own pictures (overlays, grids, a chart): Pillow at level 1 (it tries 5 filters on
# every row) takes 1.8× as long, level 3 (the old setting) 3.3×, its default 6 9.7×, for files
# 3 %, 9 % and 20 % smaller. Level 0 would write files 3–5× larger.
PNG_LEVEL = 1
# --format for overlays: file suffix and Pillow save options (JPEG q90 4:2:0 encodes 11× faster
# than our PNG into files 4× smaller; WebP method 0 is as fast as our PNG, files 7× smaller)
FORMATS = {"png": ("png", None),
           "jpg": ("jpg", dict(format="JPEG", quality=90)),
           "webp": ("webp", dict(format="WEBP", quality=90, method=0))}
_EPOCH = (1980, 1, 1, 0, 0, 0)    # fixed zip member time: maps.npz is byte-for-byte reproducible

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write via a temporary file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)     # mkstemp makes 0600; outputs are ordinary files
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)      # a full disk fails in write() with no path: name the file
        raise


def _chunk(kind: bytes, data: bytes) -> bytes:
    return b"".join((struct.pack(">I", len(data)), kind, data,
                     struct.pack(">I", _deflate.crc32(data, _deflate.crc32(kind)))))


def encode_png(image: Image.Image, level: int = PNG_LEVEL) -> bytes:
    """An 8-bit RGB or L image as PNG bytes: one fixed filter (Up), zlib `level`; others via Pillow."""
    if image.mode not in ("RGB", "L"):
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=level)
        return buf.getvalue()
    a = np.asarray(image)
    h, w = a.shape[:2]
    rows = a.reshape(h, -1)                                     # (h, w·channels) bytes
    raw = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
    raw[:, 0] = 2                                               # filter type 2: Up
    raw[:1, 1:] = rows[:1]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:], dtype=np.uint8)   # mod 256, as PNG says
    colour = 2 if image.mode == "RGB" else 0
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
            + _chunk(b"IDAT", _deflate.compress(raw, level)) + _chunk(b"IEND", b""))   # raw: no copy


def save_png(path: Path, image: Image.Image) -> None:
    """Save a PIL image as PNG (see `encode_png`), atomically."""
    data = encode_png(image)
    write_atomic(path, lambda f: f.write(data))


def save_image(path: Path, image: Image.Image, fmt: str = "png") -> None:
    """Save a PIL image as `fmt` (a key of FORMATS), atomically; `path` keeps the suffix it has."""
    options = FORMATS[fmt][1]
    if options is None:
        save_png(path, image)
    else:
        write_atomic(path, lambda f: image.save(f, **options))


def save_pixels(path: Path, picture: Any, fmt: str = "png") -> str:
    """Save an (H, W, 3) uint8 torch tensor as `fmt`, atomically: JPEG on a CUDA tensor by the GPU's
    encoder (`torchvision.io.encode_jpeg`, quality as FORMATS says), anything else through the host
    (`save_image`). Returns the encoder used ("nvjpeg" or "host")."""
    if fmt == "jpg" and getattr(picture, "is_cuda", False):
        import warnings
        from torchvision.io import encode_jpeg
        with warnings.catch_warnings():            # torchvision ≥ 0.29 says it moves to TorchCodec
            warnings.simplefilter("ignore")
            data = encode_jpeg(picture.permute(2, 0, 1).contiguous(), quality=FORMATS["jpg"][1]["quality"])
        raw = data.cpu().numpy().tobytes()
        write_atomic(path, lambda f: f.write(raw))
        return "nvjpeg"
    save_image(path, Image.fromarray(picture.cpu().numpy(), "RGB"), fmt)
    return "host"


def _npz(f: io.BufferedWriter, arrays: dict[str, np.ndarray]) -> None:
    """What np.savez_compressed writes, with fixed member times (np.load reads it the same)."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays to an .npz (compressed, reproducible bytes), atomically."""
    write_atomic(path, lambda f: _npz(f, arrays))


def strict(obj: Any) -> Any:
    """`obj` with every NaN and ±Inf float replaced by None: strict JSON parsers refuse bare NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def save_json(path: Path, obj: Any) -> None:
    """Save strict JSON (UTF-8, indented; no NaN), atomically."""
    text = json.dumps(strict(obj), indent=2, ensure_ascii=False, allow_nan=False)
    data = text.encode("utf-8", "backslashreplace") + b"\n"   # a stray surrogate never aborts a save
    write_atomic(path, lambda f: f.write(data))
