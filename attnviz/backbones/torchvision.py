"""Any torchvision classification model, described by torchvision's own API (weights enums, meta)."""
from __future__ import annotations

import contextlib
import difflib
import itertools
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torch import nn

from attnviz.backbones import hub
from attnviz.backbones.registry import register_family
from attnviz.backbones.base import (Backbone, LayerInfo, describe_layers, find_classifier,
                                    last_linear, last_stage)
from attnviz.backbones.weights import WeightsSpec, check_input_size, load_state_dict_file, warn_random
from attnviz.errors import AttnvizError, one_line

__all__ = ["load_torchvision", "classification_models", "torchvision_backbone", "torchvision_name"]

DOWNLOAD_TIMEOUT_S = 30


def classification_models() -> list[str]:
    """Every classification model torchvision knows (`torchvision.models.list_models`)."""
    return tvm.list_models(module=tvm)


def _weights_enum(name: str):
    try:
        return tvm.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def _resolve_weights(name: str, spec: WeightsSpec):
    """DEFAULT|ENUM_NAME|none|FILE -> the weights enum entry, or None (random init or a file)."""
    enum = _weights_enum(name)
    if spec.kind in ("none", "file"):
        return None
    if spec.kind == "default":
        if enum is None:
            raise AttnvizError(f"{name} has no pretrained weights in torchvision; pass --weights FILE or none")
        return enum.DEFAULT
    if enum is not None:
        short = spec.value.split(".")[-1]
        if short in enum.__members__:
            return enum[short]
        names = ", ".join(dict.fromkeys(["DEFAULT", *enum.__members__, "none"]))
        raise AttnvizError(f"--weights {spec.value!r}: not a file and not one of {names}")
    raise AttnvizError(f"--weights {spec.value!r}: no such file, and {name} has no torchvision weights")


