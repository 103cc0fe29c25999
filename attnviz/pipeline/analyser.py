"""The engine: a backbone and the chosen kinds, every kind of a batch from ONE forward pass."""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from attnviz.backbones import Backbone, WeightsSpec, load_backbone
from attnviz.backbones.clip_core import CHOICES
from attnviz.backbones.clip_slide import parse_slide
from attnviz.errors import AttnvizError, ImageError
from attnviz.images import ImageSource, load_image, to_rgb
from attnviz.kinds import Batch, get_kinds
from attnviz.pipeline.align import Aligner
from attnviz.probes import capture
from attnviz.probes.grad import GradCapture
from attnviz.probes.locate import Inventory, locate
from attnviz.results import OUTLIER_MODES, AttentionMap, Options, Prediction, Result

__all__ = ["AnalyserConfig", "Analyser", "find_attention", "decode", "MAX_INPUT"]

MAX_INPUT = 2048   # model input side: larger inputs cost GBs per image in every backbone


@dataclass(frozen=True)
class AnalyserConfig:
    """Every setting of an Analyser; each field is the CLI option of the same name."""

    weights: str = "DEFAULT"                      # DEFAULT | an enum name or tag | FILE | none
    layer: str | None = None                      # default: the backbone's last feature stage
    texts: tuple[str, ...] = ()                   # cross-attention prompts
    query: tuple[float, float] | None = None      # self-attention query (x, y) in image pixels
    input_size: int | None = None
    device: str = "cpu"
    seed: int | None = None                       # seed for random-init weights
    tau: float = 0.1                              # temperature of derived self-attention
    top: int = 5                                  # predictions kept per image
    self_layer: str | None = None                 # attention module of the per-head maps
    per_word: bool = False
    contrast: bool = False
    variant: str = "value"                        # CLIP patch tokens: a variant, or "all" side by side
    slide: tuple[int, int, int] | None = None     # CLIP --slide: (window, stride, short side) in pixels
    native: bool = True                           # False: derive every kind from `layer`
    align: bool = True                            # place CNN cells at their measured receptive-field centres
    outliers: str = "keep"                        # high-norm patch tokens: keep | mask | interpolate
    targets: tuple[str, ...] = ()                 # gradient kinds: class names or indices (default: top-1)

    def __post_init__(self) -> None:
        """Check what can be checked before any model is loaded (one-line AttnvizErrors)."""
        if isinstance(self.texts, str):
            object.__setattr__(self, "texts", (self.texts,))
        object.__setattr__(self, "texts", tuple(self.texts))
        targets = (self.targets,) if isinstance(self.targets, (str, int)) else self.targets
        object.__setattr__(self, "targets", tuple(str(t) for t in targets))
        if self.query is not None:
            q = tuple(self.query)
            if len(q) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in q):
                raise AttnvizError(f"query {self.query!r}: expected two finite numbers (x, y) in image pixels")
            object.__setattr__(self, "query", (float(q[0]), float(q[1])))
        if self.variant not in CHOICES:
            raise AttnvizError(f"--clip-variant {self.variant!r}: use one of {', '.join(CHOICES)}")
        slide = parse_slide(self.slide)                    # "224,112" or a tuple; one line when malformed
        object.__setattr__(self, "slide", slide.as_tuple() if slide else None)
        if self.outliers not in OUTLIER_MODES:
            raise AttnvizError(f"--outliers {self.outliers!r}: use one of {', '.join(OUTLIER_MODES)}")
        if not (isinstance(self.tau, (int, float)) and self.tau > 0 and math.isfinite(self.tau)):
            raise AttnvizError(f"--tau {self.tau!r}: use a positive number")
        if not isinstance(self.top, int) or self.top < 1:
            raise AttnvizError(f"top {self.top!r}: use a whole number ≥ 1")
        if self.input_size is not None and not (isinstance(self.input_size, int) and 16 <= self.input_size <= MAX_INPUT):
            raise AttnvizError(f"--input-size {self.input_size!r}: use a whole number from 16 to {MAX_INPUT}")

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
        return Options(tau=self.tau, query=self.query, texts=self.texts, self_layer=self.self_layer,
                       per_word=self.per_word, contrast=self.contrast, variant=self.variant,
                       slide=self.slide, outliers=self.outliers, targets=self.targets)

    def settings(self) -> dict[str, Any]:
        """JSON-ready form (the manifest's record of what was asked)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


class Analyser:
    """A backbone and the chosen kinds: every kind of a batch from ONE forward pass."""

    def __init__(self, backbone: str | Backbone = "resnet50", kinds: Sequence[str] | None = None,
                 config: AnalyserConfig | None = None, **options: Any) -> None:
        config = AnalyserConfig.of(config, **options)
        if isinstance(kinds, str):
            kinds = [k.strip() for k in kinds.split(",") if k.strip()]
        chosen = get_kinds(list(kinds) if kinds is not None else None)   # unknown names fail before loading
        self.config = config
        self.backbone = bb = backbone if isinstance(backbone, Backbone) else load_backbone(
            backbone, WeightsSpec.parse(config.weights), input_size=config.input_size,
            device=config.device, seed=config.seed)
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
        self.notes += self.inventory.notes()    # attention found but not drawn natively, and why
        self.heads = [config.self_layer or attention[-1]] if attention else []   # per-head maps: one layer
        # gradient kinds: the forward runs with autograd, attention and their layers kept in the graph
        grad_kinds = [k for k in self.kinds if "gradients" in k.needs]
        self.gradients = bool(grad_kinds)
        self.grad_attention = self.inventory.usable_self(bb.tokens)[0] \
            if any("attention" in k.needs for k in grad_kinds) else []
        self.grad_layers = list(dict.fromkeys(n for k in grad_kinds for n in k.layers(bb, self.layer)))
        self.grad_blocks = any("blocks" in k.needs for k in grad_kinds)
        self.forwards = 0   # forward passes run so far (one per batch)
        self.aligner = Aligner(bb, config.align)   # measured cell centres
        # measured now, so that every batch is still ONE forward (other layers: on first use)
        near = [self.inventory.nearest_gate(k, self.layer) for k in ("spatial", "channel")]
        for name in [self.layer, *(g.name for g in near if g is not None)] if self.kinds else []:
            self.aligner.geometry(name)

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
        bb.set_images(list(images))        # --slide reads the decoded images at full resolution
        grads = GradCapture(bb.model, self.grad_attention, self.grad_blocks, self.grad_layers) \
            if self.gradients else None
        with contextlib.ExitStack() as stack:
            if grads is not None:      # entered first: the raw capture's mode sees each call first
                stack.enter_context(torch.enable_grad())
                stack.enter_context(grads)
                x = x.requires_grad_(True)    # a graph even where the model's parameters are frozen
            cap = stack.enter_context(capture(bb.model, layers=self.tapped, gates=self.gates,
                                              attention=self.attention, heads=self.heads))
            logits, aux = bb.forward(x, prompts)
        self.forwards += 1
        batch = Batch(bb, self.layer, cap.outputs, logits, [im.size for im in images],
                      self.options, self.plans, inventory=self.inventory, gates=cap.gates,
                      gate_inputs=cap.gate_inputs, attention=cap.attention, windows=cap.windows, aux=aux,
                      aligner=self.aligner, grads=grads)
        maps: list[list[AttentionMap]] = [[] for _ in images]
        for kind in self.kinds:
            for i, per_image in enumerate(kind.compute(batch)):
                maps[i].extend(per_image)
        logits = logits.detach()
        del batch, grads                        # the graph goes before the next batch
        for per_image in maps:
            self.aligner.stamp(per_image)       # each map's cell → pixel mapping (manifest "geometry")
        return [(self._predictions(row), m) for row, m in zip(logits, maps)]

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
