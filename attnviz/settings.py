"""The one settings schema: every option of `attnviz run`, with its help, limits and CLI flags.

The CLI options (`cli/schema.py`), the Python keywords (`AnalyserConfig`, `Options`, `Style`), the
manifest's settings and the resume fingerprint are all derived from `Settings` below; a test walks
the CLI and this schema together, so an option exists once.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from attnviz.errors import AttnvizError

__all__ = ["Setting", "Settings", "SCHEMA", "OUTLIER_MODES", "CLIP_VARIANTS", "FORMATS", "MAX_INPUT",
           "MAX_SIZE", "group", "check", "split_list", "fingerprint_names", "Slide", "parse_slide",
           "check_device"]

OUTLIER_MODES = ("keep", "mask", "interpolate")   # what --outliers does to high-norm patch tokens
CLIP_VARIANTS = ("value", "clear", "sclip", "naclip", "plain", "all")   # CLIP patch-token maps, or all
FORMATS = ("png", "jpg", "webp")                 # overlays and original
MAX_INPUT = 2048   # model input side: larger inputs cost GBs per image in every backbone
MAX_SIZE = 8192    # longest side of a written picture: 67 MP, under Pillow's decompression-bomb limit




@dataclass(frozen=True)
class Setting:
    """One option: its keyword, default, help, CLI flags and limits, and where it is used."""

    name: str                         # Python keyword and manifest key
    default: Any
    help: str
    group: str                        # input | analyser | style | run | video | cli (the terminal only)
    flags: tuple[str, ...] = ()       # CLI flags, the long one first; () = Python only
    param: str = ""                   # CLI parameter name when it is not `name`
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    many: bool = False                # a list: repeatable and comma-separated on the CLI
    invert: bool = False              # the CLI flag sets the opposite (--derived-only: native=False)
    kinds: bool = False               # read by the kinds (`Options`)
    manifest: bool = False            # in the manifest's "settings"
    fingerprint: bool = False         # decides the files' content: a rerun resumes only when equal

    @property
    def cli_param(self) -> str:
        """The parameter name of the CLI function."""
        return self.param or self.name


def _s(default: Any, help: str, group: str, *flags: str, **kw: Any) -> Any:
    return field(default=default, metadata={"setting": dict(default=default, help=help, group=group,
                                                            flags=flags, **kw)})


@dataclass(frozen=True)
class Settings:
    """Every setting of a run, in CLI order (field metadata: help, flags, limits)."""

    out: str | None = _s(None, "Output folder (created; mirrors the input tree).", "input", "--out", "-o")
    backbone: str = _s("resnet50", "Backbone name (`attnviz backbones` lists every family and name).",
                       "input", "--backbone", "-b")
    model: str | None = _s(None, "Your own model instead: package.module:factory (a callable returning an nn.Module).",
                           "input", "--model")
    weights: str = _s("DEFAULT", "DEFAULT, a weights enum name or tag (IMAGENET1K_V1), a state_dict FILE, or none "
                      "(random init).", "analyser", "--weights", "-w", fingerprint=True)
    layer: str | None = _s(None, "Layer to read (default: the last feature stage; see `attnviz layers`).",
                           "analyser", "--layer", "-l", fingerprint=True)
    kinds: tuple[str, ...] | None = _s(None, "Kinds to compute, comma-separated or repeated (default: every raw "
                                       "kind; gradient kinds such as self-gae only when named; `attnviz kinds` "
                                       "lists them).", "input", "--kinds", "-k", many=True)
    texts: tuple[str, ...] = _s((), "Cross-attention prompt (repeatable); default: the top-1 class name.",
                                "analyser", "--text", "-t", param="text", many=True, kinds=True, manifest=True,
                                fingerprint=True)
    text_file: str | None = _s(None, "Prompts, one per line ('#' starts a comment).", "input", "--text-file")
    targets: tuple[Any, ...] = _s((), "Class to explain: a class name or index, repeatable (a map for each), for "
                                  "the gradient kinds (self-gae, self-legrad, gradcam) and the derived cross map "
                                  "(CAM); default: each image's top-1 class.", "analyser", "--target", param="target",
                                  many=True, kinds=True, manifest=True, fingerprint=True)
    per_word: bool = _s(False, "CLIP: also a map for each content word of each prompt.", "analyser",
                        "--per-word", kinds=True, fingerprint=True)
    contrast: bool = _s(False, "CLIP: also each prompt's similarity minus the mean of the others'.", "analyser",
                        "--contrast", kinds=True, fingerprint=True)
    pretrained: str | None = _s(None, "CLIP: open_clip pretrained tag (default: the arch's usual one); same as "
                                "--weights TAG.", "input", "--pretrained")
    variant: str = _s("value", "CLIP patch tokens: value (MaskCLIP, default), clear (ClearCLIP), sclip (SCLIP), "
                      "naclip (NACLIP), plain (the last block's output), or all (every one side by side).",
                      "analyser", "--clip-variant", param="clip_variant", choices=CLIP_VARIANTS, kinds=True,
                      fingerprint=True)
    slide: tuple[int, int, int] | None = _s(None, "CLIP: WINDOW,STRIDE[,SHORT] — overlapping crops of the image "
                                            "resized to a short side of SHORT px (default 1.5 × WINDOW), patch "
                                            "similarities averaged (e.g. 224,112).", "analyser", "--slide",
                                            kinds=True, fingerprint=True)
    query: tuple[float, float] | None = _s(None, "Self-attention query X,Y in image pixels (default: the "
                                           "spatial-map peak).", "analyser", "--query", kinds=True, manifest=True,
                                           fingerprint=True)
    faithfulness: bool = _s(False, "Also score every map by deletion/insertion AUC (extra forward passes: slower).",
                            "run", "--faithfulness", fingerprint=True)
    sanity: bool = _s(False, "Also compare the first batch's maps with a fully randomised model's (rank "
                      "correlation; ≥ 0.3 is flagged).", "run", "--sanity", fingerprint=True)
    stats: bool = _s(False, "Also write agreement.csv/.png: per image and pair of kinds, Spearman's rho and the "
                     "IoU of the top-20 % regions.", "run", "--stats")
    native: bool = _s(True, "Derive channel, spatial, mixed and self from --layer even where the model has its "
                      "own attention modules (to compare with the native maps).", "analyser", "--derived-only",
                      param="derived_only", invert=True, fingerprint=True)
    align: bool = _s(True, "Draw CNN maps by their cells' measured receptive fields (peaks at each field's "
                     "centroid; measured once per architecture, weights, layer and input size, cached on "
                     "disk); --no-align: bilinear from block centres.", "analyser", "--align/--no-align", fingerprint=True)
    outliers: str = _s("keep", "Patch tokens of outlying norm (ViT artifact tokens, listed as outlier_tokens): "
                       "keep (the map as computed), mask (left blank), or interpolate (their neighbours' mean).",
                       "analyser", "--outliers", choices=OUTLIER_MODES, kinds=True, fingerprint=True)
    self_layer: str | None = _s(None, "Attention module for the per-head maps (default: the last; see "
                                "`attnviz inspect`).", "analyser", "--self-layer", kinds=True, fingerprint=True)
    input_size: int | None = _s(None, f"Model input side, 16 to {MAX_INPUT} (default: the weights' own, "
                                "usually 224).", "analyser", "--input-size", min=16, max=MAX_INPUT, fingerprint=True)
    size: int = _s(512, f"Longest side of the written pictures, 16 to {MAX_SIZE}.", "style", "--size", min=16,
                   max=MAX_SIZE, manifest=True, fingerprint=True)
    colormap: str = _s("jet", "Matplotlib colormap name (jet, inferno, viridis ...).", "style", "--colormap",
                       manifest=True, fingerprint=True)
    alpha: float = _s(0.5, "Heatmap opacity over the image.", "style", "--alpha", min=0.0, max=1.0,
                      manifest=True, fingerprint=True)
    top_k: int = _s(20, "Channels shown as bars in channel_weights.png.", "style", "--top-k", min=1,
                    manifest=True, fingerprint=True)
    tau: float = _s(0.1, "Temperature of derived self-attention.", "analyser", "--tau", min=1e-4, kinds=True,
                    manifest=True, fingerprint=True)
    top: int = _s(5, "Predictions kept per image.", "analyser", min=1, fingerprint=True)
    batch_size: int = _s(8, "Images per forward pass.", "run", "--batch-size", min=1, manifest=True)
    device: str = _s("cpu", "cpu, cuda or auto.", "analyser", "--device")
    seed: int | None = _s(None, "Seed for random-init weights.", "analyser", "--seed", manifest=True,
                          fingerprint=True)
    engine: str = _s("local", "local (this process) or ray (a Ray cluster; the ray extra).", "run", "--engine",
                     choices=("local", "ray"))
    address: str | None = _s(None, "Ray: the cluster to join (auto: the one `ray start` runs here); default: a "
                             "local one.", "run", "--address")
    workers: int | None = _s(None, "Local: threads that draw and write files while the next batch runs (default: "
                             "one per core; 0: none). Ray: actors, each with its own model (default: one per CPU "
                             "of the cluster).", "run", "--workers", min=0)
    format: str = _s("png", "Overlays and original: png, jpg or webp (charts, grids and maps.npz keep theirs).",
                     "style", "--format", param="fmt", choices=FORMATS)
    gpus_per_worker: float = _s(0.0, "Ray: GPUs per actor (a fraction shares a GPU).", "run", "--gpus-per-worker",
                                min=0.0)
    resume: bool = _s(True, "Keep the images an earlier run into OUT completed with the same settings (the "
                      "default).", "run", "--resume")
    force: bool = _s(False, "Recompute every image even if OUT holds a run with other settings or files attnviz "
                     "did not write; outputs the new settings no longer produce are removed.", "run", "--force")
    fps: float = _s(2.0, "Video: frames analysed per second of video (default 2).", "video", "--fps", min=0.01,
                    max=1000.0, manifest=True, fingerprint=True)
    every: int | None = _s(None, "Video: analyse every N-th frame instead of --fps.", "video", "--every", min=1,
                           manifest=True, fingerprint=True)
    max_frames: int | None = _s(None, "Video: analyse at most this many frames of each video.", "video",
                                "--max-frames", min=1, manifest=True, fingerprint=True)
    smooth: float = _s(0.0, "Video: exponential moving average of the drawn maps over time, 0 (off) to 0.99: "
                       "drawn_t = (1 − S)·map_t + S·drawn_t−1 (maps.npz stays raw).", "video", "--smooth", min=0.0,
                       max=0.99, manifest=True, fingerprint=True)
    video_scale: str = _s("frame", "Video colours: frame (each frame's own min–max) or video (one range across the "
                          "video).", "video", "--video-scale", choices=("frame", "video"), manifest=True,
                          fingerprint=True)
    animated: str = _s("image", "Animated GIF/WebP: image (the first frame) or video (every frame, as a video).",
                       "video", "--animated", choices=("image", "video"), manifest=True, fingerprint=True)
    quiet: bool = _s(False, "No progress bar or summary (errors still print).", "cli", "--quiet", "-q")
    debug: bool = _s(False, "Show tracebacks.", "cli", "--debug")


SCHEMA: dict[str, Setting] = {f.name: Setting(name=f.name, **f.metadata["setting"])
                              for f in dataclasses.fields(Settings)}


def group(name: str) -> list[Setting]:
    """The settings of one group, in schema order."""
    return [s for s in SCHEMA.values() if s.group == name]


def fingerprint_names() -> list[str]:
    """The settings whose values decide the files' content (the resume fingerprint)."""
    return [s.name for s in SCHEMA.values() if s.fingerprint]


