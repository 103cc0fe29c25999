"""Batches and the work every engine shares: lay the images out as one uninterrupted run would,
analyse one batch (one forward pass) and write its files."""
from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Union

from PIL import Image

import attnviz.pipeline.checks as checks
from attnviz.errors import AttnvizError
from attnviz.images import ImageSource
from attnviz.pipeline.analyser import Analyser, decode
from attnviz.pipeline.outdir import entry_files
from attnviz.report.outputs import Style, write_outputs
from attnviz.results import Result

__all__ = ["FATAL", "aligned_batches", "analysed", "write_one", "written_or_error", "process_batch",
           "remove_files", "stop"]

# the disk or the folder, not the image: the run cannot go on (exit 2, naming the path)
FATAL = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}

Slot = Union[Result, ImageSource]        # an image to compute (its Result), or a resumed one (its source)


def aligned_batches(sources: list[ImageSource], kept: Mapping[str, dict[str, Any]], batch_size: int,
                    budget: int) -> Iterator[tuple[list[Result], list[tuple[Slot, Image.Image]]]]:
    """Decoded batches laid out over every source as one uninterrupted run lays them out (at most
    `batch_size` files and `budget` decoded pixels; an image over the budget alone), resumed images
    included: each forward pass then has the same batch size, so its maps the same bits (CPU kernels
    round differently at other batch sizes). A resumed image in a batch with others to compute is
    decoded again to fill its slot (never written); batches of resumed images only are skipped.
    Yields (results to record, (result or resumed source, image) in slot order)."""
    slots: list[tuple[Slot, Image.Image | None, int]] = []      # (to compute | kept, image, pixels)
    for src in sources:
        if src.output in kept:
            w, h = kept[src.output].get("size") or (0, 0)
            slot: tuple[Slot, Image.Image | None, int] = (src, None, w * h)
        else:
            (r,), good = decode([src])
            image = good[0][1] if good else None
            slot = (r, image, image.width * image.height if image else 0)
        if slot[2] and any(s[2] for s in slots) and sum(s[2] for s in slots) + slot[2] > budget:
            yield from _fill(slots)
            slots = []
        slots.append(slot)
        if len(slots) >= batch_size:
            yield from _fill(slots)
            slots = []
    yield from _fill(slots)


def _fill(slots: list[tuple[Slot, Image.Image | None, int]]
          ) -> Iterator[tuple[list[Result], list[tuple[Slot, Image.Image]]]]:
    loaded = [s for s, _, _ in slots if isinstance(s, Result)]
    if not loaded:
        return
    compute = any(image is not None for _, image, _ in slots)
    batch: list[tuple[Slot, Image.Image]] = []
    for s, image, _ in slots:
        if image is not None:
            batch.append((s, image))
        elif isinstance(s, ImageSource) and compute:
            batch += [(s, im) for _, im in decode([s])[1]]
    yield loaded, batch


def analysed(analyser: Analyser, loaded: list[Result], batch: list[tuple[Slot, Image.Image]],
             prompts: Mapping[str, list[str]], faithful: bool) -> Iterator[tuple[Result, Image.Image | None]]:
    """Analyse one decoded batch (one forward pass): yields each Result of `loaded` in input order
    with its image to draw, or None when it is an error record (undecodable, NaN, --query outside).
    `batch` may hold resumed images (sources) that only fill their slot."""
    images = [im for _, im in batch]
    per_image = [list(prompts.get(s.source, ())) for s, _ in batch] if prompts else None
    outcomes = dict(zip((id(s) for s, _ in batch), analyser.analyse_batch(images, per_image) if batch else []))
    image_of = {id(s): im for s, im in batch}
    for r in loaded:
        if id(r) not in outcomes:
            yield r, None                              # decoding failed: an error record
            continue
        r.predictions, r.maps = outcomes[id(r)]
        problem = checks.unusable(r)
        if problem:
            r.status, r.error, r.maps, r.predictions = "error", problem, [], []
            yield r, None
            continue
        if faithful:
            scores = checks.faithfulness(analyser, image_of[id(r)], r.maps)
            for m in r.maps:
                m.meta["faithfulness"] = scores[m.name]
        yield r, image_of[id(r)]


def write_one(out: Path, r: Result, image: Image.Image, style: Style, boxes: Mapping[str, list],
              old: Mapping[str, dict[str, Any]], into: list[str] | None = None, device: Any = None) -> list[str]:
    """Write one image's files (and remove the ones an earlier run with other settings left); their
    names as the writer wrote them, also appended to `into` (a writer thread's result). `device`: the
    model's device (CUDA: the overlays are drawn and JPEG-encoded there)."""
    files = write_outputs(out, r, image, style, boxes.get(r.source, ()), device=device)
    if into is not None:
        into += files
    if r.output in old:                                # outputs these settings no longer produce
        remove_files(out, r.output, set(entry_files(old[r.output])) - set(files))
    return files


def written_or_error(r: Result, error: BaseException | None, out: Path, files: list[str] | None
                     ) -> list[str] | None:
    """The files of a written image, as `write_one` wrote them (None for an error record); a full or
    read-only disk stops the run."""
    if error is None:
        return files if r.status == "ok" else None
    if not isinstance(error, OSError):
        raise error
    if error.errno in FATAL:
        raise stop(error, out / r.output) from None
    r.status, r.error = "error", f"cannot write outputs: {error.strerror or error}"
    return None


def process_batch(analyser: Analyser, loaded: list[Result], batch: list[tuple[Slot, Image.Image]], out: Path,
                  style: Style, prompts: Mapping[str, list[str]], boxes: Mapping[str, list], faithful: bool,
                  old: Mapping[str, dict[str, Any]]) -> Iterator[tuple[Result, list[str] | None]]:
    """`analysed` and `write_one` in this thread: each Result with its files, as soon as they are on disk."""
    for r, image in analysed(analyser, loaded, batch, prompts, faithful):
        error, files = None, None
        if image is not None:
            try:
                files = write_one(out, r, image, style, boxes, old)
            except Exception as e:  # noqa: BLE001  (sorted by written_or_error)
                error = e
        yield r, written_or_error(r, error, out, files)


def stop(e: OSError, where: Path) -> AttnvizError:
    """The disk or the folder, not the image: the run stops in one line naming the path (exit 2)."""
    return AttnvizError(f"cannot write {e.filename or where}: {e.strerror or e}; "
                        f"manifest.json lists the images written before it (rerun to resume)")


@contextlib.contextmanager
def stopping_at(where: Path) -> Iterator[None]:
    """A disk or folder condition (FATAL) inside the block stops the run in one line naming `where`
    (`stop`); any other OSError goes on as it is."""
    try:
        yield
    except OSError as e:
        raise (stop(e, where) if e.errno in FATAL else e) from None


def remove_files(out: Path, output: str, names: Iterable[str]) -> None:
    """Delete an earlier record's files, then its folders left empty (a rerun would otherwise take
    them for someone else's); never outside OUT, whatever a (hand-edited) manifest says."""
    inside = out.resolve()
    for name in names:
        path = out / output / name
        with contextlib.suppress(OSError, ValueError):
            if path.resolve().is_relative_to(inside):
                path.unlink()
    folder = out / output
    with contextlib.suppress(OSError, ValueError):
        while folder.resolve() != inside and folder.resolve().is_relative_to(inside) and not folder.is_symlink():
            folder.rmdir()                       # only when empty (OSError otherwise: it stays)
            folder = folder.parent
