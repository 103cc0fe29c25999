"""Can a run folder's record be trusted? Each image entry of manifest.json must point inside OUT
(a hand-edited one may not) and its files must be whole: the size recorded when they were written,
and a cheap check of each format's structure (PNG's IEND chunk, JPEG's end marker, WebP's RIFF
length, the npz's zip directory and members). Resume redoes an image that fails; every reader of a
run folder (gallery, summary.csv, compare, evaluate) turns it into a one-line note."""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Sequence

from attnviz.errors import one_line

__all__ = ["MANIFEST_LIMIT", "entry_files", "original_of", "file_sizes", "foreign", "damage", "checked", "checked_each",
           "CheckedView"]

MANIFEST_LIMIT = 1 << 32       # manifest.json: 4 GiB (about 2 KB per image: millions of images)
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"       # the last 12 bytes of every PNG


def entry_files(entry: dict[str, Any]) -> list[str]:
    """The files an image's outputs consist of (relative to its folder); older manifests list maps only."""
    if isinstance(entry.get("files"), list):
        return [str(f) for f in entry["files"]]
    return ["original.png", "grid.png", "maps.npz", *[str(m.get("file")) for m in entry.get("maps") or []
                                                      if isinstance(m, dict)]]


def original_of(entry: dict[str, Any]) -> str:
    """The file of the image itself: original.png, or original.jpg/.webp with --format."""
    return next((f for f in entry_files(entry) if f.startswith("original.")), "original.png")


def file_sizes(folder: Path, files: list[str]) -> dict[str, int]:
    """Bytes of each written file (recorded in the manifest as "file_bytes", checked on resume)."""
    return {f: (folder / f).stat().st_size for f in files}


def _plain(name: Any) -> bool:
    """A file name attnviz writes: one path part, never '.', '..' or empty."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name


def foreign(out: Path, entry: Any) -> str | None:
    """Why an entry does not point inside OUT (a hand-edited or foreign manifest), None when it does."""
    if not isinstance(entry, dict):
        return "not an image record"
    output = entry.get("output")
    if not isinstance(output, str) or not output or "\0" in output:
        return "its output folder is not a name"
    parts = PurePosixPath(output).parts
    if output.startswith(("/", "\\")) or ".." in parts or any("\\" in p for p in parts):
        return f"its output folder {output!r} lies outside the run folder"
    try:
        if not (out / output).resolve().is_relative_to(out.resolve()):
            return f"its output folder {output!r} lies outside the run folder (a link)"
    except (OSError, RuntimeError, ValueError):
        return f"its output folder {output!r} cannot be resolved"
    bad = [f for f in entry_files(entry) if not _plain(f)]
    maps = entry.get("maps") or []
    if not isinstance(maps, list) or not all(isinstance(m, dict) for m in maps):
        return "its maps are not records"
    bad += [m.get("file") for m in maps if "file" in m and not _plain(m.get("file"))]
    return f"it names files outside its folder ({bad[0]!r})" if bad else None


def _whole(path: Path, entry: dict[str, Any]) -> str | None:
    """A cheap structural check of one file by its suffix (reads its ends, or the zip directory)."""
    suffix = path.suffix.lower()
    with open(path, "rb") as f:
        head = f.read(12)
        f.seek(max(0, path.stat().st_size - 12))
        tail = f.read(12)
    if suffix == ".png" and not (head.startswith(b"\x89PNG\r\n\x1a\n") and tail == _IEND):
        return "not a whole PNG"
    if suffix in (".jpg", ".jpeg") and not (head.startswith(b"\xff\xd8") and tail.endswith(b"\xff\xd9")):
        return "not a whole JPEG"
    if suffix == ".webp" and not (head[:4] == b"RIFF" and head[8:12] == b"WEBP"
                                  and struct.unpack("<I", head[4:8])[0] + 8 == path.stat().st_size):
        return "not a whole WebP"
    if suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            return f"not a whole npz ({one_line(e, 60)})"
        keys = [m.get("npz_key") for m in entry.get("maps") or [] if isinstance(m, dict)]
        missing = [k for k in keys if isinstance(k, str) and f"{k}.npy" not in names]
        if missing:
            return f"has no array {missing[0]!r}"
    return None


def damage(out: Path, entry: Any, needs: Sequence[str] | None = None) -> str | None:
    """Why an ok entry cannot be kept or read as it stands (foreign, a file missing, of another size
    than recorded, or not whole), one line; None when its files are whole. `needs`: check only
    these of its files (what a reader reads), default all."""
    problem = foreign(out, entry)
    if problem:
        return problem
    recorded = entry.get("file_bytes") if isinstance(entry.get("file_bytes"), dict) else {}
    for name in entry_files(entry) if needs is None else needs:
        path = out / entry["output"] / name
        try:
            if not path.is_file():
                return f"{name} is missing"
            size = path.stat().st_size
            if name in recorded and recorded[name] != size:
                return f"{name} has {size} bytes, {recorded[name]} when written"
            why = _whole(path, entry)
        except OSError as e:
            return f"{name} cannot be read ({e.strerror or one_line(e, 60)})"
        if why:
            return f"{name} is {why}" if why.startswith("not") else f"{name} {why}"
    return None


def checked(out: Path, images: Any, needs: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """A run's image entries as a reader may use them: a foreign or damaged one (`needs`: the files
    the reader reads, default all) becomes an error record saying why (its files are never read);
    plus one note per such entry."""
    kept: list[dict[str, Any]] = []
    notes: list[str] = []
    for entry, note in checked_each(out, images if isinstance(images, list) else [], needs):
        kept.append(entry)
        if note:
            notes.append(note)
    return kept, notes


def checked_each(out: Path, images: Iterable[Any], needs: Sequence[str] | None = None
                 ) -> Iterator[tuple[dict[str, Any], str | None]]:
    """`checked` one entry at a time: (the entry as a reader may use it, the note about it or None)."""
    for entry in images:
        problem = foreign(out, entry)
        if problem is None and entry.get("status") == "ok":
            why = damage(out, entry, needs)
            problem = f"files damaged: {why}; rerun `attnviz run` to redo it" if why else None
        if problem is None:
            yield entry, None
            continue
        source = str(entry.get("source", "?")) if isinstance(entry, dict) else "?"
        output = "" if foreign(out, entry) else entry["output"]      # a foreign one is never shown
        yield ({"source": source, "output": output, "status": "error", "error": problem,
                "size": None, "predictions": [], "maps": []}, f"{source}: {problem}")


class CheckedView:
    """A run's entries, `checked` again on every iteration: a reader may pass over them twice without
    holding them all (a manifest's `Spooled` entries, or a list)."""

    def __init__(self, out: Path, images: Iterable[Any], needs: Sequence[str] | None = None) -> None:
        self.out, self.images, self.needs = out, images, needs

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (entry for entry, _ in checked_each(self.out, self.images, self.needs))
