"""A small world with known answers: seeded scenes of coloured shapes on cluttered backgrounds.

Every scene is an RGB image (``size × size``, uint8) with 1–3 objects. Each object is one of
``len(SHAPES) × len(COLOURS)`` categories ("red circle", "blue ring" ...), carries its
ground-truth mask and box and a caption ("the blue ring"). The first object is the *target*;
every other object (a *distractor*) shares exactly one attribute with it — its colour or its
shape — so that only attention to the right object can tell, for example, "the blue ring"
from "the blue square" or "the red ring". No two objects of a scene share both attributes,
and objects never overlap (their boxes keep a gap of at least ``GAP`` pixels).

The background is textured (grey-tinted blotches, stripes or checks, grey bars, blobs and
boxes) and cluttered with thin saturated strokes and small specks, some in the objects' own
colours; objects are solid saturated shapes at least ``MIN_FRAC × size`` across, while strokes
are at most ~2 px wide and specks at most 5 px across, so the answer to "where is it" is
unambiguous.

Coordinates: a box is ``(x0, y0, x1, y1)`` in pixels, ``x`` the column and ``y`` the row,
``x1`` and ``y1`` exclusive (the numpy slice ``image[y0:y1, x0:x1]`` is the object's
bounding box, tight around its mask). In continuous image coordinates (pixel ``k`` covers
``[k, k+1)``) the box is the rectangle ``[x0, x1] × [y0, y1]``.

Determinism: ``make_scene(seed)`` and ``make_scenes(n, seed)`` give identical scenes for
identical arguments on every platform (only ``numpy.random.Generator`` draws are used).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

__all__ = [
    "SHAPES", "COLOURS", "COLOUR_RGB", "CATEGORIES", "WORDS", "DEFAULT_SIZE", "GAP",
    "SceneObject", "Scene", "make_scene", "make_scenes", "caption", "category_index",
    "parse_caption", "captions", "hard_negative_captions",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 175, 50),
    "blue": (45, 75, 230),
    "yellow": (235, 210, 30),
}
_OBJECT_RGB = np.array([COLOUR_RGB[c] for c in COLOURS], np.float32)
#: Category names in class-index order: colour-major ("red circle", "red square", ...).
CATEGORIES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
#: The caption words, besides the colour and shape names.
WORDS: tuple[str, ...] = ("the", "a")
DEFAULT_SIZE = 96
GAP = 2                     # minimum gap between two object boxes, pixels
MIN_FRAC, MAX_FRAC = 0.17, 0.31     # object diameter as a fraction of the image size
N_STROKES = (4, 10)                 # thin saturated strokes / specks of clutter per scene
_EXTRA_RGB = np.array([(220, 40, 220), (40, 210, 220), (240, 130, 20), (130, 40, 200)],
                      np.float32)   # saturated hues that are not object colours


def category_index(colour: str, shape: str) -> int:
    """Class index of a (colour, shape) pair in :data:`CATEGORIES`."""
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


def caption(colour: str, shape: str) -> str:
    """The caption of an object: ``"the blue ring"``."""
    return f"the {colour} {shape}"


def parse_caption(text: str) -> tuple[str, str]:
    """(colour, shape) named by a caption such as ``"the blue ring"`` or ``"blue ring"``."""
    words = [w for w in text.lower().split() if w not in WORDS]
    if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
        raise ValueError(
            f"caption {text!r} must be '[the|a] COLOUR SHAPE' with COLOUR in {list(COLOURS)} "
            f"and SHAPE in {list(SHAPES)}")
    return words[0], words[1]


@dataclass
class SceneObject:
    """One object of a scene, with its ground truth."""

    shape: str
    colour: str
    box: tuple[int, int, int, int]      # (x0, y0, x1, y1), pixels, x1/y1 exclusive
    mask: np.ndarray                    # (H, W) bool, the object's pixels
    caption: str                        # "the blue ring"

    @property
    def category(self) -> str:
        """Category name, e.g. ``"blue ring"``."""
        return f"{self.colour} {self.shape}"

    @property
    def label(self) -> int:
        """Class index into :data:`CATEGORIES`."""
        return category_index(self.colour, self.shape)


@dataclass
class Scene:
    """An image with its objects. ``objects[0]`` is the target, the rest are distractors."""

    image: np.ndarray                   # (H, W, 3) uint8 RGB
    objects: list[SceneObject] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    @property
    def labels(self) -> list[int]:
        """Class indices of the objects present."""
        return [o.label for o in self.objects]

    def presence(self) -> np.ndarray:
        """(len(CATEGORIES),) float32 multi-hot vector of the categories present."""
        v = np.zeros(len(CATEGORIES), np.float32)
        v[self.labels] = 1.0
        return v

    def object_for(self, text: str) -> SceneObject | None:
        """The object a caption names, or None when it is absent."""
        colour, shape = parse_caption(text)
        for o in self.objects:
            if o.colour == colour and o.shape == shape:
                return o
        return None


# --------------------------------------------------------------------------- shapes

@lru_cache(maxsize=None)
def _unit_coords(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of an n×n patch mapped to [-1, 1] (u right, v down)."""
    t = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
    return t[None, :].repeat(n, 0), t[:, None].repeat(n, 1)


