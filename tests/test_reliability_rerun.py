"""Reliability (issue 8), part 2: reruns into an OUT that holds something (other settings, files
attnviz did not write, its own outputs as inputs) and a disk that fills up or is read-only."""
from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest

import attnviz.report.atomic as atomic
from attnviz.errors import AttnvizError
from attnviz.pipeline import run
from attnviz.report.outputs import Style
from tests.clirun import FAST, assert_same_run, check_listed_files, cli, strict_json
from tests.conftest import photo

API = dict(backbone="resnet18", weights="none", input_size=64, seed=0, style=Style(size=96), batch_size=2,
           kinds=["spatial", "self"])


def _photos(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo(60 + 4 * i, 44 + 3 * i, 10 + i).save(folder / f"im{i:02d}.png")
    return folder


def _files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


# ---- other settings, --force, subset reruns --------------------------------------------------

def test_other_settings_refused_then_forced_then_subset_rerun(tmp_path):
    src, out = _photos(tmp_path / "in", 3), tmp_path / "out"
    assert cli("run", src, "-o", out, *FAST, "--batch-size", "2").code == 0
    everything = _files(out)
    assert {"im00/channel.png", "im00/channel_weights.png", "im00/self.png"} <= set(everything)

    other = cli("run", src, "-o", out, *FAST, "--kinds", "spatial")
    assert other.code == 2
    line = other.one_error()
    assert "holds a run with other settings" in line and "kinds:" in line and "['spatial']" in line
    assert _files(out) == everything and not (out / ".attnviz.lock").exists()   # nothing touched

    (out / "notes.txt").write_text("mine")
    (out / "im00" / "keep.txt").write_text("mine too")
    forced = cli("run", src, "-o", out, *FAST, "--kinds", "spatial", "--force")
    assert forced.code == 0, forced.stderr
    manifest = strict_json(out / "manifest.json")
    for e in manifest["images"]:
        assert [m["kind"] for m in e["maps"]] == ["spatial"]
        on_disk = sorted(p.name for p in (out / e["output"]).iterdir())
        assert on_disk == sorted(e["files"] + (["keep.txt"] if e["output"] == "im00" else []))
    assert not (out / "im00" / "channel.png").exists() and not (out / "im01" / "self.png").exists()
    assert (out / "notes.txt").read_text() == "mine" and (out / "im00" / "keep.txt").read_text() == "mine too"

    (out / "notes.txt").unlink()
    subset = cli("run", src / "im01.png", "-o", out, *FAST, "--kinds", "spatial")
    assert subset.code == 0, subset.stderr
    assert re.search(r"images ok\W+1\W", subset.stderr) and re.search(r"already done \(resumed\)\W+1\W", subset.stderr)
    again = strict_json(out / "manifest.json")            # the given image first, then the others kept
    assert [e["output"] for e in again["images"]] == ["im01", "im00", "im02"]
    assert {e["output"]: e for e in again["images"]} == {e["output"]: e for e in manifest["images"]}


def test_subset_rerun_with_the_same_settings_keeps_every_other_record(tmp_path):
    src, out = _photos(tmp_path / "in", 3), tmp_path / "out"
    run([src], out, **API)
    before = strict_json(out / "manifest.json")["images"]
    report = run([src / "im02.png"], out, **API)
    assert report.resumed == 1 and report.forwards == 0
    assert strict_json(out / "manifest.json")["images"] == [before[2], before[0], before[1]]


def test_force_never_deletes_outside_out_whatever_the_manifest_says(tmp_path):
    src, out = _photos(tmp_path / "in", 1), tmp_path / "out"
    run([src], out, **{**API, "kinds": ["spatial"]})
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "precious.txt").write_text("keep me")
    manifest = strict_json(out / "manifest.json")
    manifest["images"].append({**manifest["images"][0], "output": "../victim", "files": ["precious.txt"]})
    (out / "manifest.json").write_text(json.dumps(manifest))      # hand-edited
    run([src], out, **{**API, "kinds": ["self"]}, force=True)
    assert (tmp_path / "victim" / "precious.txt").read_text() == "keep me"
    assert [e["output"] for e in strict_json(out / "manifest.json")["images"]] == ["im00"]


# ---- files attnviz did not write -------------------------------------------------------------

@pytest.mark.parametrize("foreign", ["manifest.json", "notes.txt", "photos/x.jpg"])
def test_out_holding_files_attnviz_did_not_write(tmp_path, foreign):
    src, out = _photos(tmp_path / "in", 1), tmp_path / "out"
    (out / foreign).parent.mkdir(parents=True)
    if foreign.endswith(".jpg"):
        photo(30, 30).save(out / foreign)
    else:
        (out / foreign).write_text(json.dumps({"mine": True}))
    refused = cli("run", src, "-o", out, *FAST, "--kinds", "spatial")
    assert refused.code == 2
    line = refused.one_error()
    assert "--force" in line and ("was not written by attnviz" in line or "(e.g. photos)" in line
                                 or "(e.g. notes.txt)" in line)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == sorted(
        {foreign, *[str(p) for p in Path(foreign).parents if str(p) != "."]})   # untouched
    forced = cli("run", src, "-o", out, *FAST, "--kinds", "spatial", "--force")
    assert forced.code == 0, forced.stderr
    assert [e["source"] for e in strict_json(out / "manifest.json")["images"]] == ["im00.png"]
    if foreign != "manifest.json":
        assert (out / foreign).exists()


