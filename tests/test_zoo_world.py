"""The demo world: seeded, consistent ground truth, captions and the distractor rule."""
from __future__ import annotations

import time

import numpy as np
import pytest

from attnviz.zoo.world import (CATEGORIES, COLOUR_RGB, COLOURS, SHAPES, caption,
                                captions, category_index, hard_negative_captions, make_scene,
                                make_scenes, parse_caption)
from attnviz.demo.train import negative_captions

SCENES = make_scenes(150, seed=123)


def _saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    mx, mn = rgb.max(-1), rgb.min(-1)
    return (mx - mn) / np.maximum(mx, 1)


def test_seeded_determinism():
    a, b = make_scenes(5, seed=7), make_scenes(5, seed=7)
    for sa, sb in zip(a, b):
        assert np.array_equal(sa.image, sb.image)
        assert [(o.shape, o.colour, o.box) for o in sa.objects] == \
               [(o.shape, o.colour, o.box) for o in sb.objects]
        for oa, ob in zip(sa.objects, sb.objects):
            assert np.array_equal(oa.mask, ob.mask)
    c = make_scenes(5, seed=8)
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c))
    assert np.array_equal(make_scene(42).image, make_scene(np.random.default_rng(42)).image)


def test_image_format_and_size():
    s = SCENES[0]
    assert s.image.dtype == np.uint8 and s.image.shape == (96, 96, 3) and s.size == 96
    big = make_scene(3, size=128)
    assert big.image.shape == (128, 128, 3)
    assert all(o.mask.shape == (128, 128) for o in big.objects)
    with pytest.raises(ValueError):
        make_scene(0, n_objects=4)


def test_object_counts_and_categories():
    counts = np.bincount([len(s.objects) for s in SCENES], minlength=4)
    assert counts[0] == 0 and all(counts[1:] > 20)          # 1, 2 and 3 objects all occur
    seen = {o.category for s in SCENES for o in s.objects}
    assert len(seen) >= 20 and seen <= set(CATEGORIES)
    assert len(CATEGORIES) == len(SHAPES) * len(COLOURS)
    for s in SCENES:
        assert len({o.category for o in s.objects}) == len(s.objects)   # no repeated category


def test_boxes_tight_around_masks_and_disjoint():
    for s in SCENES:
        union = np.zeros(s.image.shape[:2], int)
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= s.size and 0 <= y0 < y1 <= s.size
            ys, xs = np.nonzero(o.mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
            assert o.mask.sum() >= 0.3 * (x1 - x0) * (y1 - y0)    # a real shape, not a speck
            union += o.mask
        assert union.max() <= 1                                     # masks never overlap
        boxes = [o.box for o in s.objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _solid_blocks(flag: np.ndarray, k: int) -> np.ndarray:
    """(H-k+1, W-k+1) bool: the k×k window anchored at each pixel is all True."""
    c = np.pad(flag.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return sums == k * k


def test_object_colour_is_inside_its_box():
    """Mask pixels carry the object's colour (nearest named colour, saturated) and lie in its
    box; any solid saturated 6×6 patch of the image belongs to an object (clutter is thin)."""
    names = list(COLOUR_RGB)
    ref = np.array([COLOUR_RGB[n] for n in names], np.float32)
    for s in SCENES:
        objects = np.zeros(s.image.shape[:2], bool)
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            in_box = np.zeros_like(o.mask)
            in_box[y0:y1, x0:x1] = True
            assert not (o.mask & ~in_box).any()
            px = s.image[o.mask].astype(np.float32)
            nearest = np.argmin(((px[:, None, :] - ref[None]) ** 2).sum(-1), 1)
            assert np.mean(nearest == names.index(o.colour)) > 0.98
            assert np.median(_saturation(s.image[o.mask])) > 0.6
            objects |= o.mask
        k = 6
        saturated = (_saturation(s.image) > 0.5) & (s.image.max(-1) > 90)
        for y, x in zip(*np.nonzero(_solid_blocks(saturated, k))):
            assert objects[y:y + k, x:x + k].any(), (y, x)


def test_captions_match_objects():
    for s in SCENES:
        assert captions(s) == [o.caption for o in s.objects]
        for o in s.objects:
            assert o.caption == f"the {o.colour} {o.shape}" == caption(o.colour, o.shape)
            assert parse_caption(o.caption) == (o.colour, o.shape)
            assert s.object_for(o.caption) is o
            assert CATEGORIES[o.label] == o.category
            assert category_index(o.colour, o.shape) == o.label
        assert s.presence().sum() == len(s.objects)
    with pytest.raises(ValueError, match="COLOUR"):
        parse_caption("the purple ring")


def test_distractor_rule():
    """Every distractor shares exactly one attribute (colour or shape) with the target."""
    shared_colour = shared_shape = 0
    for s in SCENES:
        t = s.objects[0]
        for d in s.objects[1:]:
            same_c, same_s = d.colour == t.colour, d.shape == t.shape
            assert same_c != same_s
            shared_colour += same_c
            shared_shape += same_s
    assert shared_colour > 20 and shared_shape > 20


def test_negative_captions_are_absent_and_share_an_attribute():
    rng = np.random.default_rng(0)
    for s in SCENES[:50]:
        present = {(o.colour, o.shape) for o in s.objects}
        hard = hard_negative_captions(s)
        assert hard
        for c in hard:
            col, shp = parse_caption(c)
            assert (col, shp) not in present
            assert any(col == pc or shp == ps for pc, ps in present)
            assert s.object_for(c) is None
        for c in negative_captions(s, rng, k=5):
            assert s.object_for(c) is None


def test_generation_is_fast():
    t = time.perf_counter()
    make_scenes(500, seed=1)
    per = (time.perf_counter() - t) / 500
    # about 0.8 ms on an idle core (60k scenes in under a minute); generous for busy machines
    assert per < 0.01, f"{per * 1e3:.2f} ms per scene"


def test_scene_of_given_categories():
    """`categories=` draws exactly those objects (DemoViT's free scenes); the default stream is unchanged."""
    s = make_scene(5, categories=[("red", "square"), ("blue", "circle")])
    assert [(o.colour, o.shape) for o in s.objects] == [("red", "square"), ("blue", "circle")]
    assert s.presence()[[CATEGORIES.index("red square"), CATEGORIES.index("blue circle")]].all()
    assert s.presence().sum() == 2 and not s.presence()[CATEGORIES.index("red circle")]
    assert np.array_equal(make_scene(5).image, make_scene(5, categories=None).image)
