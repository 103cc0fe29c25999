"""The engine: a backbone and the chosen kinds, every kind of a batch from ONE forward pass."""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import time
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch import nn

from attnviz.backbones import Backbone, WeightsSpec, load_backbone
from attnviz.backbones.clip_slide import parse_slide
from attnviz.backbones.instance import from_module
from attnviz.errors import AttnvizError, ImageError
from attnviz.images import RESAMPLING, ImageSource, identity, load_image, to_rgb
from attnviz.kinds import Batch, get_kinds
from attnviz.pipeline.align import Aligner
from attnviz.probes import capture
from attnviz.probes.grad import GradCapture
from attnviz.probes.locate import Inventory, locate
from attnviz.report.manifest import RunRecord
from attnviz.results import AttentionMap, Options, Prediction, Result
from attnviz.settings import MAX_INPUT, check, group, split_list

__all__ = ["AnalyserConfig", "Analyser", "find_attention", "decode", "parse_targets", "MAX_INPUT"]

# the analyser's settings of the schema (attnviz.settings), as dataclass fields with their defaults
_Fields = dataclasses.make_dataclass(
    "_Fields", [(s.name, Any, dataclasses.field(default=s.default)) for s in group("analyser")], frozen=True)
_Fields.__module__ = __name__


@dataclasses.dataclass(frozen=True)     # its __init__ again, now calling __post_init__
class AnalyserConfig(_Fields):  # type: ignore[misc, valid-type]
    """Every setting of an Analyser: the schema's analyser group (attnviz.settings.SCHEMA, help there)."""

    def __post_init__(self) -> None:
        """Check what can be checked before any model is loaded (one-line AttnvizErrors)."""
        put = lambda k, v: object.__setattr__(self, k, v)   # noqa: E731  (frozen)
        put("texts", (self.texts,) if isinstance(self.texts, str) else tuple(self.texts))
        put("targets", parse_targets(self.targets))
        if self.query is not None:
            q = tuple(split_list(self.query) if isinstance(self.query, str) else self.query)
            try:
                q = tuple(float(v) for v in q)
            except (TypeError, ValueError):
                q = ()
            if len(q) != 2 or not all(math.isfinite(v) for v in q):
                raise AttnvizError(f"query {self.query!r}: expected two finite numbers (x, y) in image pixels")
            put("query", q)
        slide = parse_slide(self.slide)                    # "224,112" or a tuple; one line when malformed
        put("slide", slide.as_tuple() if slide else None)
        for s in group("analyser"):
            check(s.name, getattr(self, s.name))

    @classmethod
    def of(cls, config: AnalyserConfig | None = None, **options: Any) -> AnalyserConfig:
        """`config` updated with keyword options; an unknown keyword is one line naming the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise AttnvizError(f"unknown option {unknown[0]!r}; options: {', '.join(sorted(known))}")
        return dataclasses.replace(config or cls(), **options)

    @property
    def options(self) -> Options:
        """The settings the kinds read."""
        return Options(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Options)})

    def settings(self) -> dict[str, Any]:
        """JSON-ready form (the manifest's record of what was asked)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def parse_targets(targets: Any) -> tuple[int | str, ...]:
    """`targets=`: a class index or name, or a list of them (one per image); "3" counts as the index 3."""
    if targets is None:
        return ()
    items = [targets] if isinstance(targets, (int, str)) else list(targets)
    out: list[int | str] = []
    for t in items:
        if isinstance(t, bool) or not isinstance(t, (int, str)) or (isinstance(t, int) and t < 0):
            raise AttnvizError(f"--target {t!r}: use a class index (0, 1 …) or a class name")
        t = t.strip() if isinstance(t, str) else t
        out.append(int(t) if isinstance(t, str) and t.isdigit() else t)
    return tuple(out)


class Analyser:
    """A backbone and the chosen kinds: every kind of a batch from ONE forward pass."""

    def __init__(self, backbone: str | Backbone | nn.Module = "resnet50", kinds: Sequence[str] | None = None,
                 config: AnalyserConfig | None = None, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, categories: Sequence[str] | None = None,
                 tokens: tuple[int, tuple[int, int]] | None = None, name: str | None = None,
                 progress: Callable[[str], None] | None = None, **options: Any) -> None:
        """`backbone`: a name (`attnviz backbones`), a Backbone, or a model instance (an nn.Module, used
        where it is: its device, put in eval mode); `mean`, `std`, `categories`, `tokens`, `name`
        describe an instance that does not say them itself. `options`: the settings (attnviz.settings).
        `progress(text)`: told what is being done while loading and measuring (a status line)."""
        t0 = time.perf_counter()
        config = AnalyserConfig.of(config, **options)
        if isinstance(kinds, str):
            kinds = split_list(kinds)
        chosen = get_kinds(list(kinds) if kinds is not None else None)   # unknown names fail before loading
        self.config = config
        if isinstance(backbone, nn.Module):
            bb = from_module(backbone, name=name, input_size=config.input_size, mean=mean, std=std,
                             categories=categories, tokens=tokens)
        elif isinstance(backbone, Backbone):
            bb = backbone
        elif isinstance(backbone, str):
            if progress:
                progress(f"loading {backbone}")
            bb = load_backbone(backbone, WeightsSpec.parse(config.weights), input_size=config.input_size,
                               device=config.device, seed=config.seed)
        else:
            raise AttnvizError(f"backbone: expected a name, a Backbone or an nn.Module, got {type(backbone).__name__}")
        self.backbone = bb
        # native=False: derive every kind from --layer even where the model has attention modules
        self.inventory = find_attention(bb)[1] if config.native else Inventory()
        self.layer = self._layer(config.layer or bb.default_layer)
        attention = [a.name for a in self.inventory.self_attention()]
        if config.self_layer is not None and config.self_layer not in attention:
            close = difflib.get_close_matches(config.self_layer, attention, n=5, cutoff=0.5)
            raise AttnvizError(f"--self-layer {config.self_layer!r} is not an attention module of {bb.name}; "
                               + (f"close: {', '.join(close)}" if close else f"see `attnviz inspect {bb.name}`"))
        self.options = config.options
        if config.slide and not hasattr(bb, "slide"):
            raise AttnvizError(f"--slide works with clip: backbones only, not {bb.name}")
        bb.prepare(self.options)
        self.notes: list[str] = []
        self.kinds = []
        for kind in chosen:
            reason = kind.unavailable(bb, self.options)
            if reason and kinds is not None:
                raise AttnvizError(f"kind {kind.name!r}: {reason}")
            if reason:
                self.notes.append(f"{kind.name} skipped: {reason}")
                continue
            self.kinds.append(kind)
        self.plans = {k.name: k.prepare(bb, self.options) for k in self.kinds}
        self.tapped = list(dict.fromkeys(n for k in self.kinds for n in k.layers(bb, self.layer)))
        needs = set().union(*(k.needs for k in self.kinds))    # the probes the kinds declare
        self.gates = self.inventory.gates if "gates" in needs else []
        self.attention = list(dict.fromkeys(n.split("#")[0] for n in attention)) if "attention" in needs else []
        # what is drawn natively, and every attention found but not drawn (one rule for inspect and manifest)
        self.plan = self.inventory.plan(self.layer, bb.native_cross, [k.name for k in self.kinds])
        self.notes += self.plan.notes
        self.heads = [config.self_layer or attention[-1]] if attention else []   # per-head maps: one layer
        # gradient kinds: the forward runs with autograd, attention and their layers kept in the graph
        grad_kinds = [k for k in self.kinds if "gradients" in k.needs]
        self.gradients = bool(grad_kinds)
        self.grad_attention = self.inventory.usable_self(bb.tokens)[0] \
            if any("attention" in k.needs for k in grad_kinds) else []
        self.grad_layers = list(dict.fromkeys(n for k in grad_kinds for n in k.layers(bb, self.layer)))
        self.grad_blocks = any("blocks" in k.needs for k in grad_kinds)
        self.forwards = 0   # forward passes run so far (one per batch)
        self.aligner = Aligner(bb, config.align, progress)   # measured receptive fields
        # measured now, so that every batch is still ONE forward (other layers: on first use)
        near = [self.inventory.nearest_gate(k, self.layer) for k in ("spatial", "channel")]
        for name in [self.layer, *(g.name for g in near if g is not None)] if self.kinds else []:
            self.aligner.geometry(name)
        # seconds spent before the first image: loading (and inspecting), measuring receptive fields
        measuring = self.aligner.seconds
        self.timings = {"loading": time.perf_counter() - t0 - measuring, "measuring": measuring}

    def record(self) -> RunRecord:
        """The manifest's record of this analyser: its backbone, kinds and settings (no pipeline objects)."""
        bb = self.backbone
        return RunRecord(
            backbone={"name": bb.name, "weights": bb.weights, "pretrained": bb.pretrained, "layer": self.layer,
                      "classifier_layer": bb.classifier_layer, "input_size": bb.input_size, "mean": list(bb.mean),
                      "std": list(bb.std), "device": str(bb.device),
                      "native": dict(self.plan.native),
                      "unreadable_attention": list(self.inventory.unsupported),
                      "unreadable_reasons": dict(self.inventory.reasons)},
            kinds=[k.name for k in self.kinds], settings=self.config.settings(),
            notes=list(self.notes) + list(bb.notes))

    def twin(self, backbone: Backbone) -> Analyser:
        """The same kinds and settings on another backbone (the sanity check's randomised model)."""
        return Analyser(backbone, [k.name for k in self.kinds], self.config)

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

    def to_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The images as the model sees them, NOT normalised: each squashed to input_size² with the
        weights' resampling (as timm's / torchvision's `Resize((S, S), interpolation)` + `ToTensor`,
        no centre crop), scaled to [0, 1]: (B, 3, S, S) on the CPU. `preprocess` normalises it."""
        s = self.backbone.input_size
        resample = RESAMPLING.get(self.backbone.interpolation, Image.Resampling.BILINEAR)
        arrays = [torch.frombuffer(bytearray(to_rgb(im).resize((s, s), resample).tobytes()),
                                   dtype=torch.uint8).reshape(s, s, 3) for im in images]
        return torch.stack(arrays).permute(0, 3, 1, 2).float() / 255.0

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(x − mean) / std with the backbone's mean and std, on the backbone's device."""
        mean = torch.tensor(self.backbone.mean)[None, :, None, None]
        std = torch.tensor(self.backbone.std)[None, :, None, None]
        if x.device.type == "cpu":        # the CLI's arithmetic, bit for bit
            return ((x - mean) / std).to(self.backbone.device)
        return (x - mean.to(x.device)) / std.to(x.device)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The whole image squashed to input_size², scaled to [0, 1], normalised: (B, 3, S, S)."""
        return self.normalise(self.to_tensor(images))

    @torch.no_grad()
    def analyse_batch(self, images: Sequence[Image.Image], prompts: list[list[str]] | None = None,
                      targets: list[tuple[Any, ...]] | None = None
                      ) -> list[tuple[list[Prediction], list[AttentionMap]]]:
        """Predictions and maps for a batch of RGB images, from one forward pass.

        `prompts`: one list per image, for text backbones that take per-image prompts (demo);
        `targets`: one tuple of classes per image (the derived cross map's), else the settings'.
        """
        if not images:
            return []
        return self.forward_batch(self.preprocess(images), images, prompts, targets)

    @torch.no_grad()
    def forward_batch(self, x: torch.Tensor, images: Sequence[Image.Image], prompts: list[list[str]] | None = None,
                      targets: list[tuple[Any, ...]] | None = None
                      ) -> list[tuple[list[Prediction], list[AttentionMap]]]:
        """`analyse_batch` for a normalised batch `x` (B, 3, S, S) made from `images` (their sizes and,
        for --slide, their pixels)."""
        logits, [maps] = self._forward(x, images, prompts, targets, [self])
        return [(self._predictions(row), m) for row, m in zip(logits, maps)]

    @torch.no_grad()
    def analyse_layers(self, images: Sequence[Image.Image], others: Sequence[Analyser]
                       ) -> tuple[list[list[Prediction]], list[list[list[AttentionMap]]]]:
        """ONE forward pass for this analyser and `others` on the same backbone (other layers, say):
        the predictions, and each analyser's maps per image, each read from its own layer."""
        if any(a.backbone is not self.backbone for a in others):
            raise ValueError("analyse_layers: every analyser must share this one's backbone")
        logits, per = self._forward(self.preprocess(images), images, None, None, [self, *others])
        return [self._predictions(row) for row in logits], per

    def _forward(self, x: torch.Tensor, images: Sequence[Image.Image], prompts: list[list[str]] | None,
                 targets: list[tuple[Any, ...]] | None, group: Sequence[Analyser]
                 ) -> tuple[torch.Tensor, list[list[list[AttentionMap]]]]:
        bb = self.backbone
        bb.set_images(list(images))        # --slide reads the decoded images at full resolution
        tapped = list(dict.fromkeys(n for a in group for n in a.tapped))
        # gradient kinds: the forward runs with autograd, attention and their layers kept in the graph
        graded = [a for a in group if a.gradients]
        grads = GradCapture(bb.model, list(dict.fromkeys(n for a in graded for n in a.grad_attention)),
                            any(a.grad_blocks for a in graded),
                            list(dict.fromkeys(n for a in graded for n in a.grad_layers))) if graded else None
        with contextlib.ExitStack() as stack:
            if grads is not None:      # entered first: the raw capture's mode sees each call first
                stack.enter_context(torch.enable_grad())
                stack.enter_context(grads)
                x = x.requires_grad_(True)    # a graph even where the model's parameters are frozen
            cap = stack.enter_context(capture(bb.model, layers=tapped, gates=self.gates, attention=self.attention,
                                              heads=self.heads))
            logits, aux = bb.forward(x, prompts)
        self.forwards += 1
        per = []
        for a in group:
            batch = Batch(bb, a.layer, cap.outputs, logits, [im.size for im in images],
                          a.options, a.plans, inventory=a.inventory, gates=cap.gates,
                          gate_inputs=cap.gate_inputs, attention=cap.attention, windows=cap.windows, aux=aux,
                          aligner=a.aligner, targets=[parse_targets(t) for t in targets] if targets else None,
                          grads=grads)
            maps: list[list[AttentionMap]] = [[] for _ in images]
            for kind in a.kinds:
                for i, per_image in enumerate(kind.compute(batch)):
                    maps[i].extend(per_image)
            per.append(maps)
        logits = logits.detach()
        del batch, grads                        # the graph goes before the next batch
        for a, maps in zip(group, per):
            for per_image in maps:
                a.aligner.stamp(per_image)       # each map's cell → pixel mapping (manifest "geometry")
        return logits, per

    def _predictions(self, logits: torch.Tensor) -> list[Prediction]:
        """Top classes; any head works (int-valued, zero classes, more outputs than names)."""
        scores = logits.detach().float().flatten()
        if scores.numel() == 0:
            return []
        probs = torch.softmax(scores, dim=0)
        top = probs.topk(min(self.config.top, len(probs)))
        cats = self.backbone.categories
        return [Prediction(int(i), cats[int(i)] if int(i) < len(cats) else f"class {int(i)}", round(float(p), 6))
                for p, i in zip(*top)]


def find_attention(backbone: str | Backbone, weights: str = "none", *, input_size: int | None = None,
                   device: str = "cpu") -> tuple[Backbone, Inventory]:
    """A backbone and every attention module one forward pass finds in it."""
    bb = backbone if isinstance(backbone, Backbone) else load_backbone(
        backbone, weights, input_size=input_size, device=device)
    example = torch.zeros(1, 3, bb.input_size, bb.input_size, device=bb.device)
    return bb, locate(bb.model, example, bb.tokens)


def _decode_one(src: ImageSource) -> tuple[Result, Image.Image | None]:
    r = Result(source=src.source, path=src.path, output=src.output, source_bytes=src.source_bytes)
    if src.error:
        r.status, r.error = "error", src.error
        return r, None
    r.input = identity(src.path)       # resume redoes the image when its content changes
    try:
        image = load_image(src.path)
    except ImageError as e:
        r.status, r.error = "error", str(e)
        return r, None
    r.size = image.size
    return r, image


def decode(sources: list[ImageSource]) -> tuple[list[Result], list[tuple[Result, Image.Image]]]:
    """Decode a batch; unusable files become error Results, the rest go on."""
    pairs = [_decode_one(src) for src in sources]
    return [r for r, _ in pairs], [(r, im) for r, im in pairs if im is not None]