def test_run_into_its_own_input_folder_never_reads_its_outputs_back(tmp_path):
    d = _photos(tmp_path / "d", 2)
    (d / ".draft.tmp").write_text("the user's")          # hidden: not an input, and not ours to delete
    (d / ".im00.png.abcd1234.tmp").write_text("a killed run's temporary")
    first = cli("run", d, "-o", d, *FAST, "--kinds", "spatial")
    assert first.code == 0, first.stderr
    after_first = _files(d)
    assert len(after_first) == 2 + 1 + 3 + 2 * 4    # inputs, the user's hidden file, manifest + gallery + csv, 4 per image
    assert (d / ".draft.tmp").read_text() == "the user's" and not (d / ".im00.png.abcd1234.tmp").exists()
    second = cli("run", d, "-o", d, *FAST, "--kinds", "spatial")
    assert second.code == 0, second.stderr
    assert _files(d) == after_first
    assert [e["source"] for e in strict_json(d / "manifest.json")["images"]] == ["im00.png", "im01.png"]


def test_empty_input_path_is_not_the_current_folder(tmp_path):
    res = cli("run", "", "-o", tmp_path / "x", *FAST)
    assert res.code == 2 and "an input path is empty" in res.one_error()
    assert not (tmp_path / "x").exists()


# ---- a full or read-only disk ----------------------------------------------------------------

def test_disk_full_on_the_fourth_image_then_resume(tmp_path, monkeypatch):
    src = _photos(tmp_path / "in", 6)
    run([src], tmp_path / "ref", **API)
    out = tmp_path / "out"
    real = atomic.write_atomic

    def full(path: Path, write) -> None:
        if path.parent.name == "im03" and path.name == "grid.png":   # mid-image: its overlays are written
            def no_space(f):
                f.write(b"\0" * 100)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, no_space)
        return real(path, write)

    monkeypatch.setattr(atomic, "write_atomic", full)
    with pytest.raises(AttnvizError) as e:
        run([src], out, **API)
    assert f"cannot write {out / 'im03' / 'grid.png'}: No space left on device" in str(e.value)
    assert (out / "im03" / "original.png").exists() and not (out / "im03" / "grid.png").exists()
    listed = [x["output"] for x in strict_json(out / "manifest.json")["images"]]
    # the complete ones: those before, and any a writer thread finished while the error came up
    assert listed[:3] == ["im00", "im01", "im02"] and "im03" not in listed
    assert check_listed_files(out) == len(listed) * 6
    assert list(out.rglob("*.tmp")) == [] and not (out / ".attnviz.lock").exists()

    monkeypatch.setattr(atomic, "write_atomic", real)
    report = run([src], out, **API)
    assert report.resumed == len(listed) and report.failed == []
    assert_same_run(tmp_path / "ref", out)


def test_disk_full_while_saving_the_manifest_names_it(tmp_path, monkeypatch):
    src, out = _photos(tmp_path / "in", 3), tmp_path / "out"
    real = atomic.write_atomic

    def full(path: Path, write) -> None:
        def no_space(f):
            raise OSError(errno.ENOSPC, "No space left on device")      # as write() raises it: no path
        return real(path, no_space if path.name == "manifest.json" else write)

    monkeypatch.setattr(atomic, "write_atomic", full)
    res = cli("run", src, "-o", out, *FAST, "--kinds", "spatial", "--batch-size", "2")
    assert res.code == 2
    assert f"cannot write {out / 'manifest.json'}: No space left on device" in res.one_error()
    assert not (out / "manifest.json").exists() and list(out.rglob("*.tmp")) == []
    assert not (out / ".attnviz.lock").exists()


def test_read_only_file_system_on_the_first_write(tmp_path, monkeypatch):
    src, out = _photos(tmp_path / "in", 2), tmp_path / "out"

    def read_only(path: Path, write) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(atomic, "write_atomic", read_only)
    with pytest.raises(AttnvizError) as e:
        run([src], out, **API)
    assert f"cannot write {out / 'im00' / 'original.png'}: Read-only file system" in str(e.value)
    assert not (out / "manifest.json").exists()                   # nothing listed, nothing half-written
    assert _files(out) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_is_exit_2_naming_the_path(tmp_path):
    src, out = _photos(tmp_path / "in", 1), tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        res = cli("run", src, "-o", out, *FAST, "--kinds", "spatial")
    finally:
        out.chmod(0o755)
    assert res.code == 2
    assert str(out) in res.one_error() and "ermission denied" in res.stderr


# ---- resumed images keep their batch's size: the same bits ----------------------------------

def test_recomputing_one_image_of_a_batch_gives_the_uninterrupted_bits(tmp_path):
    src = _photos(tmp_path / "in", 3)
    run([src], tmp_path / "ref", **API)                # batches (im00, im01), (im02)
    out = tmp_path / "out"
    run([src], out, **API)
    (out / "im01" / "maps.npz").unlink()               # as if killed while writing it
    report = run([src], out, **API)
    assert report.resumed == 2 and report.forwards == 1 and [r.output for r in report.results] == ["im01"]
    assert_same_run(tmp_path / "ref", out)
