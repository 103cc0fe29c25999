"""Reliability, part 3 (issue 21): names are data in pictures and never collide with OUT's own
files; walking inputs never leaves the given folders; file options read regular files only;
summary.csv holds no live formula; a crash under --debug keeps its exit code."""
from __future__ import annotations

import csv
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import attnviz.pipeline.batch as batch
from attnviz.errors import AttnvizError
from attnviz.images import discover
from attnviz.pipeline import run
from attnviz.report.outputs import Style
from attnviz.report.tables import cell
from attnviz.text import PROMPTS_LIMIT, read_prompts, shown
from tests.clirun import FAST, check_listed_files, cli, strict_json
from tests.conftest import photo

API = dict(backbone="resnet18", weights="none", input_size=64, seed=0, style=Style(size=96), kinds=["spatial"])


def _csv(path: Path) -> str:
    return io.StringIO(path.read_bytes().decode("utf-8"), newline="")     # CR inside cells kept


def _failed(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("failed:")]


# ---- names in pictures -------------------------------------------------------------------------

def test_control_characters_in_names_are_drawn_escaped(tmp_path):
    """A newline, a carriage return and an escape in names: every image drawn (the row label shows
    them as \\x0a …), the gallery and summary.csv written, and a sheet compared from the run."""
    src = tmp_path / "in"
    src.mkdir()
    names = ["two\nlines.png", "cr\rname.png", "esc\x1b[2J.png", "tab\there.png", "good.png"]
    for i, name in enumerate(names):
        photo(50 + 3 * i, 40, i).save(src / name, format="PNG")
    out = tmp_path / "out"
    report = run([src], out, **API, batch_size=2)
    assert [r.status for r in report.results] == ["ok"] * 5
    assert check_listed_files(out) == 5 * 4 and (out / "index.html").is_file() and (out / "summary.csv").is_file()
    rows = list(csv.DictReader(_csv(out / "summary.csv")))
    assert sorted(r["source"] for r in rows) == sorted(names)       # the CSV keeps names exactly
    sheet = cli("compare", out, "-o", tmp_path / "sheet.png", "-q")
    assert sheet.code == 0, sheet.stderr
    assert shown("two\nlines.png") == "two\\x0alines.png"


def test_label_drawing_escapes_what_pillow_cannot_lay_out(tmp_path):
    """The grid's row label is the escaped name: drawing the raw one is what failed (raqm)."""
    drawn = []
    real = batch.write_outputs

    def spy(out, r, image, style, boxes=(), **kw):
        drawn.append(r.source)
        return real(out, r, image, style, boxes, **kw)

    photo(40, 30).save(tmp_path / "a\nb.png", format="PNG")
    import attnviz.report.outputs as outputs
    seen = []
    original = outputs._grid_pages
    outputs._grid_pages = lambda image, cells, label, boxes, **kw: seen.append(label) or original(image, cells, label, boxes, **kw)
    try:
        batch.write_outputs = spy
        run([tmp_path / "a\nb.png"], tmp_path / "out", **API)
    finally:
        outputs._grid_pages, batch.write_outputs = original, real
    assert drawn == ["a\nb.png"] and seen == ["a\\x0ab.png"]


# ---- OUT's own names are reserved -----------------------------------------------------------------

OWN = ["index.html", "manifest.json", "summary.csv", "agreement.csv", "agreement.png", "evaluation.json"]


