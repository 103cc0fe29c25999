"""Hugging Face image classifiers (`hf:MODEL_ID_OR_DIR`): transformers builds them, its configs describe them."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnviz.backbones import hub
from attnviz.backbones.base import Backbone, LayerInfo, checked_token_head, describe_layers, find_classifier, last_stage
from attnviz.backbones.registry import register_family
from attnviz.backbones.weights import WeightsSpec, check_input_size, load_state_dict_file, warn_random
from attnviz.errors import AttnvizError, one_line

__all__ = ["HfBackbone", "load_hf", "hf_backbone", "EXTRA_HINT"]

EXTRA_HINT = 'Hugging Face backbones need the optional extra: pip install -e ".[hf]"'
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREFIX = {"vit": 1, "vit_msn": 1, "beit": 1, "data2vec-vision": 1, "dinov2": 1,
          "dinov2_with_registers": 1, "deit": 2}         # class (+ distillation) token; registers added
FIXED_SIZE = {"vit", "vit_msn", "deit", "beit", "data2vec-vision"}   # position embeddings fix the size
WINDOWED = {"swin", "swinv2"}                                        # token stages, no class token
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _transformers() -> Any:
    """Import transformers lazily; a missing extra is a one-line AttnvizError."""
    try:
        import transformers
    except ImportError:
        raise AttnvizError(EXTRA_HINT) from None
    return transformers


@dataclass
class HfBackbone(Backbone):
    """A transformers classifier: its forward returns a ModelOutput, attnviz wants the logits."""

    def forward(self, x: torch.Tensor, prompts: list[list[str]] | None = None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Class logits (B, K) of the model's own head."""
        return self.model(pixel_values=x).logits, {}


def _token_head(model: nn.Module, tokens: Any, size: int, device: torch.device) -> Any:
    """classifier(layernorm(z)[:, 0]) (ViT, DeiT-style heads), kept only where it reproduces the logits."""
    base = getattr(model, "base_model", None)
    layers = getattr(base, "layers", None) or getattr(getattr(base, "encoder", None), "layer", None)
    norm, classifier = getattr(base, "layernorm", None), getattr(model, "classifier", None)
    if tokens is None or not tokens[0] or not layers or norm is None or not isinstance(classifier, nn.Module):
        return None
    return checked_token_head(model, lambda z: classifier(norm(z)[:, 0]), layers[-1], size, device)


def _source(ref: str, weights: WeightsSpec) -> tuple[str, dict[str, Any], str]:
    """What from_pretrained takes for `ref`, its keywords, and the cache folder errors should name."""
    path = Path(ref).expanduser()
    if path.is_dir():                                        # save_pretrained output: never the network
        return str(path), {"local_files_only": True}, str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1 or not ref:
        raise AttnvizError(f"hf:{ref}: no such folder (and not a hub id ORG/NAME)")
    cache = hub.hf_cache_dir()
    kw: dict[str, Any] = {"cache_dir": cache}
    if weights.kind == "tag":
        kw["revision"] = weights.value                      # a branch, tag or commit of the hub repo
    if not hub.online():
        kw["local_files_only"] = True                       # no hub retries: the cache or one line
    return ref, kw, os.path.join(cache, "models--" + ref.replace("/", "--"))


def _build(ref: str, weights: WeightsSpec) -> tuple[nn.Module, Any, str, str, dict[str, Any]]:
    """The model with the asked weights, its config, a description, and (source, keywords) for the processor."""
    tf = _transformers()
    src, kw, folder = _source(ref, weights)
    what = f"Hugging Face model {ref}"
    bars = tf.utils.logging.is_progress_bar_enabled()
    if kw.get("local_files_only"):
        tf.utils.logging.disable_progress_bar()             # nothing to download: no bars
    try:
        if weights.kind in ("default", "tag"):
            model = tf.AutoModelForImageClassification.from_pretrained(src, **kw)
            return model, model.config, src if kw.get("local_files_only") else f"{ref} (hub)", src, kw
        config = tf.AutoConfig.from_pretrained(src, **kw)
        model = tf.AutoModelForImageClassification.from_config(config)
    except AttnvizError:
        raise
    except (OSError, ValueError) as e:
        if kw.get("local_files_only") and folder != src:
            raise hub.missing(what, folder) from None
        raise AttnvizError(f"cannot load {what}: {one_line(e)}") from None
    finally:
        if bars:
            tf.utils.logging.enable_progress_bar()
    if weights.kind == "none":
        warn_random(f"hf:{ref}")
        return model, config, "none", src, kw
    return _from_file(type(model), config, weights, ref), config, str(weights.path), src, kw


def _from_file(cls: Any, config: Any, weights: WeightsSpec, ref: str) -> nn.Module:
    """A state_dict FILE through transformers' own loader (it renames checkpoint keys), strictly."""
    sd = load_state_dict_file(weights.path)                  # weights_only: no pickled code runs
    tf = _transformers()
    level = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()                         # our one line replaces its load report
    try:
        model, info = cls.from_pretrained(None, config=config, state_dict=sd, output_loading_info=True)
    except Exception as e:  # noqa: BLE001  (shape and key errors come in several types)
        raise AttnvizError(f"--weights {weights.path} does not fit hf:{ref}: {one_line(e)}") from None
    finally:
        tf.logging.set_verbosity(level)
    bad = [f"{k.replace('_', ' ')}: {', '.join(sorted(map(str, v))[:3])}" for k, v in info.items() if v]
    if bad:
        raise AttnvizError(f"--weights {weights.path} does not fit hf:{ref}: {'; '.join(bad)}")
    return model