def _shape_mask(shape: str, n: int) -> np.ndarray:
    """(n, n) bool mask of a shape filling an n-pixel square."""
    u, v = _unit_coords(n)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.84) & (np.abs(v) <= 0.84)
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.52 ** 2)
    if shape == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a <= 0.3) & (b <= 0.97)) | ((b <= 0.3) & (a <= 0.97))
    if shape == "triangle":
        # apex (0, -0.95), base corners (±0.98, 0.85): inside all three half-planes
        top, base, half = -0.95, 0.85, 0.98
        slope = (base - top) / half
        return (v <= base) & (v >= top + slope * np.abs(u))
    if shape == "star":
        # five points, one up: the radius limit zig-zags between the tips and the valleys
        r = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u) + np.pi / 2           # 0 at the top tip
        period = 2 * np.pi / 5
        t = np.mod(theta, period) / period              # 0..1 between two tips
        tri = np.abs(2.0 * t - 1.0)                     # 1 at tips, 0 at valleys
        inner = 0.42
        return r <= inner + (1.0 - inner) * tri ** 1.3
    raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")


@lru_cache(maxsize=None)
def _cached_mask(shape: str, n: int) -> np.ndarray:
    m = _shape_mask(shape, n)
    m.setflags(write=False)
    return m


# --------------------------------------------------------------------------- background

@lru_cache(maxsize=None)
def _interp_matrix(size: int, coarse: int) -> np.ndarray:
    """(size, coarse) bilinear interpolation matrix (1-D), pixel centres aligned."""
    pos = (np.arange(size) + 0.5) / size * coarse - 0.5
    pos = np.clip(pos, 0, coarse - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, coarse - 1)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((size, coarse), np.float32)
    m[np.arange(size), lo] += 1 - w
    m[np.arange(size), hi] += w
    return m


@lru_cache(maxsize=None)
def _coords1d(size: int) -> np.ndarray:
    c = np.arange(size, dtype=np.float32)
    c.setflags(write=False)
    return c


