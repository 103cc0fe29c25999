"""Tests for attnviz.images: discovery, naming and decoding."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from attnviz.errors import AttnvizError, ImageError
from attnviz.images import ImageSource, discover, load_image, to_rgb as _to_rgb


def touch(root: Path, *names: str) -> None:
    """Create empty files (discover does not read content)."""
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def pairs(items: list[ImageSource]) -> list[tuple[str, str]]:
    return [(i.source, i.output) for i in items]


def rgb_at(img: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    assert img.mode == "RGB"
    return img.getpixel(xy)


def close_to(actual, expected, tol: int = 2) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected))


# ---------------------------------------------------------------- discover


def test_nested_tree_exact_names(tmp_path: Path) -> None:
    touch(tmp_path, "b.png", "a.jpg", "notes.txt", "sub/cat.png", "sub/cat.jpg",
          "sub/deeper/dog.webp", ".hidden.jpg", ".git/x.jpg", "sub/.secret/y.jpg")
    found = discover([tmp_path])
    assert pairs(found) == [
        ("a.jpg", "a"),
        ("b.png", "b"),
        ("notes.txt", "notes"),
        ("sub/cat.jpg", "sub/cat_jpg"),
        ("sub/cat.png", "sub/cat_png"),
        ("sub/deeper/dog.webp", "sub/deeper/dog"),
    ]
    assert all(i.path.is_absolute() and i.path.is_file() for i in found)
    assert found[3].path == tmp_path / "sub" / "cat.jpg"


def test_sorted_by_relative_posix_path(tmp_path: Path) -> None:
    touch(tmp_path, "a/x.jpg", "a b/x.jpg", "a-c/x.jpg", "B.jpg")
    # "a b/x.jpg" < "a-c/x.jpg" < "a/x.jpg" because " " < "-" < "/"
    assert [i.source for i in discover([tmp_path])] == ["B.jpg", "a b/x.jpg", "a-c/x.jpg", "a/x.jpg"]


def test_single_file_and_relative_path_made_absolute(tmp_path: Path, monkeypatch) -> None:
    touch(tmp_path, "pics/cat.jpeg")
    monkeypatch.chdir(tmp_path)
    (item,) = discover(["pics/cat.jpeg"])
    assert (item.source, item.output) == ("cat.jpeg", "cat")
    assert item.path == tmp_path / "pics" / "cat.jpeg"


def test_several_paths_use_folder_names(tmp_path: Path) -> None:
    touch(tmp_path, "photos/sub/cat.jpg", "photos/dog.jpg", "more/x.png", "single.bmp")
    found = discover([tmp_path / "photos", tmp_path / "single.bmp", tmp_path / "more"])
    assert pairs(found) == [
        ("photos/dog.jpg", "photos/dog"),
        ("photos/sub/cat.jpg", "photos/sub/cat"),
        ("single.bmp", "single"),
        ("more/x.png", "more/x"),
    ]


def test_same_file_twice_listed_once(tmp_path: Path) -> None:
    touch(tmp_path, "d/a.jpg", "d/b.jpg")
    found = discover([tmp_path / "d" / "a.jpg", tmp_path / "d", tmp_path / "d" / "a.jpg"])
    assert pairs(found) == [("a.jpg", "a"), ("d/b.jpg", "d/b")]


def test_symlink_loop_terminates_each_file_once(tmp_path: Path) -> None:
    touch(tmp_path, "root/a.jpg", "root/sub/b.jpg")
    os.symlink(tmp_path / "root", tmp_path / "root" / "sub" / "loop")
    os.symlink(tmp_path / "root" / "sub", tmp_path / "root" / "sub" / "self")
    assert pairs(discover([tmp_path / "root"])) == [("a.jpg", "a"), ("sub/b.jpg", "sub/b")]


def test_symlinked_folders_followed_within_the_inputs_real_path_wins(tmp_path: Path) -> None:
    """A link to a folder inside the inputs is followed (the real path names it); one leading out
    of them is an error entry, never walked (issue 21: a link to / walked the whole system)."""
    touch(tmp_path, "root/real/x.jpg", "outside/z.jpg")
    os.symlink(tmp_path / "root" / "real", tmp_path / "root" / "alias")  # sorts before "real"
    os.symlink(tmp_path / "outside", tmp_path / "root" / "ext")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "root" / "broken.jpg")
    found = discover([tmp_path / "root"])
    assert pairs(found) == [("broken.jpg", "broken"), ("ext", "ext"), ("real/x.jpg", "real/x")]
    assert [s.error for s in found] == ["broken symbolic link",
                                        f"link to a folder outside the inputs ({tmp_path / 'outside'}): not followed",
                                        None]
    both = discover([tmp_path / "root", tmp_path / "outside"])          # given as an input: walked once
    assert [s.source for s in both if s.error is None] == ["root/ext/z.jpg", "root/real/x.jpg"]


def test_symlink_loops_and_unreadable_folders_are_entries_not_aborts(tmp_path: Path, monkeypatch) -> None:
    touch(tmp_path, "root/a.jpg", "root/locked/b.jpg")
    os.symlink("loop", tmp_path / "root" / "loop")                    # points at itself
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    found = {s.source: s.error for s in discover([tmp_path / "root"])}
    assert found["a.jpg"] is None
    assert found["locked"] == "cannot read folder (Permission denied)"
    assert found["loop"].startswith("cannot follow it (Too many levels of symbolic links")


def test_dot_names_never_escape_the_output_folder(tmp_path: Path) -> None:
    touch(tmp_path, "...jpg", "d/..png")      # named directly (inside folders they are hidden files)
    assert pairs(discover([tmp_path / "...jpg", tmp_path / "d" / "..png"])) == [("...jpg", "__"), ("..png", "_")]


def test_missing_path_raises(tmp_path: Path) -> None:
    touch(tmp_path, "ok.jpg")
    with pytest.raises(AttnvizError, match="no such file or folder: .*nope.jpg"):
        discover([tmp_path / "ok.jpg", tmp_path / "nope.jpg"])


@pytest.mark.parametrize("hidden_only", [False, True])
def test_no_images_found_raises(tmp_path: Path, hidden_only: bool) -> None:
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    if hidden_only:
        touch(tmp_path, "empty/.DS_Store", "empty/.cache/a.jpg")
    with pytest.raises(AttnvizError, match="^no images found in .*empty: give image files"):
        discover([tmp_path / "empty"])
    with pytest.raises(AttnvizError, match="^no input given"):
        discover([])


@pytest.mark.parametrize("order", [1, -1])
def test_same_stem_gets_extension_regardless_of_order(tmp_path: Path, order: int) -> None:
    touch(tmp_path, "cat.jpg", "cat.PNG", "dog.jpg")
    given = [tmp_path / "cat.jpg", tmp_path / "cat.PNG", tmp_path / "dog.jpg"][::order]
    assert sorted(pairs(discover(given))) == [
        ("cat.PNG", "cat_png"), ("cat.jpg", "cat_jpg"), ("dog.jpg", "dog")]


def test_remaining_collisions_get_numeric_suffix(tmp_path: Path) -> None:
    touch(tmp_path, "x/photos/a.jpg", "y/photos/a.jpg", "w/a.jpg", "v/a.jpg", "z/a_2.jpg")
    found = discover([tmp_path / "x" / "photos", tmp_path / "y" / "photos",
                      tmp_path / "w" / "a.jpg", tmp_path / "v" / "a.jpg", tmp_path / "z" / "a_2.jpg"])
    assert pairs(found) == [
        ("photos/a.jpg", "photos/a"), ("photos/a.jpg", "photos/a_2"),
        ("a.jpg", "a"), ("a.jpg", "a_3"),  # "a_2" belongs to a_2.jpg, so it is skipped
        ("a_2.jpg", "a_2")]


def test_mixed_extension_group_then_numeric(tmp_path: Path) -> None:
    touch(tmp_path, "p/cat.jpg", "q/cat.jpg", "q/cat.png")
    given = [tmp_path / "p" / "cat.jpg", tmp_path / "q" / "cat.jpg", tmp_path / "q" / "cat.png"]
    assert pairs(discover(given)) == [("cat.jpg", "cat_jpg"), ("cat.jpg", "cat_jpg_2"), ("cat.png", "cat_png")]


def test_case_insensitive_and_folder_clashes(tmp_path: Path) -> None:
    touch(tmp_path, "Cat.jpg", "cat.jpg", "sub.jpg", "sub/x.jpg", "noext", "noext.d/y.jpg")
    assert pairs(discover([tmp_path])) == [
        ("Cat.jpg", "Cat"),
        ("cat.jpg", "cat_2"),  # same extension; "Cat" and "cat" clash on case-insensitive disks
        ("noext", "noext"),
        ("noext.d/y.jpg", "noext.d/y"),
        ("sub.jpg", "sub_jpg"),  # "sub" is the output folder of sub/x.jpg's parent
        ("sub/x.jpg", "sub/x"),
    ]


# ---------------------------------------------------------------- load_image


def save(tmp_path: Path, img: Image.Image, name: str, **kw) -> Path:
    p = tmp_path / name
    img.save(p, **kw)
    return p


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    img = Image.new("RGB", (64, 32), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 16, 16))  # red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    out = load_image(save(tmp_path, img, "rot.jpg", exif=exif, quality=95))
    assert out.size == (32, 64)
    assert close_to(rgb_at(out, (28, 4)), (255, 0, 0), 12)  # now in the top-right corner
    assert close_to(rgb_at(out, (4, 4)), (0, 0, 255), 12)
    assert close_to(rgb_at(out, (28, 60)), (0, 0, 255), 12)


def test_mode_1_and_l_and_la(tmp_path: Path) -> None:
    bw = Image.new("1", (2, 1), 0)
    bw.putpixel((1, 0), 1)
    out = load_image(save(tmp_path, bw, "bw.png"))
    assert rgb_at(out, (0, 0)) == (0, 0, 0) and rgb_at(out, (1, 0)) == (255, 255, 255)
    assert rgb_at(load_image(save(tmp_path, Image.new("L", (1, 1), 100), "l.png")), (0, 0)) == (100,) * 3
    la = Image.new("LA", (2, 1), (100, 255))
    la.putpixel((1, 0), (100, 0))
    out = load_image(save(tmp_path, la, "la.png"))
    assert rgb_at(out, (0, 0)) == (100,) * 3 and rgb_at(out, (1, 0)) == (255,) * 3


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1), 0)
    img.putpalette([1, 2, 3, 10, 20, 30] + [0] * 762)
    img.putpixel((1, 0), 1)
    plain = load_image(save(tmp_path, img, "p.png"))
    assert rgb_at(plain, (0, 0)) == (1, 2, 3) and rgb_at(plain, (1, 0)) == (10, 20, 30)
    clear = load_image(save(tmp_path, img, "pt.png", transparency=0))
    assert rgb_at(clear, (0, 0)) == (255, 255, 255) and rgb_at(clear, (1, 0)) == (10, 20, 30)


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    out = load_image(save(tmp_path, img, "rgba.png"))
    assert rgb_at(out, (0, 0)) == (255, 255, 255)  # transparent red shows white, not red
    assert rgb_at(out, (1, 0)) == (0, 0, 255)
    assert close_to(rgb_at(out, (2, 0)), (127, 127, 127), 1)


def test_cmyk_and_ycbcr(tmp_path: Path) -> None:
    img = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 0))
    out = load_image(save(tmp_path, img, "cmyk.tif"))
    assert rgb_at(out, (0, 0)) == (255, 255, 255) and rgb_at(out, (1, 0)) == (0, 255, 255)
    ycc = Image.new("RGB", (1, 1), (200, 50, 10)).convert("YCbCr")
    assert close_to(rgb_at(_to_rgb(ycc), (0, 0)), (200, 50, 10), 3)


@pytest.mark.parametrize("mode,name", [("I;16", "g16.png"), ("I;16", "g16.tif"), ("I;16B", "g16b.tif")])
def test_16_bit_scaled_by_65535(tmp_path: Path, mode: str, name: str) -> None:
    img = Image.new(mode, (3, 1))
    for x, v in enumerate([65535, 0, 32768]):
        img.putpixel((x, 0), v)
    out = load_image(save(tmp_path, img, name))
    assert [rgb_at(out, (x, 0)) for x in range(3)] == [(255,) * 3, (0,) * 3, (128,) * 3]


def test_32_bit_int_and_float_stretched(tmp_path: Path) -> None:
    ints = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert ints.mode == "I"
    out = load_image(save(tmp_path, ints, "i32.tif"))
    assert [rgb_at(out, (x, 0))[0] for x in range(3)] == [0, 128, 255]
    floats = Image.fromarray(np.array([[0.25, 0.5, 1.25, np.nan]], dtype=np.float32))
    assert floats.mode == "F"
    out = load_image(save(tmp_path, floats, "f.tif"))
    assert [rgb_at(out, (x, 0))[0] for x in range(4)] == [0, 64, 255, 0]


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50)
    out = load_image(p)
    assert out.size == (4, 4) and rgb_at(out, (2, 2)) == (255, 0, 0)


@pytest.mark.parametrize("name,kw", [("c.jpg", {"quality": 95}), ("c.png", {}), ("c.bmp", {}),
                                     ("c.tiff", {}), ("c.webp", {"lossless": True}),
                                     ("c.jpeg_no_ext", {"format": "JPEG"})])
def test_formats_recognised_by_content(tmp_path: Path, name: str, kw: dict) -> None:
    if name.endswith("webp") and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    out = load_image(save(tmp_path, Image.new("RGB", (8, 6), (30, 140, 220)), name, **kw))
    assert out.size == (8, 6) and close_to(rgb_at(out, (4, 3)), (30, 140, 220), 3)


@pytest.mark.parametrize("size", [(1, 1), (3000, 2), (2, 3000)])
def test_extreme_sizes_unchanged(tmp_path: Path, size: tuple[int, int]) -> None:
    out = load_image(save(tmp_path, Image.new("RGB", size, (9, 8, 7)), "s.png"))
    assert out.size == size and rgb_at(out, (size[0] - 1, size[1] - 1)) == (9, 8, 7)


def test_result_detached_from_file(tmp_path: Path) -> None:
    p = save(tmp_path, Image.new("RGB", (5, 5), (1, 2, 3)), "d.png")
    out = load_image(p)
    p.unlink()
    assert getattr(out, "fp", None) is None
    assert rgb_at(out, (4, 4)) == (1, 2, 3) and np.asarray(out).shape == (5, 5, 3)


def assert_one_line_error(path: Path, pattern: str) -> None:
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and len(message) <= 200
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert __import__("re").match(pattern, message), message


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("hello\nworld\n")
    assert_one_line_error(p, r"^not an image \(cannot identify image file\)$")


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    full = save(tmp_path, noisy, "full.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full[: len(full) // 2])
    assert_one_line_error(cut, r"^corrupt image: .*truncated")
    png = save(tmp_path, noisy, "full.png").read_bytes()
    bad = tmp_path / "bad.png"
    bad.write_bytes(png[:100] + bytes(200) + png[300:])
    assert_one_line_error(bad, r"^corrupt image: \S")


def test_unreadable_paths(tmp_path: Path) -> None:
    assert_one_line_error(tmp_path / "gone.png", r"^cannot read file: No such file")
    assert_one_line_error(tmp_path, r"^cannot read file: Is a directory")


def test_decompression_bomb(tmp_path: Path, monkeypatch) -> None:
    p = save(tmp_path, Image.new("RGB", (100, 100)), "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert_one_line_error(p, r"^image too large \(decompression bomb check\): Image size \(10000 pixels\)")


def test_sample_images_load() -> None:
    folder = Path(__file__).resolve().parent.parent / "sample_images"
    found = discover([folder])
    photos = [i for i in found if i.source != "CREDITS"]
    assert 3 <= len(photos) <= 6
    assert sum(i.path.stat().st_size for i in photos) < 1_000_000
    for item in photos:
        img = load_image(item.path)
        assert max(img.size) <= 640 and img.mode == "RGB"
        assert item.source in (folder / "CREDITS").read_text()
    assert any(load_image(i.path).size[0] != load_image(i.path).size[1] for i in photos)
