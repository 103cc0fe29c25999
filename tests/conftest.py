"""Shared fixtures: small feature maps and tiny image trees built in code."""
from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

# receptive fields measured by the tests are cached here, never in the user's cache
os.environ.setdefault("ATTNVIZ_CACHE", tempfile.mkdtemp(prefix="attnviz-test-cache-"))


@pytest.fixture
def feats() -> torch.Tensor:
    """A fixed random feature map batch (B=2, C=16, H=5, W=7): non-square on purpose."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 16, 5, 7, generator=g)
    f[:, :4] += 2.0   # some channels stronger than others so channel weights spread
    return f.relu() + 0.1 * f


@pytest.fixture(scope="session")
def resnet18_small():
    """A random-init resnet18 at 64 px with calibrated BatchNorm statistics (not degenerate)."""
    from attnviz.backbones import load_backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone("resnet18", "none", input_size=64, seed=0)
    calibrate_bn(bb.model, torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    return bb


def calibrate_bn(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Reset BatchNorm running stats and re-estimate them on `x` in train mode, then eval."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth random RGB image with some structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 7 + seed), np.cos(yy / 5), np.sin((xx + yy) / 11)], axis=-1)
    img = (base * 100 + 128 + rng.normal(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
    return Image.fromarray(img)