def _size_of(d: Any) -> int | None:
    """A side from a processor size entry ({height, width} or {shortest_edge})."""
    if d is None:
        return None
    get = d.get if isinstance(d, dict) else lambda k: getattr(d, k, None)
    return int(get("height") or get("shortest_edge") or 0) or None


def _preprocessing(src: str, kw: dict[str, Any], config: Any) -> tuple[tuple, tuple, int, str, list[str]]:
    """mean, std, input side and resampling from the model's image-processor config."""
    tf = _transformers()
    try:
        proc = tf.AutoImageProcessor.from_pretrained(src, **kw)
    except (OSError, ValueError):        # no preprocessor_config.json: say what was assumed
        side = getattr(config, "image_size", 224)
        side = side[0] if isinstance(side, (list, tuple)) else side
        return IMAGENET_MEAN, IMAGENET_STD, int(side), "bilinear", [
            "no image-processor config: ImageNet mean/std assumed"]
    side = (_size_of(getattr(proc, "crop_size", None)) if getattr(proc, "do_center_crop", False) else None) \
        or _size_of(getattr(proc, "size", None)) or 224
    mean = tuple(float(m) for m in (proc.image_mean if proc.image_mean is not None else IMAGENET_MEAN))
    std = tuple(float(s) for s in (proc.image_std if proc.image_std is not None else IMAGENET_STD))
    resample = getattr(proc, "resample", None)
    return mean, std, side, RESAMPLE.get(int(resample), "bilinear") if resample is not None else "bilinear", []


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def _tokens(config: Any, size: int) -> tuple[int, tuple[int, int]] | None:
    """(prefix, patch grid) of a token model from its config: class, distillation and register tokens."""
    if config.model_type not in PREFIX:
        return None
    ph, pw = _pair(config.patch_size)
    prefix = PREFIX[config.model_type] + int(getattr(config, "num_register_tokens", 0) or 0)
    return prefix, (size // ph, size // pw)


def _stage_tokens(config: Any, size: int) -> tuple[int, tuple[int, int]] | None:
    """Swin: the last stage's token grid, so its (B, L, C) outputs are readable layers (no prefix)."""
    if config.model_type not in WINDOWED:
        return None
    ph, pw = _pair(config.patch_size)
    down = 2 ** (len(config.depths) - 1)
    return 0, (size // ph // down, size // pw // down)


def _categories(config: Any) -> list[str]:
    """id2label in index order; transformers' placeholder names (LABEL_i) become `class i`."""
    labels = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    n = int(getattr(config, "num_labels", len(labels)))
    return [f"class {i}" if re.fullmatch(r"LABEL_\d+", labels.get(i, "LABEL_0")) else labels[i] for i in range(n)]


def _default_layer(model: nn.Module, layers: dict[str, LayerInfo], n: int, token_model: bool) -> str:
    """A token model's last encoder layer; else the last feature stage."""
    blocks = [k for k, i in layers.items() if re.search(r"\.layers?\.\d+$", k) and i.layout.kind == "NLC"]
    if token_model and blocks:
        return blocks[-1]
    return last_stage(model, layers, n)


@register_family("hf", summary="a Hugging Face image classifier: hub id or save_pretrained folder (the hf extra)",
                 syntax="hf:ORG/NAME or hf:DIR")
def load_hf(name: str, weights: WeightsSpec, *, input_size: int | None = None,
            device: torch.device = torch.device("cpu")) -> Backbone:
    """`hf:ID_OR_DIR` with --weights DEFAULT (its own weights), a revision TAG, a FILE, or none."""
    ref = name.removeprefix("hf:")
    model, config, described, src, kw = _build(ref, weights)
    mean, std, side, resample, notes = _preprocessing(src, kw, config)
    return hf_backbone(model, name, described, weights.pretrained, (mean, std, side, resample, notes),
                       input_size=input_size, device=device)


def hf_backbone(model: nn.Module, name: str, described: str, pretrained: bool,
                preprocessing: tuple[tuple, tuple, int, str, list[str]] | None = None, *,
                input_size: int | None = None, device: torch.device = torch.device("cpu")) -> Backbone:
    """A built transformers classifier as a Backbone: its config says classes, tokens and size.

    `preprocessing`: (mean, std, side, resampling, notes) from its image processor; None: ImageNet's, noted."""
    config = model.config
    model.eval().to(device)
    if preprocessing is None:
        side0 = _pair(getattr(config, "image_size", 224))[0]
        preprocessing = IMAGENET_MEAN, IMAGENET_STD, side0, "bilinear", [
            "no image processor given: ImageNet mean/std assumed (pass mean=, std=)"]
    mean, std, side, resample, notes = preprocessing
    if config.model_type in FIXED_SIZE:
        side = check_input_size(name, input_size, _pair(config.image_size)[0])
    elif input_size:
        side = input_size
    tokens = _tokens(config, side)
    categories = _categories(config)
    try:
        layers, order = describe_layers(model, side, device, tokens or _stage_tokens(config, side))
    except RuntimeError as e:
        raise AttnvizError(f"{name} cannot run on {side}px inputs ({one_line(e)}); try another --input-size") from None
    head, pooled = find_classifier(order, layers, len(categories))
    try:
        default = _default_layer(model, layers, len(categories), tokens is not None)
    except ValueError:
        raise AttnvizError(f"{name} produces no spatial feature map to read") from None
    return HfBackbone(name=name, model=model, weights=described, pretrained=pretrained,
                      token_head=_token_head(model, tokens, side, device),
                      categories=categories, mean=mean, std=std, input_size=side, default_layer=default,
                      layers=layers, classifier=head, classifier_layer=pooled, tokens=tokens, device=device,
                      notes=notes, interpolation=resample)
