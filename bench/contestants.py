"""The contestants `bench/run.py` times that are not attnviz itself, each run as its own process.

    python bench/contestants.py {bare,gradcam,torchcam} PHOTOS WEIGHTS OUT [--batch-size 8] [--size 512]
                                [--arch resnet50] [--device cpu]

Every contestant decodes the same photos, squashes them to 224² and normalises them with the
ImageNet mean/std (as attnviz does), and runs a torchvision ResNet-50 loaded from WEIGHTS in
batches. The two peers then draw ONE Grad-CAM overlay per image (longest side --size, like
attnviz's overlays) and write it as PNG, the way each library's README shows.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

# (a'') BENCH_PAUSE_GC=1: the collector paused from here until the model is loaded, then what was
# made frozen — what attnviz's CLI does (attnviz.cli.common.StartUp): the bare forward with it
if os.environ.get("BENCH_PAUSE_GC") == "1":
    gc.disable()

import numpy as np
import torch
import torchvision
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
INPUT = 224


def photos(folder: Path) -> list[Path]:
    """The photos of the bench folder, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def decode(path: Path) -> Image.Image:
    """Decode to RGB (what every contestant has to do)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def preprocess(images: list[Image.Image]) -> torch.Tensor:
    """Whole image squashed to 224², [0, 1], normalised: (B, 3, 224, 224)."""
    arrays = [np.asarray(im.resize((INPUT, INPUT), Image.Resampling.BILINEAR)) for im in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN)[None, :, None, None]) / torch.tensor(STD)[None, :, None, None]


def model(weights: Path, arch: str = "resnet50") -> torch.nn.Module:
    """A torchvision model (ResNet-50 unless told) with the bench's shared random weights."""
    net = getattr(torchvision.models, arch)(weights=None)
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net.eval()


def fitted(im: Image.Image, size: int) -> Image.Image:
    """The image with its longest side `size` (what the overlay is drawn on)."""
    scale = size / max(im.size)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                     Image.Resampling.LANCZOS)


def batches(paths: list[Path], n: int):
    """Decoded batches of n images, with their paths."""
    for i in range(0, len(paths), n):
        chunk = paths[i:i + n]
        yield chunk, [decode(p) for p in chunk]


def bare(paths: list[Path], net: torch.nn.Module, out: Path, bs: int, size: int) -> None:
    """(a) decode, preprocess, batched forward (on the model's device); nothing written."""
    device = next(net.parameters()).device
    with torch.inference_mode():
        for _, images in batches(paths, bs):
            net(preprocess(images).to(device)).cpu()       # the logits back, as any user reads them


def gradcam(paths: list[Path], net: torch.nn.Module, out: Path, bs: int, size: int) -> None:
    """(c) pytorch-grad-cam GradCAM on layer4, show_cam_on_image, cv2.imwrite (its README)."""
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    with GradCAM(model=net, target_layers=[net.layer4[-1]]) as cam:
        for chunk, images in batches(paths, bs):
            maps = cam(input_tensor=preprocess(images), targets=None)       # (B, 224, 224)
            for p, im, m in zip(chunk, images, maps):
                rgb = np.asarray(fitted(im, size), dtype=np.float32) / 255.0
                m = cv2.resize(m, (rgb.shape[1], rgb.shape[0]))
                vis = show_cam_on_image(rgb, m, use_rgb=False)               # BGR for cv2
                cv2.imwrite(str(out / f"{p.stem}.png"), vis)


def torchcam(paths: list[Path], net: torch.nn.Module, out: Path, bs: int, size: int) -> None:
    """(d) TorchCAM GradCAM on layer4, overlay_mask, PIL PNG (its README)."""
    from torchcam.methods import GradCAM
    from torchcam.utils import overlay_mask
    from torchvision.transforms.functional import to_pil_image
    with GradCAM(net, target_layer="layer4") as extractor:
        for chunk, images in batches(paths, bs):
            logits = net(preprocess(images))
            cams = extractor(logits.argmax(1).tolist(), logits)[0]          # (B, 7, 7)
            for p, im, m in zip(chunk, images, cams):
                shown = overlay_mask(fitted(im, size), to_pil_image(m.detach(), mode="F"), alpha=0.5)
                shown.save(out / f"{p.stem}.png")


def main(argv: list[str] | None = None) -> None:
    """Run one contestant over every photo."""
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=["bare", "gradcam", "torchcam"])
    ap.add_argument("photos", type=Path)
    ap.add_argument("weights", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--arch", default="resnet50", help="torchvision model (bare: the GPU mode's vit_b_16 too)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    run = {"bare": bare, "gradcam": gradcam, "torchcam": torchcam}[a.name]
    net = model(a.weights, a.arch).to(a.device)
    if not gc.isenabled():          # BENCH_PAUSE_GC: start-up is over
        gc.freeze()
        gc.enable()
    run(photos(a.photos), net, a.out, a.batch_size, a.size)


if __name__ == "__main__":
    sys.exit(main())