def test_images_named_after_outs_own_files_get_other_folders(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(OWN):
        photo(40 + i, 30, i).save(src / f"{name}.png")
    photo(40, 30).save(src / "plain.png")
    out = tmp_path / "out"
    res = cli("run", src, "-o", out, *FAST, "--kinds", "spatial,channel", "--stats", "-q")
    assert res.code == 0, res.stderr
    images = strict_json(out / "manifest.json")["images"]
    assert len(images) == len(OWN) + 1 and all(e["status"] == "ok" for e in images)
    outputs = {e["output"] for e in images}
    assert not outputs & set(OWN) and "index.html_png" in outputs
    for name in ["index.html", "manifest.json", "summary.csv", "agreement.csv", "agreement.png"]:
        assert (out / name).is_file(), name
    assert check_listed_files(out) == (len(OWN) + 1) * 6
    again = cli("run", src, "-o", out, *FAST, "--kinds", "spatial,channel", "--stats")
    assert again.code == 0 and "already done (resumed)" in again.stderr, again.stderr


def test_reserved_names_compare_without_case():
    from attnviz.images import _output_names
    assert _output_names(["Index.HTML.png", "x/index.html.png", "a.png"], {"index.html"}) == \
        ["Index.HTML_png", "x/index.html", "a"]


# ---- walking inputs --------------------------------------------------------------------------------

@pytest.fixture
def odd_folder(tmp_path) -> Path:
    """Good images beside a link to /, a link out of the folder, a FIFO, a device, a broken link, a
    loop, and a link to a sub-folder inside (followed: no duplicate)."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    photo(40, 30, 1).save(src / "a.png")
    photo(30, 40, 2).save(src / "sub" / "b.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    photo(30, 30, 3).save(elsewhere / "c.png")
    os.symlink("/", src / "rootlink")
    os.symlink(elsewhere, src / "outside")
    os.symlink(src / "sub", src / "inside")
    os.symlink(src, src / "loop")
    os.symlink("/dev/zero", src / "zero.png")
    os.symlink(tmp_path / "nowhere.png", src / "broken.png")
    os.mkfifo(src / "pipe.png")
    return src


def test_walk_never_leaves_the_inputs_and_lists_every_odd_entry(odd_folder, tmp_path):
    found = {s.source: s.error for s in discover([odd_folder])}
    assert found["a.png"] is None and found["sub/b.png"] is None
    assert "link to a folder outside the inputs (/)" in found["rootlink"]
    assert "link to a folder outside the inputs" in found["outside"]
    assert found["zero.png"].startswith("a character device") and found["pipe.png"].startswith("a FIFO")
    assert found["broken.png"] == "broken symbolic link"
    assert set(found) == {"a.png", "sub/b.png", "rootlink", "outside", "zero.png", "pipe.png", "broken.png"}
    res = cli("run", odd_folder, "-o", tmp_path / "out", *FAST, "--kinds", "spatial", "-q")
    assert res.code == 1, res.stderr
    assert len(_failed(res.stderr)) == 5 and "Traceback" not in res.stderr
    images = strict_json(tmp_path / "out" / "manifest.json")["images"]
    assert sorted(e["source"] for e in images if e["status"] == "ok") == ["a.png", "sub/b.png"]


def test_both_roots_given_may_link_to_each_other(odd_folder, tmp_path):
    """A link into another given input folder is followed (it is an input), once."""
    found = {s.source: s.error for s in discover([odd_folder, tmp_path / "elsewhere"])}
    assert found["in/outside/c.png"] is None or found.get("elsewhere/c.png") is None
    assert sum(1 for s, e in found.items() if s.endswith("c.png") and e is None) == 1


def test_a_fifo_given_by_name_is_its_own_error(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    photo(40, 30).save(tmp_path / "a.png")
    res = cli("run", tmp_path / "pipe.png", tmp_path / "a.png", "-o", tmp_path / "out", *FAST, "--kinds", "spatial", "-q")
    assert res.code == 1 and _failed(res.stderr) == ["failed: pipe.png: a FIFO, not a regular file: not read"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_an_unreadable_subfolder_and_file_are_their_own_errors(tmp_path):
    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    photo(40, 30).save(src / "a.png")
    photo(40, 30).save(src / "secret.png")
    os.chmod(src / "locked", 0)
    os.chmod(src / "secret.png", 0)
    try:
        res = cli("run", src, "-o", tmp_path / "out", *FAST, "--kinds", "spatial", "-q")
    finally:
        os.chmod(src / "locked", 0o755)
    assert res.code == 1 and len(_failed(res.stderr)) == 2, res.stderr


# ---- file options: regular files only, capped ---------------------------------------------------------

def _within(fn, seconds: float = 20):
    """fn() in a thread; fails if it does not return in time (a FIFO read would block forever)."""
    box: list = []
    t = threading.Thread(target=lambda: box.append(_catch(fn)), daemon=True)
    t.start()
    t.join(seconds)
    assert box, f"still reading after {seconds} s"
    return box[0]


def _catch(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001  (compared by the caller)
        return e


@pytest.mark.parametrize("case", ["fifo", "dev-zero", "folder", "too-big", "binary", "empty"])
def test_text_file_is_a_small_regular_text_file(tmp_path, case):
    path = {"dev-zero": Path("/dev/zero"), "folder": tmp_path}.get(case, tmp_path / "prompts.txt")
    if case == "fifo":
        os.mkfifo(path)
    elif case == "too-big":
        path.write_text("a cat\n" * (PROMPTS_LIMIT // 6 + 1))
    elif case == "binary":
        path.write_bytes(b"\xff\xfe cat")
    elif case == "empty":
        path.write_text("# only a comment\n\n")
    error = _within(lambda: read_prompts(path))
    assert isinstance(error, AttnvizError) and str(error).startswith("--text-file")
    assert {"fifo": "a FIFO, not a regular file", "dev-zero": "a character device, not a regular file",
            "folder": "a folder, not a regular file", "too-big": "larger than 1,048,576 bytes",
            "binary": "not UTF-8", "empty": "no prompts"}[case] in str(error)


def test_text_file_and_boxes_options_refuse_in_one_line(tmp_path):
    photo(40, 30).save(tmp_path / "a.png")
    res = cli("run", tmp_path / "a.png", "-o", tmp_path / "out", *FAST, "--text-file", "/dev/zero")
    assert res.code == 2 and "--text-file /dev/zero: a character device, not a regular file" in res.one_error()
    assert cli("run", tmp_path / "a.png", "-o", tmp_path / "out", *FAST, "--kinds", "spatial").code == 0
    os.mkfifo(tmp_path / "boxes.json")
    ev = _within(lambda: cli("evaluate", tmp_path / "out", "--boxes", tmp_path / "boxes.json"))
    assert ev.code == 2 and "a FIFO, not a regular file" in ev.one_error()
    (tmp_path / "prompts.txt").write_text("tabby cat\n# a comment\n\nspace heater\n")
    assert read_prompts(tmp_path / "prompts.txt") == ["tabby cat", "space heater"]


def test_a_fifo_named_manifest_json_is_refused_not_read(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "manifest.json")
    photo(40, 30).save(tmp_path / "a.png")
    res = _within(lambda: cli("run", tmp_path / "a.png", "-o", out, *FAST, "--kinds", "spatial"))
    assert res.code == 2 and "a FIFO, not a regular file" in res.one_error()


# ---- summary.csv holds no live formula -------------------------------------------------------------

FORMULAS = ["=cmd|' \\C calc'!A0", "+1+2", "@SUM(1+1)", "-2+3", "\tx", "=HYPERLINK(x)"]


def test_cells_a_spreadsheet_would_run_are_neutralised():
    assert [cell(v) for v in FORMULAS] == ["'" + v for v in FORMULAS]
    assert [cell(v) for v in [-0.5, 3, 0.25, None, "cat.png", "a=b"]] == [-0.5, 3, 0.25, "", "cat.png", "a=b"]


def test_summary_csv_has_no_live_formula_and_numbers_stay_numbers(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(["=cmd|' \\C calc'!A0", "+1+2", "@SUM(1+1)", "-x", "\tlead"]):
        photo(40 + i, 30, i).save(src / f"{name}.png")
    (src / "=broken.png").write_text("not an image")
    out = tmp_path / "out"
    res = cli("run", src, "-o", out, *FAST, "--kinds", "spatial,cross", "-q",
              "--text", '=HYPERLINK("http://evil","tabby cat")', "--stats")
    assert res.code == 1, res.stderr
    for name in ("summary.csv", "agreement.csv"):
        rows = list(csv.reader(_csv(out / name)))
        assert len(rows) >= 6
        for row in rows[1:]:
            for value in row:
                if value[:1] in ("=", "+", "-", "@", "\t", "\r"):
                    float(value)             # only a number may start so (e.g. -0.25)
    rows = list(csv.DictReader(_csv(out / "summary.csv")))
    assert {r["source"] for r in rows} >= {"'=cmd|' \\C calc'!A0.png", "'+1+2.png", "'@SUM(1+1).png", "'-x.png",
                                           "'\tlead.png", "'=broken.png"}
    assert any(r["prompt"] == "'" + '=HYPERLINK("http://evil","tabby cat")' for r in rows)
    means = [float(r["mean"]) for r in rows if r["mean"]]
    assert means and all(np.isfinite(means))


# ---- --debug keeps the exit codes ---------------------------------------------------------------------

def test_a_crash_under_debug_prints_the_traceback_and_exits_3(tmp_path, monkeypatch):
    photo(40, 30).save(tmp_path / "a.png")

    def boom(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(batch, "write_outputs", boom)
    for debug in ([], ["--debug"]):
        res = cli("run", tmp_path / "a.png", "-o", tmp_path / f"out{len(debug)}", *FAST, "--kinds", "spatial", *debug)
        assert res.code == 3, res.stderr
        assert "internal error: RuntimeError: a bug" in res.one_error() if not debug else True
        assert ("Traceback" in res.stderr) == bool(debug)
        assert "error: internal error: RuntimeError: a bug" in res.stderr
    usage = cli("run", tmp_path / "a.png", "-o", tmp_path / "o2", *FAST, "--kinds", "nope", "--debug")
    assert usage.code == 2 and "Traceback" in usage.stderr and "error: " in usage.stderr