def _desaturated(rng: np.random.Generator, lo: float = 60, hi: float = 190,
                 sat: float = 0.22) -> np.ndarray:
    """A random grey-ish RGB colour (saturation ≤ ``sat``)."""
    grey = rng.uniform(lo, hi)
    tint = rng.uniform(-1, 1, 3)
    return (grey * (1 + sat * tint)).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 textured, cluttered background (no object-sized saturated region)."""
    base = _desaturated(rng, 70, 170, 0.15)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    # low-frequency blotches (luminance with a weak tint)
    coarse = 6
    m = _interp_matrix(size, coarse)
    blot = m @ rng.standard_normal((coarse, coarse), dtype=np.float32) @ m.T
    img += (rng.uniform(12, 30) * blot)[..., None] * (1 + 0.15 * rng.uniform(-1, 1, 3)).astype(np.float32)
    # stripes / checker texture; sin(a x + b y + p) is separable, so build it from 1-D factors
    k = rng.uniform(4, 14)
    ang = rng.uniform(0, np.pi)
    phase = rng.uniform(0, 2 * np.pi)
    w = 2 * np.pi * k / size
    t = np.arange(size, dtype=np.float32)
    ax, ay = w * np.cos(ang) * t, w * np.sin(ang) * t + phase
    tex = np.outer(np.cos(ay), np.sin(ax)) + np.outer(np.sin(ay), np.cos(ax))
    if rng.random() < 0.4:    # checker: times sin(-sin·x + cos·y)
        bx, by = -w * np.sin(ang) * t, w * np.cos(ang) * t
        tex *= np.outer(np.cos(by), np.sin(bx)) + np.outer(np.sin(by), np.cos(bx))
    img += (rng.uniform(6, 20) * tex.astype(np.float32))[..., None]
    # clutter: grey-ish bars, blobs and boxes, then thin coloured strokes and specks; every
    # item's parameters come from one bulk draw (10 uniforms per item)
    n_grey = int(rng.integers(4, 11))
    n_col = int(rng.integers(N_STROKES[0], N_STROKES[1] + 1))
    params = rng.random((n_grey + n_col, 10))
    coord = _coords1d(size)
    for k in range(n_grey + n_col):
        p = params[k].tolist()
        if k < n_grey:
            grey = 40.0 + 180.0 * p[0]
            col = grey * (1.0 + 0.25 * (2.0 * params[k, 1:4] - 1.0))
            kind, alpha = min(int(p[4] * 3), 2), 0.6
        else:
            pool = _OBJECT_RGB if p[0] < 0.6 else _EXTRA_RGB
            col = pool[min(int(p[1] * len(pool)), len(pool) - 1)] + 40.0 * (params[k, 2:5] - 0.5)
            kind, alpha = (3 if p[4] < 0.7 else 4), 0.9
        _clutter_item(img, coord, col.astype(np.float32), kind, alpha, p[5:])
    return img


def _clutter_item(img: np.ndarray, coord: np.ndarray, col: np.ndarray, kind: int,
                  alpha: float, p: list[float]) -> None:
    """Blend one clutter item into ``img`` in place: 0 bar, 1 blob, 2 box, 3 thin stroke,
    4 speck; ``p``: 5 uniforms in [0, 1) for its geometry. Strokes (≤ 2 px wide) and specks
    (≤ 5 px across) are far thinner and smaller than any object, so they never look like one
    of the shapes."""
    size = img.shape[0]
    cx, cy = p[0] * size, p[1] * size
    if kind in (0, 3):      # bar / stroke (long, any direction)
        a = p[2] * math.pi
        if kind == 0:
            half_len, half_w = 6.0 + 16.0 * p[3], 0.6 + 1.2 * p[4]
        else:
            half_len, half_w = 4.0 + 12.0 * p[3], 0.5 + 0.5 * p[4]
        reach = half_len + half_w
    elif kind in (1, 4):    # blob / speck
        r = 2.0 + 5.0 * p[3] if kind == 1 else 1.0 + 1.5 * p[3]
        reach = r
    else:                   # box
        hw, hh = 2.0 + 6.0 * p[3], 2.0 + 6.0 * p[4]
        reach = max(hw, hh)
    x0, x1 = max(0, int(cx - reach)), min(size, int(cx + reach) + 2)
    y0, y1 = max(0, int(cy - reach)), min(size, int(cy + reach) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    xs, ys = coord[x0:x1] - cx, coord[y0:y1] - cy          # pixel index coordinates
    if kind in (0, 3):
        ca, sa = math.cos(a), math.sin(a)
        along = ys[:, None] * sa + xs[None, :] * ca
        across = ys[:, None] * ca - xs[None, :] * sa
        sel = (np.abs(along) <= half_len) & (np.abs(across) <= half_w)
    elif kind in (1, 4):
        sel = (ys * ys)[:, None] + (xs * xs)[None, :] <= r * r
    else:
        sel = (np.abs(ys) <= hh)[:, None] & (np.abs(xs) <= hw)[None, :]
    win = img[y0:y1, x0:x1]
    win[sel] = alpha * col + (1.0 - alpha) * win[sel]


# --------------------------------------------------------------------------- scenes

def _choose_categories(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """A target (colour, shape) and n-1 distinct distractors each sharing one attribute with it."""
    tc = COLOURS[rng.integers(len(COLOURS))]
    ts = SHAPES[rng.integers(len(SHAPES))]
    chosen = [(tc, ts)]
    while len(chosen) < n:
        if rng.random() < 0.5:      # same colour, other shape
            cand = (tc, SHAPES[rng.integers(len(SHAPES))])
        else:                       # same shape, other colour
            cand = (COLOURS[rng.integers(len(COLOURS))], ts)
        if cand not in chosen:
            chosen.append(cand)
    return chosen


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in boxes:
        if x0 < a1 + GAP and a0 < x1 + GAP and y0 < b1 + GAP and b0 < y1 + GAP:
            return True
    return False


@lru_cache(maxsize=None)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed (2·size, 2·size, 3) bank of pixel noise (σ = 4); scenes take seeded crops."""
    bank = np.random.default_rng(0x5EED).standard_normal((2 * size, 2 * size, 3), dtype=np.float32) * 4.0
    bank.setflags(write=False)
    return bank