def _cache_file(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _build_pretrained(name: str, weights) -> nn.Module:
    """get_model with the weights enum; a failed download is one line with the remedies."""
    cached = _cache_file(weights)
    if not cached.is_file() and hub.offline():    # ATTNVIZ_OFFLINE / HF_HUB_OFFLINE: no download try
        raise hub.missing(str(weights), cached.parent)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a closed network must fail, not hang
    try:
        return tvm.get_model(name, weights=weights)
    except Exception as e:  # urllib, hash and I/O errors all mean the same to the user
        reason = one_line(str(e).splitlines()[0] if str(e).strip() else e)
        raise AttnvizError(
            f"cannot get {weights} ({reason}); it is not in the hub cache at {cached}. "
            f"Remedies: run once with network access, copy the file there (or set TORCH_HOME "
            f"to a folder whose hub/checkpoints has it), pass --weights FILE, or --weights none"
        ) from None
    finally:
        socket.setdefaulttimeout(old)


def _build_from_file(name: str, path: Path) -> nn.Module:
    sd = load_state_dict_file(path)
    kw: dict[str, Any] = {}
    try:      # built without its random init (on "meta"): ~0.2 s of ResNet-50's start, all overwritten
        with torch.device("meta"):
            model = tvm.get_model(name, weights=None)
    except Exception:  # noqa: BLE001  (a builder that needs real tensors: the ordinary way)
        model = None
    model = model if model is not None else tvm.get_model(name, weights=None)
    head = last_linear(model)
    if head is not None and f"{head[0]}.weight" in sd:
        k = sd[f"{head[0]}.weight"].shape[0]
        if k != head[1].out_features:  # a fine-tuned head: rebuild with its class count
            kw["num_classes"] = k
            with torch.device("meta") if _on_meta(model) else contextlib.nullcontext():
                model = tvm.get_model(name, weights=None, **kw)
    fast = _on_meta(model) and takes_as_is(model, sd)
    if _on_meta(model) and not fast:
        model = tvm.get_model(name, weights=None, **kw)
    try:
        model.load_state_dict(sd, strict=True, assign=fast)
    except RuntimeError as e:
        raise AttnvizError(f"--weights {path} does not fit {name}: {one_line(e)}") from None
    return model


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


def takes_as_is(model: nn.Module, sd: dict[str, torch.Tensor]) -> bool:
    """Can `sd`'s tensors become `model`'s own (load_state_dict(assign=True)) with the very values,
    dtypes and layout a copy would give? Every parameter and buffer in `sd` (no buffer the file
    does not hold), the same names, shapes and dtypes, contiguous CPU tensors."""
    own = model.state_dict(keep_vars=True)
    names = {n for n, _ in itertools.chain(model.named_parameters(), model.named_buffers())}
    every = sum(1 for _ in itertools.chain(model.named_parameters(remove_duplicate=False),
                                           model.named_buffers(remove_duplicate=False)))
    if set(own) != set(sd) or not names <= set(sd) or every != len(names):   # a tied weight stays tied by a copy only
        return False
    return all(t.shape == own[k].shape and t.dtype == own[k].dtype and t.device.type == "cpu"
               and t.is_contiguous() and not t.requires_grad for k, t in sd.items())


def _vit_grid(model: nn.Module) -> tuple[int, tuple[int, int]] | None:
    """(prefix tokens, patch grid) for a torchvision ViT, read from the model."""
    if isinstance(model, tvm.VisionTransformer):
        side = model.image_size // model.patch_size
        return 1, (side, side)   # torchvision's ViT has one class token
    return None


def _default_layer(model: nn.Module, layers: dict[str, LayerInfo], n_classes: int) -> str:
    """The last feature stage (e.g. layer4, features); for a ViT its last encoder block."""
    if isinstance(model, tvm.VisionTransformer):
        return [n for n in layers if n.startswith("encoder.layers.") and n.count(".") == 2][-1]
    return last_stage(model, layers, n_classes)


@register_family("", summary="any torchvision classifier, with torchvision's weights enums",
                 syntax="NAME", names=lambda: classification_models())
def load_torchvision(name: str, weights: WeightsSpec, *, input_size: int | None = None,
                     device: torch.device = torch.device("cpu")) -> Backbone:
    """A torchvision classifier with its weights enum's categories, mean/std and input size."""
    known = classification_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else "see `attnviz backbones`"
        raise AttnvizError(f"unknown backbone {name!r}: {hint}")
    enum_entry = _resolve_weights(name, weights)
    file = weights.path if weights.kind == "file" else None
    meta_source = enum_entry or (_weights_enum(name).DEFAULT if _weights_enum(name) else None)
    if enum_entry is not None:
        model = _build_pretrained(name, enum_entry)
        described = str(enum_entry)
    elif file is not None:
        model = _build_from_file(name, file)
        described = str(file)
    else:
        warn_random(name)
        model = tvm.get_model(name, weights=None)
        described = "none"
    return torchvision_backbone(model, name, described, described != "none", meta_source,
                                input_size=input_size, device=device)


def torchvision_name(model: nn.Module) -> str | None:
    """The torchvision builder of a model instance: the one of its module whose default weights
    have exactly its parameter count (torchvision's own metadata); None when none or several fit."""
    module = type(model).__module__
    if not module.startswith("torchvision.models"):
        return None
    count = sum(p.numel() for p in model.parameters())
    fits = []
    for builder in (b for b in classification_models() if tvm.get_model_builder(b).__module__ == module):
        enum = _weights_enum(builder)
        if enum is not None and enum.DEFAULT.meta.get("num_params") == count:
            fits.append(builder)
    return fits[0] if len(fits) == 1 else None


def torchvision_backbone(model: nn.Module, name: str, described: str, pretrained: bool, meta_source: Any,
                         *, input_size: int | None = None, device: torch.device = torch.device("cpu")) -> Backbone:
    """A built torchvision classifier as a Backbone; `meta_source` (a weights enum entry) says its
    categories, mean/std and input size."""
    model.eval().to(device)

    categories: list[str] = list(meta_source.meta["categories"]) if meta_source else []
    n_classes = last_linear(model)[1].out_features if last_linear(model) else len(categories)
    if len(categories) != n_classes:
        categories = [f"class {i}" for i in range(n_classes)]
    tf = meta_source.transforms() if meta_source else None
    mean = tuple(tf.mean) if tf else (0.485, 0.456, 0.406)
    std = tuple(tf.std) if tf else (0.229, 0.224, 0.225)
    native_size = int(tf.crop_size[0]) if tf else 224
    if isinstance(model, tvm.VisionTransformer):
        input_size = check_input_size(name, input_size, model.image_size)
    size = input_size or native_size

    try:
        layers, order = describe_layers(model, size, device, _vit_grid(model))
    except RuntimeError as e:
        raise AttnvizError(f"{name} cannot run on {size}px inputs ({str(e).splitlines()[0]}); "
                           f"try another --input-size") from None
    head, pooled = find_classifier(order, layers, n_classes)
    tokens = _vit_grid(model)
    return Backbone(name=name, model=model, weights=described, pretrained=pretrained,
                    categories=categories, mean=mean, std=std, input_size=size,
                    default_layer=_default_layer(model, layers, n_classes), layers=layers,
                    classifier=head, classifier_layer=pooled, tokens=tokens, device=device)
