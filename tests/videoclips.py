"""Videos made in code for the tests: an object of the demo world moving across its background."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from attnviz.zoo import world


def moving_object(path: Path, frames: int = 12, size: int = 96, fps: int = 10, seed: int = 3,
                  codec: str = "libx264") -> tuple[list[tuple[int, int, int, int]], str]:
    """Write a clip of one demo-world object sliding left to right over a cluttered background;
    the object's box (x0, y0, x1, y1) in every frame, and its caption."""
    import av
    scene = world.make_scene(seed, size=size, n_objects=1)
    obj = scene.objects[0]
    x0, y0, x1, y1 = obj.box
    patch, mask = scene.image[y0:y1, x0:x1], obj.mask[y0:y1, x0:x1]
    background = np.clip(world._background(np.random.default_rng(seed), size), 0, 255).astype(np.uint8)
    boxes = []
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            img = background.copy()
            px = int(2 + (size - (x1 - x0) - 4) * i / max(1, frames - 1))
            img[y0:y1, px:px + x1 - x0][mask] = patch[mask]
            boxes.append((px, y0, px + x1 - x0, y1))
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return boxes, obj.caption


def noise_clip(path: Path, frames: int, size: tuple[int, int] = (160, 120), fps: int = 10, codec: str = "libx264",
               seed: int = 0) -> None:
    """A clip of smooth random frames (hard to compress: its bytes grow with its length)."""
    import av
    rng = np.random.default_rng(seed)
    w, h = size
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def hits(boxes, peaks) -> list[bool]:
    """Pointing game per frame: the peak (x, y) inside that frame's box."""
    return [b[0] <= p[0] <= b[2] and b[1] <= p[1] <= b[3] for b, p in zip(boxes, peaks)]
