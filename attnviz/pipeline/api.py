"""`analyse`: maps and predictions for files, folders or PIL images, in memory (no files written)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from attnviz.backbones import Backbone
from attnviz.errors import AttnvizError
from attnviz.images import ImageSource, discover, to_rgb
from attnviz.pipeline.analyser import Analyser, decode
from attnviz.pipeline.checks import unusable
from attnviz.results import Result
from attnviz.settings import check

__all__ = ["analyse", "analyse_with", "check_batch_size"]


def check_batch_size(batch_size: Any) -> int:
    """A batch size is a whole number ≥ 1 (one line otherwise)."""
    check("batch_size", batch_size)          # the schema's limit (the CLI's --batch-size)
    return batch_size


def _pil_result(n: int, image: Image.Image) -> tuple[Result, Image.Image | None]:
    """A Result for the n-th input given as a PIL image; an unusable one is an error Result."""
    r = Result(f"<image {n}>", Path(f"<image {n}>"), f"image_{n}")
    try:
        rgb = to_rgb(image)
        rgb.load()
        if rgb.width < 1 or rgb.height < 1:
            raise ValueError("it has no pixels (0×0)")
    except Exception as e:  # noqa: BLE001  (closed, truncated, odd modes: one error Result each)
        r.status, r.error = "error", f"unusable image: {' '.join(str(e).split()) or type(e).__name__}"
        return r, None
    r.size = rgb.size
    return r, rgb


def analyse(images: str | Path | Image.Image | Sequence[str | Path | Image.Image],
            backbone: str | Backbone = "resnet50", kinds: Sequence[str] | None = None, *,
            batch_size: int = 8, **options: Any) -> list[Result]:
    """Maps and predictions for image files, folders or PIL images, in input order (no files written)."""
    check_batch_size(batch_size)
    items = _items(images)
    return analyse_with(Analyser(backbone, kinds, **options), items, batch_size)


def _items(images: Any) -> list[str | Path | Image.Image]:
    items = [images] if isinstance(images, (str, Path, Image.Image)) else list(images)
    for item in items:
        if not isinstance(item, (str, Path, Image.Image)):
            raise AttnvizError(f"images: expected paths or PIL images, got {type(item).__name__}")
    return items


def analyse_with(analyser: Analyser, images: Any, batch_size: int = 8, keep_images: bool = False,
                 targets: Sequence[Any] | None = None) -> list[Result]:
    """`analyse` with a ready Analyser; `keep_images`: each Result keeps its decoded image (to draw);
    `targets`: one class (index or name) per image, in input order."""
    check_batch_size(batch_size)
    items = _items(images)
    units: list[ImageSource | Image.Image] = []      # PIL images, and every file each path holds
    for item in items:
        units += [item] if isinstance(item, Image.Image) else discover([item])
    if targets is not None and len(targets) != len(units):
        raise AttnvizError(f"targets: {len(targets)} for {len(units)} images; give one per image")
    results: list[Result] = []
    for k in range(0, len(units), batch_size):
        chunk = units[k:k + batch_size]
        loaded, good = decode([u for u in chunk if isinstance(u, ImageSource)])
        files = iter(loaded)
        batch: list[Result] = []
        asked: dict[int, Any] = {}
        for n, u in enumerate(chunk, start=k):
            if isinstance(u, Image.Image):
                r, rgb = _pil_result(n, u)
                if rgb is not None:
                    good.append((r, rgb))
                batch.append(r)
            else:
                batch.append(next(files))
            if targets is not None:
                asked[id(batch[-1])] = targets[n]
        per_image = [(asked[id(r)],) for r, _ in good] if targets is not None else None
        for (r, im), (preds, maps) in zip(good, analyser.analyse_batch([im for _, im in good], targets=per_image)):
            r.predictions, r.maps = preds, maps
            problem = unusable(r)                   # NaN/Inf, --query outside: as `run` records them
            if problem:
                r.status, r.error, r.maps, r.predictions = "error", problem, [], []
            if keep_images:
                r.image = im
        results += batch
    return results
