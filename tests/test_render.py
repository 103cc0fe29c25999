"""Renderers: overlay geometry and colours, channel charts, comparison grids."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image

from attnviz.render import (
    CHART_SIZE, GridCell, GridRow, bar_axes, channel_bars, channel_depth, colorize, fit, grid,
    grid_layout, grid_size, output_size, overlay, top_channels,
)
from attnviz.render.charts import _BAR, _DOT, _TOP, zoom_limits
from attnviz.render.grid import BACKGROUND, BOX_COLOUR, LETTERBOX

JET_HI = tuple(int(v) for v in matplotlib.colormaps["jet"](1.0, bytes=True)[:3])   # dark red
JET_LO = tuple(int(v) for v in matplotlib.colormaps["jet"](0.0, bytes=True)[:3])   # dark blue
GREY = (128, 128, 128)


def solid(w: int, h: int, colour: tuple[int, int, int] = GREY) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


# ---- output_size --------------------------------------------------------------------------------

@pytest.mark.parametrize("w, h, expected", [
    (3000, 2, (512, 1)), (2, 3000, (1, 512)), (1, 1, (512, 512)), (640, 480, (512, 384)),
    (480, 640, (384, 512)), (512, 512, (512, 512)),
])
def test_output_size(w: int, h: int, expected: tuple[int, int]) -> None:
    assert output_size(w, h) == expected


def test_output_size_other_size_and_bad_input() -> None:
    assert output_size(640, 480, 256) == (256, 192)
    with pytest.raises(ValueError):
        output_size(0, 10)
    with pytest.raises(ValueError):
        output_size(10, 10, 0)


# ---- colorize ---------------------------------------------------------------------------------------

def test_colorize_matches_matplotlib_viridis() -> None:
    vals = np.array([[0.0, 0.1, 0.25], [0.5, 0.999, 1.0]])
    got = colorize(vals, "viridis")
    want = matplotlib.colormaps["viridis"](vals, bytes=True)[..., :3]
    assert got.shape == (2, 3, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_colorize_clips_and_handles_nan() -> None:
    got = colorize(np.array([[-1.0, 2.0, np.nan]]), "jet")
    assert tuple(got[0, 0]) == JET_LO and tuple(got[0, 1]) == JET_HI and tuple(got[0, 2]) == JET_LO


def test_unknown_colormap_raises_listing_names() -> None:
    with pytest.raises(ValueError, match="viridis"):
        colorize(np.zeros((2, 2)), "not-a-colormap")
    with pytest.raises(ValueError, match="jet"):
        overlay(solid(10, 10), np.zeros((2, 2)), colormap="nope")
    with pytest.raises(ValueError):
        grid([GridRow(solid(10, 10), [GridCell("original")])], colormap="nope")


# ---- overlay ----------------------------------------------------------------------------------------

def test_overlay_orientation_hot_top_right_on_wide_image() -> None:
    m = np.zeros((4, 12), dtype=np.float32)
    m[0, -1] = 5.0                                   # the only hot cell: top-right
    out = overlay(solid(300, 100), m, size=512, alpha=1.0)
    assert out.mode == "RGB" and out.size == (512, 171)
    a = np.asarray(out).astype(int)
    assert tuple(a[0, -1]) == JET_HI                  # top-right corner: hottest colour
    assert tuple(a[-1, 0]) == JET_LO                  # bottom-left: coldest
    assert tuple(a[0, 0]) == JET_LO and tuple(a[-1, -1]) == JET_LO
    red = a[..., 0] - a[..., 2]                       # "redness"
    y, x = np.unravel_index(np.argmax(red), red.shape)
    assert y < 171 * 0.25 and x > 512 * 0.9


def test_overlay_blends_half_and_half() -> None:
    m = np.zeros((4, 12), dtype=np.float32)
    m[0, -1] = 1.0
    a = np.asarray(overlay(solid(300, 100, (200, 200, 200)), m, alpha=0.5)).astype(int)
    want = np.rint(0.5 * np.array([200, 200, 200]) + 0.5 * np.array(JET_HI)).astype(int)
    np.testing.assert_array_equal(a[0, -1], want)


@pytest.mark.parametrize("w, h, mh, mw", [(3000, 2, 2, 50), (2, 3000, 50, 2), (1, 1, 7, 7)])
def test_overlay_extreme_aspect_ratios(w: int, h: int, mh: int, mw: int) -> None:
    m = np.random.default_rng(0).random((mh, mw)).astype(np.float32)
    out = overlay(solid(w, h), m)
    assert out.size == output_size(w, h) and out.mode == "RGB"


def test_constant_map_renders_colormap_zero() -> None:
    img = solid(64, 32, (100, 150, 200))
    a = np.asarray(overlay(img, np.full((5, 5), 3.0, np.float32), size=64, alpha=0.5)).astype(int)
    want = np.rint(0.5 * np.array([100, 150, 200]) + 0.5 * np.array(JET_LO)).astype(int)
    assert a.shape == (32, 64, 3)
    assert (a == want).all()
    pure = np.asarray(overlay(img, np.zeros((3, 3)), size=64, alpha=1.0))
    assert (pure == JET_LO).all()


def test_alpha_zero_is_resized_image_and_alpha_one_is_pure_colormap() -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (120, 300, 3), dtype=np.uint8))
    m = rng.random((6, 15)).astype(np.float32)
    m[0, 0], m[-1, -1] = 2.0, -1.0                   # extremes at corners: exact after upsampling
    a0 = np.asarray(overlay(img, m, size=200, alpha=0.0))
    np.testing.assert_array_equal(a0, np.asarray(fit(img, 200)))
    assert a0.shape == (80, 200, 3)
    a1 = np.asarray(overlay(img, m, size=200, alpha=1.0))
    lut = matplotlib.colormaps["jet"](np.arange(256), bytes=True)[:, :3]
    lut_set = {tuple(int(v) for v in c) for c in lut}
    assert {tuple(int(v) for v in p) for p in a1.reshape(-1, 3)} <= lut_set
    assert tuple(a1[0, 0]) == JET_HI and tuple(a1[-1, -1]) == JET_LO


def test_overlay_accepts_rgba_and_greyscale_and_rejects_bad_input() -> None:
    m = np.eye(4, dtype=np.float32)
    assert overlay(Image.new("RGBA", (40, 20), (0, 0, 0, 0)), m).mode == "RGB"
    assert overlay(Image.new("L", (40, 20), 90), m).mode == "RGB"
    with pytest.raises(ValueError):
        overlay(solid(10, 10), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        overlay(solid(10, 10), np.zeros((2, 2)), alpha=1.5)


# ---- channel charts ---------------------------------------------------------------------------------

def test_top_channels_order_ties_and_k_larger_than_c() -> None:
    w = np.array([0.1, 0.9, 0.5, 0.9, 0.2], dtype=np.float32)
    assert top_channels(w, 3) == [(1, pytest.approx(0.9)), (3, pytest.approx(0.9)), (2, 0.5)]
    assert [i for i, _ in top_channels(w, 10)] == [1, 3, 2, 4, 0]
    assert [i for i, _ in top_channels(np.ones(4), 2)] == [0, 1]
    assert [i for i, _ in top_channels(np.array([np.nan, 1.0, -2.0]), 3)] == [1, 2, 0]
    assert [i for i, _ in top_channels(np.array([-3.0, -1.0, -2.0]), 1)] == [1]
    with pytest.raises(ValueError):
        top_channels(w, 0)
    with pytest.raises(ValueError):
        top_channels(np.zeros((2, 2)), 1)
    with pytest.raises(ValueError):
        top_channels(np.zeros(0), 1)


def _runs(line: np.ndarray, colour: tuple[int, int, int]) -> list[tuple[int, int]]:
    """(start, end) of each run of `colour` along a line of RGB pixels."""
    hit = np.all(line == colour, axis=-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], hit, [0]])))
    return list(zip(edges[::2], edges[1::2]))


def test_channel_bars_heights_order_and_no_global_state() -> None:
    before = dict(matplotlib.rcParams)
    w = np.random.default_rng(0).random(512).astype(np.float32)
    img = channel_bars(w, 20, "channel weights · layer4 · derived")
    assert img.mode == "RGB" and img.size == CHART_SIZE == (1000, 450)
    a = np.asarray(img)
    bars, dist = bar_axes(w, 20, "channel weights · layer4 · derived")
    top = np.sort(w)[::-1][:20]
    assert (bars.y0, bars.y1) == zoom_limits(top)             # 0.96–0.999: a zoomed axis, so they differ
    base = bars.y0
    zero = round(bars.py(base))
    runs = _runs(a[zero - 2, : bars.box[2] + 1], _BAR)        # just above the axis: every bar
    assert len(runs) == 20
    heights = []
    for (x0, x1), v in zip(runs, top):
        column = a[:zero, (x0 + x1) // 2]
        heights.append(zero - min(s for s, _ in _runs(column, _BAR)))
        assert abs(x1 - x0 - 0.8 * (bars.px(1) - bars.px(0))) <= 1.5   # bar width 0.8 of a slot
    # pixel heights proportional to the weights above the axis' base
    np.testing.assert_allclose(np.array(heights) / heights[0], (top - base) / (top[0] - base), atol=1.5 / heights[0])
    # right axes: the top k filled orange left of the dashed cut, the rest blue
    y = round(dist.py(0.05))
    assert np.abs(a[y, round(dist.px(5))].astype(int) - [243, 203, 177]).max() <= 2   # 0.35·_TOP + 0.65·white
    assert np.abs(a[y, round(dist.px(150))].astype(int) - [202, 218, 235]).max() <= 2  # 0.25·_BAR + 0.75·white
    assert dict(matplotlib.rcParams) == before               # no global state touched


def test_near_equal_weights_get_a_zoomed_axis_that_says_so() -> None:
    """Gates 0.96–0.99 drawn from 0 look equal: the axis zooms (bars differ visibly) and a red note
    says it does not start at 0; equal weights keep the plain axis and say they are all equal."""
    w = 0.96 + 0.03 * np.random.default_rng(2).random(256)
    top = np.sort(w)[::-1][:20]
    lo, hi = zoom_limits(top)
    assert lo < top.min() and hi > top.max() and lo > 0.9
    assert zoom_limits(np.full(64, 0.5)) is None and zoom_limits(np.linspace(0.2, 1.0, 9)) is None
    a = np.asarray(channel_bars(w, 20))
    bars, _ = bar_axes(w, 20)
    base = round(bars.py(bars.y0))
    heights = [base - round(bars.py(v)) for v in top]
    assert heights[0] > 4 * heights[-1] > 0                   # the differences are visible
    note = a[bars.box[1] - 20:bars.box[1], bars.box[0]:bars.box[2]]
    assert (np.abs(note.astype(int) - (176, 0, 32)).sum(-1) < 60).sum() > 50   # the red note line
    flat = np.asarray(channel_bars(np.full(64, 0.5), 20))
    bars, _ = bar_axes(np.full(64, 0.5), 20)
    assert bars.y0 == 0.0
    note = flat[bars.box[1] - 20:bars.box[1], bars.box[0]:bars.box[2]]
    assert (np.abs(note.astype(int) - (176, 0, 32)).sum(-1) < 60).sum() > 50   # "top 20: all equal (0.5)"


def test_channel_bars_k_larger_than_c_and_negative_weights() -> None:
    w = np.array([0.2, 0.7, -0.1])
    img = np.asarray(channel_bars(w, 20))
    assert img.shape == (CHART_SIZE[1], CHART_SIZE[0], 3)
    bars, _ = bar_axes(w, 20)
    assert (bars.x0, bars.x1) == (-0.6, 2.6) and bars.y0 < -0.1 and bars.y1 > 0.7
    # bar 2 (channel 2, weight −0.1) hangs below the zero line, bar 0 (channel 1) stands on it
    x2, x0 = round(bars.px(2)), round(bars.px(0))
    assert tuple(img[round(bars.py(-0.05)), x2]) == _BAR and tuple(img[round(bars.py(0.05)), x2]) != _BAR
    assert tuple(img[round(bars.py(0.65)), x0]) == _BAR and tuple(img[round(bars.py(0.75)), x0]) != _BAR


def test_channel_depth_cells_follow_the_histograms() -> None:
    rng = np.random.default_rng(0)
    gates = [("a", rng.random(64) * 0.5), ("b", 0.5 + rng.random(32) * 0.5), ("c", np.full(8, 0.9))]
    img = channel_depth(gates, "gates", bins=10)
    a = np.asarray(img)
    assert img.size == (1000, 300)
    hist = np.stack([np.histogram(w, np.linspace(0, 1, 11))[0] / len(w) for _, w in gates])
    want = matplotlib.colormaps["magma"]((hist - hist.min()) / (hist.max() - hist.min()), bytes=True)
    # find the heat area: the widest run of non-white pixels on the middle row of gate "b"
    magma = {tuple(int(v) for v in c[:3]) for c in matplotlib.colormaps["magma"](np.arange(256), bytes=True)}
    ys = [y for y in range(a.shape[0]) if tuple(a[y, 500]) in magma]
    top, bottom = min(ys), max(ys) + 1
    xs = [x for x in range(a.shape[1]) if tuple(a[(top + bottom) // 2, x]) in magma]
    left, right = min(xs), max(xs[: xs.index(min(xs)) + 1] + [x for x in xs if x < 880]) + 1
    for g in range(3):
        for b in range(10):
            y = top + int((g + 0.5) * (bottom - top) / 3)
            x = left + int((b + 0.5) * (right - left) / 10)
            if abs(x - (left + gates[g][1].mean() * (right - left))) < 8:
                continue                                      # the mean dot sits here
            assert tuple(a[y, x]) == tuple(int(v) for v in want[g, b, :3]), (g, b)
    y_c = top + int(2.5 * (bottom - top) / 3)                    # gate "c": mean 0.9, a dot
    assert tuple(a[y_c, round(left + 0.9 * (right - left))]) == _DOT


# ---- grid -------------------------------------------------------------------------------------------

def test_grid_size_formula() -> None:
    g = grid_layout(256)
    assert (g.pad, g.font, g.line, g.label_h, g.title_h, g.bar_h) == (8, 16, 23, 31, 46, 18)
    assert g.row_h == 31 + 46 + 256 + 8 and g.legend_h == 8 + 18 + 2 * 23 + 8
    assert grid_size(1, 2, 256) == (8 + 2 * 264, 8 + 341 + 80) == (536, 429)
    assert grid_size(10, 12, 256) == (3176, 3498)


def test_grid_dimensions_1x2_and_10x12() -> None:
    small = grid([GridRow(solid(300, 200), [GridCell("original"), GridCell("spatial\nderived",
                                                                             np.eye(7))])])
    assert small.size == grid_size(1, 2, 256) and small.mode == "RGB"
    rng = np.random.default_rng(0)
    rows = [GridRow(solid(40 + 10 * r, 30), [GridCell("original")] +
                    [GridCell(f"k{c}\nderived", rng.random((5, 5))) for c in range(11)],
                    label=f"img{r}.png") for r in range(10)]
    assert grid(rows, cell=64).size == grid_size(10, 12, 64)


def test_grid_cells_contain_image_letterbox_and_box() -> None:
    colour = (10, 200, 30)
    row = GridRow(solid(200, 100, colour),
                  [GridCell("original"), GridCell("spatial\nderived", np.zeros((4, 4)))],
                  label="a.jpg", boxes=[(50, 25, 150, 75)])
    a = np.asarray(grid([row], cell=256)).astype(int)
    g = grid_layout(256)
    cy = g.pad + g.label_h + g.title_h                   # top of the cells
    x0 = g.pad                                           # original cell; image fitted to 256x128
    assert tuple(a[cy + 64 + 10, x0 + 10]) == colour     # image pixels, top-left of the image
    assert tuple(a[cy + 128, x0 + 30]) == colour         # inside the image, outside the box
    assert tuple(a[cy + 10, x0 + 128]) == LETTERBOX      # letterbox above the image
    assert tuple(a[cy + 250, x0 + 128]) == LETTERBOX     # and below it
    # box (50,25)-(150,75) in original pixels -> (64,32)-(192,96) in the fitted image -> +64 in y
    for x in (x0, x0 + 264):                             # drawn on every cell of the row
        assert tuple(a[cy + 96, x + 128]) == BOX_COLOUR  # top edge
        assert tuple(a[cy + 159, x + 128]) == BOX_COLOUR  # bottom edge
        assert tuple(a[cy + 128, x + 64]) == BOX_COLOUR  # left edge
        assert tuple(a[cy + 128, x + 191]) == BOX_COLOUR  # right edge
    assert tuple(a[cy + 128, x0 + 128]) == colour        # box interior untouched
    blended = np.rint(0.5 * np.array(colour) + 0.5 * np.array(JET_LO)).astype(int)
    assert tuple(a[cy + 128, 264 + x0 + 128]) == tuple(blended)   # constant map: colormap(0)
    assert tuple(a[0, -1]) == BACKGROUND


def test_grid_colour_bar_at_bottom() -> None:
    img = grid([GridRow(solid(64, 64), [GridCell("original"), GridCell("x", np.eye(3))])],
               colormap="viridis", cell=128)
    a = np.asarray(img).astype(int)
    g = grid_layout(128)
    y = img.height - g.legend_h + g.pad + g.bar_h // 2    # middle of the bar
    vir = matplotlib.colormaps["viridis"]
    assert tuple(a[y, g.pad]) == tuple(int(v) for v in vir(0.0, bytes=True)[:3])
    assert tuple(a[y, img.width - g.pad - 1]) == tuple(int(v) for v in vir(1.0, bytes=True)[:3])


def test_grid_rejects_empty_and_ragged_rows_are_padded() -> None:
    with pytest.raises(ValueError):
        grid([])
    rows = [GridRow(solid(20, 20), [GridCell("original")]),
            GridRow(solid(20, 20), [GridCell("original"), GridCell("a", np.eye(2)),
                                    GridCell("a very long title " * 10, np.eye(2))])]
    assert grid(rows, cell=64).size == grid_size(2, 3, 64)


def test_nice_ticks_and_labels() -> None:
    from attnviz.render.draw import nice_ticks, tick_label
    assert nice_ticks(0.0, 1.05, 6) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-0.5, 2047.5, 6) == [0, 500, 1000, 1500, 2000]
    assert nice_ticks(-0.135, 0.735, 6) == [0.0, 0.2, 0.4, 0.6]        # only ticks inside the range
    t = nice_ticks(0.0, 0.09, 5)
    assert [tick_label(v, t) for v in t] == ["0.00", "0.02", "0.04", "0.06", "0.08"]
    assert [tick_label(v, [0, 500, 1000]) for v in (0, 500, 1000)] == ["0", "500", "1000"]
    assert tick_label(-0.2, [-0.2, 0.0, 0.2]) == "\u22120.2"
    assert nice_ticks(1.0, 1.0) == [1.0]


@pytest.mark.parametrize("size, bold", [(11, False), (14, True), (24, False)])
def test_text_draws_the_pixels_of_imagedraw_text(size: int, bold: bool) -> None:
    """The cached glyphs of `draw.text` give ImageDraw.text's very pixels, at any fraction and anchor."""
    from PIL import ImageDraw

    from attnviz.render.draw import font, text
    f = font(size, bold)
    rng = np.random.default_rng(size)
    words = ["channel", "cross · a photo of a tabby cat", "0.5", "1 (max)", "weight ≥ 0.0312", "12…", "Ünïcödé",
             "layer4 · derived", "-0.25"]
    for anchor in ("la", "ma", "md", "mm", "lm", "rm", "ra", "ls"):
        ours = Image.new("RGB", (420, 140), (255, 255, 255))
        theirs = ours.copy()
        for k, s in enumerate(words):
            xy = (float(rng.uniform(60, 360)), float(rng.uniform(20, 120)))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            for _ in range(2):                                  # the second time from the cache
                text(ImageDraw.Draw(ours), xy, s, f, fill=fill, anchor=anchor)
                ImageDraw.Draw(theirs).text(xy, s, font=f, fill=fill, anchor=anchor)
        assert np.array_equal(np.asarray(ours), np.asarray(theirs)), anchor