def make_scene(rng: np.random.Generator | int | None = None, size: int = DEFAULT_SIZE,
               n_objects: int | None = None, categories: list[tuple[str, str]] | None = None) -> Scene:
    """One scene. ``rng``: a numpy Generator (advanced in place) or an int seed.

    ``n_objects`` (1–3) defaults to a uniform draw. The result is fully determined by the seed.
    ``categories``: the objects' (colour, shape) pairs instead of a target and its distractors
    (DemoViT's training draws some freely: see attnviz/demo/train_vit.py).
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    n = len(categories) if categories else int(rng.integers(1, 4)) if n_objects is None else int(n_objects)
    if not 1 <= n <= 3:
        raise ValueError(f"n_objects must be 1, 2 or 3, got {n}")
    img = _background(rng, size)
    cats = list(categories) if categories else _choose_categories(rng, n)
    objects: list[SceneObject] = []
    boxes: list[tuple[int, int, int, int]] = []
    lo, hi = max(8, round(MIN_FRAC * size)), max(10, round(MAX_FRAC * size))
    for colour, shape in cats:
        for _ in range(200):
            d = int(rng.integers(lo, hi + 1))
            px = int(rng.integers(1, size - d))
            py = int(rng.integers(1, size - d))
            mask = _cached_mask(shape, d)
            ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            box = (px + int(xs[0]), py + int(ys[0]), px + int(xs[-1]) + 1, py + int(ys[-1]) + 1)
            if not _overlaps(box, boxes):
                break
        else:  # pragma: no cover - 200 failed placements cannot happen with ≤3 objects
            raise RuntimeError("could not place the objects")
        rgb = np.asarray(COLOUR_RGB[colour], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
        # gentle shading across the object so that it is not perfectly flat
        u, v = _unit_coords(d)
        shade = 1.0 + 0.08 * (rng.uniform(-1, 1) * u + rng.uniform(-1, 1) * v)
        patch = img[py:py + d, px:px + d]
        patch[mask] = (rgb[None, None, :] * shade[..., None])[mask]
        full = np.zeros((size, size), bool)
        full[py:py + d, px:px + d] = mask
        boxes.append(box)
        objects.append(SceneObject(shape, colour, box, full, caption(colour, shape)))
    oy, ox = rng.integers(0, size, 2)
    img += _noise_bank(size)[oy:oy + size, ox:ox + size]
    image = np.clip(img, 0, 255, out=img).astype(np.uint8)
    # the final masks and boxes describe the pixels as drawn (objects never overlap)
    return Scene(image=image, objects=objects)


def make_scenes(n: int, seed: int = 0, size: int = DEFAULT_SIZE) -> list[Scene]:
    """``n`` scenes from one seeded stream (the same seed gives the same list)."""
    rng = np.random.default_rng(seed)
    return [make_scene(rng, size=size) for _ in range(n)]


# --------------------------------------------------------------------------- captions

def captions(scene: Scene) -> list[str]:
    """Captions of the objects present, target first."""
    return [o.caption for o in scene.objects]


def hard_negative_captions(scene: Scene) -> list[str]:
    """Captions of ABSENT categories that share a colour or a shape with a present object."""
    present = {(o.colour, o.shape) for o in scene.objects}
    out: list[str] = []
    for colour in COLOURS:
        for shape in SHAPES:
            if (colour, shape) in present:
                continue
            if any(colour == c or shape == s for c, s in present):
                out.append(caption(colour, shape))
    return out