def _flag(s: Setting) -> str:
    return s.flags[0].split("/")[0] if s.flags else s.name


def check(name: str, value: Any) -> None:
    """One-line AttnvizError when `value` breaks the limits or choices of setting `name`."""
    s = SCHEMA[name]
    if value is None:
        return
    if s.choices is not None and value not in s.choices:
        c = s.choices
        names = f"{', '.join(c[:-1])} or {c[-1]}" if len(c) <= 3 else f"one of {', '.join(c)}"
        raise AttnvizError(f"{_flag(s)} {value!r}: use {names}")
    if s.min is None and s.max is None:
        return
    whole = isinstance(s.default, int) or s.name in ("input_size", "workers", "seed", "every", "max_frames")
    ok = not isinstance(value, bool) and (isinstance(value, int) if whole else
                                           isinstance(value, (int, float)) and math.isfinite(value))
    if ok and s.min is not None and value < s.min:
        ok = False
    if ok and s.max is not None and value > s.max:
        ok = False
    if not ok:
        what = "a whole number" if whole else "a number"
        lo = f"{s.min:g}" if s.min is not None else None
        hi = f"{s.max:g}" if s.max is not None else None
        limits = f"from {lo} to {hi}" if lo and hi else f"≥ {lo}" if lo else f"≤ {hi}"
        raise AttnvizError(f"{_flag(s)} {value!r}: use {what} {limits}")


