"""Find input images on disk and decode them to RGB."""
from __future__ import annotations

import hashlib
import os
import stat
import warnings
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from attnviz.errors import AttnvizError, ImageError, one_line
from attnviz.text import kind_of, printable, raw_bytes

__all__ = ["ImageSource", "RESAMPLING", "check_inputs", "discover", "identity", "load_image", "to_rgb"]

# Documentation that travels with photo folders; skipped inside folders, never when named directly.
_SIDECARS = {"readme", "credits", "license", "licence", "copying", "notice", "authors"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WHITE = (255, 255, 255, 255)

# the resampling names of timm's, transformers' and open_clip's configs (Backbone.interpolation), as PIL filters
RESAMPLING = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
              "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
              "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


@dataclass(frozen=True)
class ImageSource:
    """One input file: where to read it and how to name it."""

    path: Path  # absolute path to read
    source: str  # posix path relative to its input root, shown to the user (always valid UTF-8)
    output: str  # posix output folder relative to OUT (always valid UTF-8)
    error: str | None = None  # set when the entry could not even be listed (unreadable folder, broken link)
    source_bytes: str | None = None  # hex of the name's bytes when they are not UTF-8 (source shows \xNN)


def check_inputs(paths: Sequence[str | Path]) -> None:
    """Every input path names something that exists (one line otherwise); '' is never "here"."""
    if not paths:
        raise AttnvizError("no input given: give image files or folders that contain them")
    for given in paths:
        if not str(given).strip():
            raise AttnvizError("an input path is empty (''); give image files or folders")
        if not Path(given).exists():
            raise AttnvizError(f"no such file or folder: {printable(str(given))}")


def discover(paths: Sequence[str | Path], skip: Callable[[Path], bool] | None = None,
             reserved: Collection[str] = ()) -> list[ImageSource]:
    """List candidate image files under the given files and folders, in a stable order.

    `skip(path)` drops files before output names are chosen (the runner's own outputs);
    `reserved`: top-level names no output folder may take (OUT's own files: index.html …)."""
    check_inputs(paths)
    single_folder = len(paths) == 1 and Path(paths[0]).is_dir()
    roots = [os.path.realpath(p) for p in paths if Path(p).is_dir()]   # links may lead only within these
    found: list[tuple[Path, str, str | None]] = []
    for given in paths:
        p = Path(os.path.abspath(given))
        if p.is_dir():
            prefix = "" if single_folder else (p.name or "root") + "/"
            found += [(f, prefix + rel, err) for f, rel, err in _scan_folder(p, roots)]
        else:                    # a FIFO or device given by name: its own error, never opened
            mode = p.stat().st_mode
            found.append((p, p.name, None if stat.S_ISREG(mode) else f"{kind_of(mode)}, not a regular file: not read"))
    if skip is not None:
        found = [item for item in found if not skip(item[0])]
    seen: set[str] = set()
    unique = []
    for f, source, err in found:
        real = os.path.realpath(f)
        if err is not None or real not in seen:       # error entries are listed each (two links to /)
            seen.add(real)
            unique.append((f, source, err))
    if not unique:
        shown = ", ".join(str(p) for p in paths)
        raise AttnvizError(f"no images found in {shown}: give image files or folders that contain them")
    shown = [printable(s) for _, s, _ in unique]        # names in any encoding are data, kept losslessly
    outputs = _output_names([s.replace("\\", "_") for s in shown], reserved)
    return [ImageSource(f, sh, o, err, raw.hex() if (raw := raw_bytes(s)) else None)
            for (f, s, err), sh, o in zip(unique, shown, outputs)]


def _scan_folder(root: Path, roots: Sequence[str]) -> list[tuple[Path, str, str | None]]:
    """(file, relative posix path, error) for every file under root, sorted; hidden and sidecar
    files skipped. An unreadable folder, a broken link, a FIFO or device (never opened), a link to a
    folder outside the given input folders `roots` (never walked: a link to / would walk the whole
    system): each is an entry with an error, never an abort."""
    found: list[tuple[Path, str, str | None]] = []
    visited: set[str] = set()
    links: list[tuple[str, Path]] = []  # symlinked folders, walked after the real tree

    def walk(start: Path, start_rel: str) -> None:
        stack = [(start, start_rel)]
        while stack:
            folder, rel = stack.pop()
            real = os.path.realpath(folder)
            if real in visited:
                continue
            visited.add(real)
            try:
                entries = list(os.scandir(folder))
            except OSError as e:
                if folder == start and start == root:
                    raise AttnvizError(f"cannot read folder {printable(str(folder))}: {e.strerror or e}") from None
                found.append((Path(folder), rel.rstrip("/") or ".", f"cannot read folder ({e.strerror or e})"))
                continue
            for entry in entries:
                if entry.name.startswith(".") or _is_sidecar(entry.name):
                    continue
                entry_rel = rel + entry.name
                try:
                    kind = _entry_kind(entry, roots)
                except OSError as e:                                    # a loop, no permission
                    broken = isinstance(e, FileNotFoundError)
                    found.append((Path(entry.path), entry_rel,
                                  "broken symbolic link" if broken else f"cannot follow it ({e.strerror or e})"))
                    continue
                if kind == "dir":
                    stack.append((Path(entry.path), entry_rel + "/"))
                elif kind == "link":
                    links.append((entry_rel, Path(entry.path)))
                else:
                    found.append((Path(entry.path), entry_rel, kind))      # None: a regular file

    walk(root, "")
    while links:  # real folders win over links to them; links go in name order
        links.sort()
        rel, link = links.pop(0)
        walk(link, rel + "/")
    return sorted(found, key=lambda item: item[1])


def _entry_kind(entry: os.DirEntry, roots: Sequence[str]) -> str | None:
    """"dir", "link" (a linked folder inside the inputs), None (a regular file), or the error of an
    entry that is neither; OSError when it cannot be followed."""
    mode = entry.stat(follow_symlinks=True).st_mode
    if stat.S_ISDIR(mode):
        if not entry.is_symlink():
            return "dir"
        target = os.path.realpath(entry.path)
        if any(os.path.commonpath([target, r]) == r for r in roots):
            return "link"
        return f"link to a folder outside the inputs ({printable(target)}): not followed"
    if stat.S_ISREG(mode):
        return None
    return f"{kind_of(mode)}, not a regular file: not read"


def _is_sidecar(name: str) -> bool:
    """README, CREDITS, LICENSE ... files (any extension) that sit beside photos."""
    return name.split(".", 1)[0].lower() in _SIDECARS


def _safe(name: str) -> str:
    """No output path part may be '', '.' or '..' (a file called '...jpg' must stay inside OUT)."""
    parts = [p if p.strip(".") else p.replace(".", "_") or "_" for p in name.split("/")]
    return "/".join(parts)


def _output_names(sources: list[str], reserved: Collection[str] = ()) -> list[str]:
    """Map sources to unique output folders: stem, then stem_ext, then a numeric suffix; a
    `reserved` name (index.html.png would take OUT/index.html) is treated as taken, like a folder."""
    paths = [PurePosixPath(s) for s in sources]
    names = [_safe(str(p.with_suffix("")) if p.suffix else s) for p, s in zip(paths, sources)]
    exts: dict[str, set[str]] = defaultdict(set)
    for n, p in zip(names, paths):
        exts[n.casefold()].add(p.suffix.lower())
    folders = {str(parent).casefold() for n in names for parent in PurePosixPath(n).parents}
    folders |= {r.casefold() for r in reserved}
    # same stem, different extensions (cat.jpg, cat.png), or a file named like a folder
    clash = [len(exts[n.casefold()]) > 1 or n.casefold() in folders for n in names]
    names = [
        f"{n}_{p.suffix[1:].lower()}" if bad and p.suffix else n
        for n, p, bad in zip(names, paths, clash)
    ]
    taken = {n.casefold() for n in names} | folders
    used: set[str] = set()
    result = []
    for n in names:
        key = n.casefold()
        if key in used or key in folders:
            i = 2
            while f"{n}_{i}".casefold() in taken:
                i += 1
            n = f"{n}_{i}"
            taken.add(n.casefold())
        used.add(n.casefold())
        result.append(n)
    return result


def identity(path: Path) -> dict[str, object] | None:
    """What identifies an input by content: its size and the SHA-256 of all its bytes (read in
    1 MiB pieces, about 0.7 GB/s); None when it cannot be read (decoding then says why)."""
    digest, n = hashlib.sha256(), 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)       # a FIFO never blocks the run
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                n += len(chunk)
    except OSError:
        return None
    return {"bytes": n, "sha256": digest.hexdigest()}


