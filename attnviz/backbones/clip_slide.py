"""CLIP `--slide WINDOW,STRIDE[,SHORT]`: overlapping crops of a larger view, patch embeddings averaged back.

The standard inference of MaskCLIP, SCLIP, ClearCLIP and NACLIP (mmseg's slide mode): the image is resized
to a short side of SHORT px (aspect kept; default 1.5 × WINDOW, the published 336 px for 224 px windows),
cut into WINDOW px squares every STRIDE px (the last row and column flush with the edge), each square run
through the image tower at its own input size, and each cell's t̂_i averaged over the crops that cover it.
Since c_i = q · t̂_i is linear in t̂_i, the result is the mean of the crops' similarities placed back.
"""
from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from attnviz.backbones.clip_core import PatchTokens, encode_variants
from attnviz.backbones.clip_load import ClipBundle
from attnviz.errors import AttnvizError
from attnviz.images import RESAMPLING, to_rgb
from attnviz.settings import Slide, parse_slide   # torch-free: the CLI checks --slide before loading torch

__all__ = ["Slide", "parse_slide", "check_slide", "slide_layout", "slide_view", "slide_tokens", "MAX_LONG", "CHUNK"]

MAX_LONG = 2048      # longest side of the resized view, in window pixels (mmseg's Resize(2048, SHORT))
CHUNK = 16           # crops per tower pass (bounds memory on large views)


def check_slide(slide: Slide, grid: tuple[int, int], arch: str) -> None:
    """Crops must fall on the patch grid: STRIDE a whole number of a window's patches."""
    g = grid[0]
    if (slide.stride * g) % slide.window:
        step = slide.window / g
        good = max(1, round(slide.stride / step)) * step
        raise AttnvizError(f"--slide {slide.window},{slide.stride}: CLIP {arch} sees a window as {g}x{g} patches of "
                           f"{step:g} px, so STRIDE must be a multiple of {step:g} (e.g. {good:g})")


def slide_layout(size: tuple[int, int], slide: Slide, image_size: int, grid: tuple[int, int]
                 ) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """For an image of (width, height): the view's (height, width) in tower pixels and the crops' (y, x) corners."""
    w, h = size
    S, g = image_size, grid[0]
    p = S // g                                                            # patch side in tower pixels
    f = min(slide.short / min(w, h), MAX_LONG / max(w, h)) * S / slide.window   # image px -> tower px
    H, W = (max(S, p * round(side * f / p)) for side in (h, w))
    step = slide.stride * S // slide.window                               # a multiple of p (check_slide)

    def starts(length: int) -> list[int]:
        n = max(length - S + step - 1, 0) // step + 1
        return list(dict.fromkeys(max(min(i * step + S, length) - S, 0) for i in range(n)))
    return (H, W), [(y, x) for y in starts(H) for x in starts(W)]


def slide_view(image: Image.Image, hw: tuple[int, int], mean, std, interpolation: str = "bicubic") -> torch.Tensor:
    """The image resized to (H, W) like Analyser.preprocess (the model's resampling, [0, 1], normalised):
    (1, 3, H, W)."""
    H, W = hw
    resample = RESAMPLING.get(interpolation, Image.Resampling.BILINEAR)    # as Analyser.to_tensor
    data = torch.frombuffer(bytearray(to_rgb(image).resize((W, H), resample).tobytes()),
                            dtype=torch.uint8).reshape(H, W, 3)
    x = data.permute(2, 0, 1)[None].float() / 255.0
    return (x - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]


def slide_tokens(bundle: ClipBundle, image: Image.Image, slide: Slide, variants: tuple[str, ...],
                 embedding: torch.Tensor) -> tuple[dict[str, PatchTokens], dict[str, Any]]:
    """Every variant's cell-averaged t̂_i over the crops (one tower pass per chunk of crops, shared by the
    variants), with `embedding` (1, E) as the image embedding; and the manifest record of the slide."""
    S, (g, _) = bundle.image_size, bundle.grid
    p = S // g
    (H, W), corners = slide_layout(image.size, slide, S, bundle.grid)
    view = slide_view(image, (H, W), bundle.mean, bundle.std, bundle.interpolation)             # (1, 3, H, W)
    sums = {v: torch.zeros(H // p, W // p, embedding.shape[-1]) for v in variants}
    count = torch.zeros(H // p, W // p, 1)
    for start in range(0, len(corners), CHUNK):
        chunk = corners[start:start + CHUNK]
        crops = torch.cat([view[:, :, y:y + S, x:x + S] for y, x in chunk])   # (n, 3, S, S)
        tokens = encode_variants(bundle, crops, variants)
        for i, (y, x) in enumerate(chunk):
            cell = (slice(y // p, y // p + g), slice(x // p, x // p + g))
            count[cell] += 1
            for v in variants:
                sums[v][cell] += tokens[v].patches[i].reshape(g, g, -1)
    out = {v: PatchTokens(patches=(sums[v] / count).reshape(1, -1, sums[v].shape[-1]), image=embedding,
                          grid=(H // p, W // p), variant=v) for v in variants}
    return out, {**slide.as_dict(), "crops": len(corners), "view": [W, H]}
