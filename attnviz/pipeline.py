"""Images → backbone → probes → kinds → (render → report), in batches of one forward pass each."""
from __future__ import annotations

import contextlib
import difflib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch
from PIL import Image

from attnviz.backbones import Backbone, load_backbone
from attnviz.backbones.clip_core import VARIANTS
from attnviz.errors import AttnvizError, ImageError
from attnviz.images import ImageSource, discover, load_image, to_rgb
from attnviz.kinds import Batch, get_kinds
from attnviz.probes.attention import AttentionCapture
from attnviz.probes.base import LayerTap
from attnviz.probes.gates import GateTap
from attnviz.probes.locate import Inventory, locate
from attnviz.types import AttentionMap, Options, Prediction, Result

__all__ = ["Analyser", "analyse", "run", "RunReport", "inspect"]

MANIFEST_EVERY_S = 5.0   # a long run rewrites manifest.json at most this often (and at the end)


class Analyser:
    """A backbone and the chosen kinds: every kind of a batch from ONE forward pass."""

    def __init__(self, backbone: str | Backbone = "resnet50", kinds: Sequence[str] | None = None, *,
                 weights: str = "DEFAULT", layer: str | None = None, texts: Sequence[str] = (),
                 query: tuple[float, float] | None = None, input_size: int | None = None,
                 device: str = "cpu", seed: int | None = None, tau: float = 0.1, top: int = 5,
                 self_layer: str | None = None, per_word: bool = False, contrast: bool = False,
                 variant: str = "value", native: bool = True) -> None:
        self.backbone = backbone if isinstance(backbone, Backbone) else load_backbone(
            backbone, weights, input_size=input_size, device=device, seed=seed)
        bb = self.backbone
        # native=False: derive every kind from --layer even where the model has attention modules
        self.inventory = inspect(bb)[1] if native else Inventory()
        self.layer = self._layer(layer or bb.default_layer)
        attention = [a.name for a in self.inventory.self_attention()]
        if self_layer is not None and self_layer not in attention:
            close = difflib.get_close_matches(self_layer, attention, n=5, cutoff=0.5)
            raise AttnvizError(f"--self-layer {self_layer!r} is not an attention module of {bb.name}; "
                               + (f"close: {', '.join(close)}" if close else f"see `attnviz inspect {bb.name}`"))
        if variant not in VARIANTS:
            raise AttnvizError(f"--clip-variant {variant!r}: use one of {', '.join(VARIANTS)}")
        self.options = Options(tau=tau, query=query, texts=tuple(texts), self_layer=self_layer,
                               per_word=per_word, contrast=contrast, variant=variant)
        bb.prepare(self.options)
        self.notes: list[str] = []
        self.kinds = []
        for kind in get_kinds(list(kinds) if kinds is not None else None):
            reason = kind.unavailable(bb, self.options)
            if reason and kinds is not None:
                raise AttnvizError(f"kind {kind.name!r}: {reason}")
            if reason:
                self.notes.append(f"{kind.name} skipped: {reason}")
                continue
            self.kinds.append(kind)
        self.plans = {k.name: k.prepare(bb, self.options) for k in self.kinds}
        self.tapped = list(dict.fromkeys(n for k in self.kinds for n in k.layers(bb, self.layer)))
        names = {k.name for k in self.kinds}
        self.gates = self.inventory.gates if names & {"channel", "spatial", "mixed-serial"} else []
        self.attention = list(dict.fromkeys(n.split("#")[0] for n in attention)) if "self" in names else []
        self.heads = [self_layer or attention[-1]] if attention else []   # per-head maps: one layer
        self.top = top
        self.forwards = 0   # forward passes run so far (one per batch)
        self.settings = dict(layer=layer, texts=texts, query=query, tau=tau, top=top,
                             self_layer=self_layer, per_word=per_word, contrast=contrast,
                             variant=variant, native=native)   # to build a twin on another model

    def _layer(self, name: str) -> str:
        """Check --layer; a gate's sigmoid module stands for its gate block."""
        bb = self.backbone
        for g in self.inventory.gates:
            if name == g.activation:
                name = g.name
        if name not in bb.layers or bb.layers[name].grid == (1, 1):
            close = difflib.get_close_matches(name, bb.layers, n=5, cutoff=0.5)
            hint = f"close: {', '.join(close)}" if close else f"see `attnviz layers {bb.name}`"
            raise AttnvizError(f"--layer {name!r} is not a feature map of {bb.name}; {hint}")
        return name

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The whole image squashed to input_size², scaled to [0, 1], normalised: (B, 3, S, S)."""
        s = self.backbone.input_size
        arrays = [torch.frombuffer(bytearray(to_rgb(im).resize((s, s), Image.Resampling.BILINEAR).tobytes()),
                                   dtype=torch.uint8).reshape(s, s, 3) for im in images]
        x = torch.stack(arrays).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(self.backbone.mean)[None, :, None, None]
        std = torch.tensor(self.backbone.std)[None, :, None, None]
        return ((x - mean) / std).to(self.backbone.device)

    @torch.no_grad()
    def analyse_batch(self, images: Sequence[Image.Image], prompts: list[list[str]] | None = None
                      ) -> list[tuple[list[Prediction], list[AttentionMap]]]:
        """Predictions and maps for a batch of RGB images, from one forward pass.

        `prompts`: one list per image, for text backbones that take per-image prompts (demo).
        """
        if not images:
            return []
        bb = self.backbone
        x = self.preprocess(images)
        with contextlib.ExitStack() as probes:
            tap = probes.enter_context(LayerTap(bb.model, self.tapped))
            gates = probes.enter_context(GateTap(bb.model, self.gates))
            attn = probes.enter_context(AttentionCapture(bb.model, self.attention, self.heads)) \
                if self.attention else None
            logits, extras = bb.forward(x, prompts)
        self.forwards += 1
        batch = Batch(bb, self.layer, tap.outputs, logits, [im.size for im in images],
                      self.options, self.plans, inventory=self.inventory, gates=gates.outputs,
                      gate_inputs=gates.inputs, attention=attn.maps if attn else {},
                      windows=attn.windows if attn else {}, extras=extras)
        maps: list[list[AttentionMap]] = [[] for _ in images]
        for kind in self.kinds:
            for i, per_image in enumerate(kind.compute(batch)):
                maps[i].extend(per_image)
        return [(self._predictions(row), m) for row, m in zip(logits, maps)]

    def _predictions(self, logits: torch.Tensor) -> list[Prediction]:
        probs = torch.softmax(logits.float(), dim=0)
        top = probs.topk(min(self.top, len(probs)))
        cats = self.backbone.categories
        return [Prediction(int(i), cats[int(i)], round(float(p), 6)) for p, i in zip(*top)]


def inspect(backbone: str | Backbone, weights: str = "none", *, input_size: int | None = None,
            device: str = "cpu") -> tuple[Backbone, Inventory]:
    """A backbone and every attention module one forward pass finds in it."""
    bb = backbone if isinstance(backbone, Backbone) else load_backbone(
        backbone, weights, input_size=input_size, device=device)
    example = torch.zeros(1, 3, bb.input_size, bb.input_size, device=bb.device)
    return bb, locate(bb.model, example)


def _batches(sources: list[ImageSource], size: int) -> Iterator[list[ImageSource]]:
    for i in range(0, len(sources), size):
        yield sources[i:i + size]


def _load(sources: list[ImageSource]) -> tuple[list[Result], list[tuple[Result, Image.Image]]]:
    """Decode a batch; unusable files become error Results, the rest go on."""
    results, good = [], []
    for src in sources:
        r = Result(source=src.source, path=src.path, output=src.output)
        if src.error:
            r.status, r.error = "error", src.error
            results.append(r)
            continue
        try:
            image = load_image(src.path)
            r.size = image.size
            good.append((r, image))
        except ImageError as e:
            r.status, r.error = "error", str(e)
        results.append(r)
    return results, good


def analyse(images: str | Path | Image.Image | Sequence[str | Path | Image.Image],
            backbone: str | Backbone = "resnet50", kinds: Sequence[str] | None = None, *,
            batch_size: int = 8, **options) -> list[Result]:
    """Maps and predictions for image files, folders or PIL images, in input order (no files written)."""
    items = [images] if isinstance(images, (str, Path, Image.Image)) else list(images)
    analyser = Analyser(backbone, kinds, **options)
    units: list[ImageSource | Image.Image] = []      # PIL images, and every file each path holds
    for item in items:
        units += [item] if isinstance(item, Image.Image) else discover([item])
    results: list[Result] = []
    for k in range(0, len(units), batch_size):
        chunk = units[k:k + batch_size]
        loaded, good = _load([u for u in chunk if isinstance(u, ImageSource)])
        files = iter(loaded)
        batch: list[Result] = []
        for n, u in enumerate(chunk, start=k):
            if isinstance(u, Image.Image):
                r = Result(f"<image {n}>", Path(f"<image {n}>"), f"image_{n}", size=u.size)
                good.append((r, to_rgb(u)))
                batch.append(r)
            else:
                batch.append(next(files))
        for (r, _), (preds, maps) in zip(good, analyser.analyse_batch([im for _, im in good])):
            r.predictions, r.maps = preds, maps
        results += batch
    return results


@dataclass
class RunReport:
    """What `run` did: results (maps dropped after writing), where, how long."""

    out: Path
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    forwards: int = 0
    rankings: dict = field(default_factory=dict)   # prompt -> images best matching it first

    @property
    def failed(self) -> list[Result]:
        """Results whose status is "error"."""
        return [r for r in self.results if r.status != "ok"]


def run(paths: Sequence[str | Path], out: str | Path, *, backbone: str | Backbone = "resnet50",
        kinds: Sequence[str] | None = None, batch_size: int = 8, style=None,
        command: str = "", on_start: Callable[[int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        prompts: Mapping[str, list[str]] | None = None,
        boxes: Mapping[str, list[Sequence[float]]] | None = None, faithfulness: bool = False,
        sanity: bool = False, workers: int | None = None, **options) -> RunReport:
    """Analyse images and write every output plus OUT/manifest.json; see the README for the layout.

    `prompts` and `boxes` are keyed by an image's `source`: per-image prompts for text backbones
    that take them, and ground-truth boxes drawn on its grid. `faithfulness` adds deletion and
    insertion AUCs to every map; `sanity` compares the first batch's maps with a randomised model's.
    `workers` threads draw and write each batch's files while the next batch runs (None: one per
    core; 0: in this thread); an image enters the manifest once its files are complete.
    """
    from attnviz.report.manifest import Manifest
    from attnviz.report.outputs import Style
    from attnviz.report.writer import Writer

    style = style or Style()
    out = Path(out)
    sources = _check_out(out, discover(paths), paths)
    analyser = Analyser(backbone, kinds, **options)
    manifest = Manifest(out, analyser, style, batch_size, command, options)
    report = RunReport(out, notes=list(analyser.notes))
    t0 = time.perf_counter()
    if on_start:
        on_start(len(sources))
    try:
        with Writer(workers) as writer:
            for i, batch in enumerate(_batches(sources, batch_size)):
                _write_batch(analyser, batch, out, style, prompts or {}, boxes or {}, faithfulness,
                             manifest if sanity and i == 0 else None, writer)
                _record(writer.finished(), manifest, report)
                manifest.save(every=MANIFEST_EVERY_S)
                if on_batch:
                    on_batch(len(batch))
            _record(writer.drain(), manifest, report)
    finally:   # also on Ctrl-C: the manifest lists every image written so far
        manifest.save(seconds=time.perf_counter() - t0)
    report.seconds = time.perf_counter() - t0
    report.forwards = analyser.forwards
    report.rankings = manifest.rankings()
    report.notes += [n for n in analyser.backbone.notes if n not in report.notes]
    return report


def _record(done, manifest, report: RunReport) -> None:
    """Results whose files are written (in input order): into the manifest and the report."""
    for r, error in done:
        if isinstance(error, OSError):
            r.status, r.error = "error", f"cannot write outputs: {error}"
        elif error is not None:
            raise error
        manifest.add(r)
        r.maps = []                      # written; keep memory flat on big folders
        report.results.append(r)


def _write_batch(analyser: Analyser, batch: list[ImageSource], out: Path, style,
                 prompts: Mapping[str, list[str]], boxes: Mapping[str, list], faithful: bool,
                 sanity_to, writer) -> None:
    """Decode, analyse (one forward) and queue one batch's files on `writer`, in input order."""
    from attnviz import checks
    from attnviz.report.outputs import write_outputs
    loaded, good = _load(batch)
    images_of = {id(r): im for r, im in good}
    if not good:
        for r in loaded:
            writer.submit(None, tag=r)
        return
    images = [im for _, im in good]
    per_image = [list(prompts.get(r.source, ())) for r, _ in good] if prompts else None
    if sanity_to:
        sanity_to.sanity = checks.sanity(analyser, images, per_image)
    for (r, image), (preds, maps) in zip(good, analyser.analyse_batch(images, per_image)):
        r.predictions, r.maps = preds, maps
        if faithful:
            scores = checks.faithfulness(analyser, image, maps)
            for m in maps:
                m.meta["faithfulness"] = scores[m.name]
    for r in loaded:
        if id(r) in images_of:
            writer.submit(write_outputs, out, r, images_of[id(r)], style, boxes.get(r.source, ()), tag=r)
        else:
            writer.submit(None, tag=r)


def _check_out(out: Path, sources: list[ImageSource], paths: Sequence[str | Path]) -> list[ImageSource]:
    """Refuse an OUT that is a file; never read our own outputs back as inputs.

    Files inside OUT are skipped unless they were asked for by a path that itself lies in OUT.
    """
    if out.exists() and not out.is_dir():
        raise AttnvizError(f"-o {out}: exists and is not a folder")
    real = lambda p: Path(os.path.realpath(p))   # noqa: E731  (never raises, even on link loops)
    resolved = real(out)
    inside = [real(p) for p in paths if real(p).is_relative_to(resolved)]
    kept = [s for s in sources if not real(s.path).is_relative_to(resolved)
            or any(real(s.path).is_relative_to(p) for p in inside)]
    if not kept:
        raise AttnvizError(f"no images found outside the output folder {out}")
    return kept