def split_list(values: str | Sequence[str] | None) -> list[str]:
    """'a,b' or ['a,b', 'c'] -> ['a', 'b', 'c'] (blanks dropped): THE list parser of every option."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    return [v.strip() for item in items for v in str(item).split(",") if v.strip()]


@dataclass(frozen=True)
class Slide:
    """Sliding-window settings, in pixels of the resized view."""

    window: int
    stride: int
    short: int

    def as_tuple(self) -> tuple[int, int, int]:
        """(window, stride, short side)."""
        return (self.window, self.stride, self.short)

    def as_dict(self) -> dict[str, int]:
        """JSON-ready form for the manifest."""
        return {"window": self.window, "stride": self.stride, "short_side": self.short}


def parse_slide(value: Any) -> Slide | None:
    """`"224,112"`, `"224,112,448"`, a tuple of 2-3 whole numbers, a Slide, or None; anything else: one line."""
    if value is None or isinstance(value, Slide):
        return value
    text = ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)
    usage = f"--slide {text!r}: use WINDOW,STRIDE or WINDOW,STRIDE,SHORT in pixels (e.g. 224,112)"
    if not re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*){1,2}", text):
        raise AttnvizError(usage)
    nums = [int(v) for v in text.split(",")]
    window, stride = nums[0], nums[1]
    short = nums[2] if len(nums) == 3 else (3 * window) // 2
    if not 16 <= window <= 2048 or not 1 <= stride <= window or not window <= short <= 4096:
        raise AttnvizError(f"{usage}; need 16 ≤ WINDOW ≤ 2048, 1 ≤ STRIDE ≤ WINDOW and WINDOW ≤ SHORT ≤ 4096")
    return Slide(window, stride, short)


def check_device(device: str | None) -> None:
    """--device names a device attnviz runs on: cpu, cuda[:N], mps[:N] or auto (whether it is there
    is asked of torch when the model is loaded)."""
    if device is not None and not re.fullmatch(r"auto|(cpu|cuda|mps)(:\d+)?", str(device)):
        raise AttnvizError(f"--device {device!r}: attnviz runs on cpu, cuda or auto")
