"""`--engine ray`: the same run on a Ray cluster (Ray Data streams the images through an actor pool).

The driver discovers the images, plans the run (resume, lock) and writes the manifest; each actor
loads the backbone once, decodes, analyses and writes its images' files under OUT (a folder every
node sees: NFS or the like) and returns their manifest records. A bad image is an error record,
never a failed task; a worker that dies has its batch retried by Ray.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from attnviz.errors import AttnvizError
from attnviz.images import ImageSource
from attnviz.report.integrity import file_sizes
from attnviz.report.outputs import Style, image_entry

__all__ = ["RayOptions", "ray_records"]

RETRIES = 3        # a dead actor is restarted, and its batch retried, this many times


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: `address` (None: a local cluster on this machine; "auto": the running
    one), `workers` (actors; None: one per CPU of the cluster), `gpus_per_worker` (may be a fraction)."""

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        """One-line errors for sizes Ray cannot schedule."""
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise AttnvizError(f"--workers {self.workers!r}: use a whole number ≥ 1")
        if not (isinstance(self.gpus_per_worker, (int, float)) and self.gpus_per_worker >= 0):
            raise AttnvizError(f"--gpus-per-worker {self.gpus_per_worker!r}: use a number ≥ 0")


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise AttnvizError('--engine ray needs the optional extra: pip install -e ".[ray]"') from None
    return ray


def _rows(sources: list[ImageSource], kept: Mapping[str, Any], batch_size: int) -> list[dict[str, Any]]:
    """One row per batch of the local engine, resumed images included (the same images together
    give the same numbers; batches of resumed images only are left out): paths as hex of their
    bytes (any encoding survives), the rest as text, in one JSON string."""
    chunks = [sources[i:i + batch_size] for i in range(0, len(sources), batch_size)]
    return [{"batch": json.dumps([[os.fsencode(s.path).hex(), s.source, s.output, s.error, s.source_bytes,
                                   s.output in kept] for s in chunk])}
            for chunk in chunks if any(s.output not in kept for s in chunk)]


def _sources(row: str) -> tuple[list[ImageSource], dict[str, Any]]:
    items = json.loads(row)
    sources = [ImageSource(Path(os.fsdecode(bytes.fromhex(p))), s, o, e, b) for p, s, o, e, b, _ in items]
    return sources, {it[2]: {} for it in items if it[5]}


class _Worker:
    """One actor: the backbone loaded once, then batch after batch of images written under OUT."""

    def __init__(self, backbone: Any, kinds: Any, config: Any, out: str, style: Style,
                 prompts: dict, boxes: dict, faithfulness: bool, old: dict, pixel_budget: int,
                 threads: int | None) -> None:
        import torch

        from attnviz.pipeline.analyser import Analyser
        if threads:       # a local cluster: the driver's thread count, so that sums add up alike
            torch.set_num_threads(threads)
        self.analyser = Analyser(backbone, kinds, config)
        self.args = (Path(out), style, prompts, boxes, faithfulness, old)
        self.pixel_budget = pixel_budget

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from attnviz.pipeline.batch import aligned_batches, process_batch
        out, style, prompts, boxes, faithful, old = self.args
        records = []
        for row in batch["batch"]:
            sources, kept = _sources(str(row))
            for loaded, slots in aligned_batches(sources, kept, len(sources), self.pixel_budget):
                for r, files in process_batch(self.analyser, loaded, slots, out, style, prompts, boxes,
                                              faithful, old):
                    entry = image_entry(r, style.ext)         # --format: the maps' real file names
                    if files is not None:
                        entry["files"] = files
                        entry["file_bytes"] = file_sizes(out / r.output, files)
                    records.append(json.dumps(entry))
        return {"record": np.array(records, dtype=object)}


def ray_records(backbone: Any, analyser: Any, sources: list[ImageSource], kept: Mapping[str, Any], out: Path,
                style: Style, batch_size: int,
                prompts: Mapping[str, list[str]], boxes: Mapping[str, list], faithfulness: bool,
                old: Mapping[str, dict[str, Any]], pixel_budget: int, options: RayOptions,
                on_ready: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
    """Stream the manifest records of the images of `sources` not `kept`, computed by a Ray actor
    pool in the local engine's batches (pixel-budget splits happen inside each), as they complete.

    `backbone` is what the run was given (a name, or a Backbone that Ray pickles to each actor)."""
    ray = _ray()
    if not analyser.backbone.pretrained and analyser.config.seed is None and isinstance(backbone, str):
        raise AttnvizError("--engine ray with random weights needs --seed, so that every worker builds "
                           "the same model")
    started = not ray.is_initialized()
    if started:
        ray.init(address=options.address, ignore_reinit_error=True, log_to_driver=False,
                 logging_level=logging.ERROR, **({"include_dashboard": False} if options.address is None else {}))
    logging.getLogger("ray.data").setLevel(logging.ERROR)     # its INFO lines would break the bar
    try:
        workers = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = False
        rows = _rows(sources, kept, batch_size)
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
        done = dataset.map_batches(
            _Worker, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=options.gpus_per_worker, num_cpus=1,
            fn_constructor_kwargs={"backbone": backbone, "kinds": [k.name for k in analyser.kinds],
                                   "config": analyser.config, "out": str(out), "style": style,
                                   "prompts": dict(prompts), "boxes": dict(boxes),
                                   "faithfulness": faithfulness, "old": dict(old),
                                   "pixel_budget": pixel_budget,
                                   "threads": torch.get_num_threads() if options.address is None else None},
            max_restarts=RETRIES, max_task_retries=RETRIES)
        if on_ready:
            on_ready()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="ray")        # sizing advice, not the user's concern
            for row in done.iter_rows():
                yield json.loads(str(row["record"]))
    finally:
        if started:
            ray.shutdown()