def load_image(path: Path) -> Image.Image:
    """Decode one file fully into an RGB image with EXIF orientation applied."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ImageError(one_line(f"cannot read file: {e.strerror or e}", 200)) from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):     # a FIFO would block, a device never end
        raise ImageError(f"{kind_of(mode)}, not a regular file: not read") from None
    try:
        with warnings.catch_warnings(record=True) as caught, Image.open(path) as im:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            im.load()
            try:
                im = ImageOps.exif_transpose(im)  # returns a copy detached from the file
            except Exception:  # unreadable EXIF: keep the image as stored
                im = im.copy()
        for w in caught:     # Pillow's size warning names no file: say which one
            if issubclass(w.category, Image.DecompressionBombWarning):
                warnings.warn(f"{printable(path.name)}: {w.message}", stacklevel=2)
        return to_rgb(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (cannot identify image file)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(one_line(f"image too large (decompression bomb check): {e}", 200)) from None
    except MemoryError:
        raise ImageError("image too large to decode (out of memory)") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise ImageError(one_line(f"cannot read file: {e.strerror or e}", 200)) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
        raise ImageError(one_line(f"corrupt image: {e or type(e).__name__}", 200)) from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB."""
    if im.mode.startswith("I;16"):
        gray = np.asarray(im).astype(np.float64) / 65535.0 * 255.0
        im = Image.fromarray(np.round(gray).astype(np.uint8), "L")
    elif im.mode in ("I", "F"):
        im = Image.fromarray(_stretch(np.asarray(im).astype(np.float64)), "L")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError:
        raise ImageError(f"unsupported image mode {im.mode}") from None


def _stretch(values: np.ndarray) -> np.ndarray:
    """Scale the finite values' min..max range to 0..255 (non-finite values become 0)."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    lo, hi = values[finite].min(), values[finite].max()
    if hi > lo:
        scaled = (values - lo) / (hi - lo) * 255.0
    else:  # constant image: keep the value if it already fits 0..255
        scaled = np.full(values.shape, np.clip(lo, 0, 255))
    return np.round(np.where(finite, scaled, 0)).astype(np.uint8)
