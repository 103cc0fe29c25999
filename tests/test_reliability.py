"""Reliability (issue 8), part 1: names are data, one run per OUT, and interrupted runs resume to
the same bytes as an uninterrupted one (real subprocesses killed by SIGINT, SIGTERM and SIGKILL)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.clirun import FAST, Outcome, assert_same_run, check_listed_files, cli, proc_cli, spawn, strict_json
from tests.conftest import photo

# the resume runs: 10 images in 5 forward passes; kinds without matplotlib charts keep them quick
KINDS = ["--kinds", "spatial,mixed-serial,self,cross", "--batch-size", "2"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Ten small photos, three of them in a subfolder."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for i in range(10):
        photo(70 + 3 * i, 50 + 2 * i, i).save(root / ("sub" if i >= 7 else "") / f"im{i:02d}.png")
    return root


def _wait(cond, p: subprocess.Popen, timeout: float = 240) -> None:
    """Poll until `cond()`; the run must still be going."""
    end = time.monotonic() + timeout
    while not cond():
        assert p.poll() is None, f"the run ended first (exit {p.returncode}): {p.communicate()}"
        assert time.monotonic() < end, "timed out waiting for the run"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(photos, tmp_path_factory):
    """One uninterrupted run (a subprocess); while it holds OUT, a second run into OUT is tried."""
    out = tmp_path_factory.mktemp("u") / "out"
    p = spawn("run", photos, "-o", out, *FAST, *KINDS)
    _wait(lambda: (out / ".attnviz.lock").exists(), p)
    t0 = time.monotonic()
    second = cli("run", photos, "-o", out, *FAST, *KINDS)
    refused_in = time.monotonic() - t0
    first_still_running = p.poll() is None
    stdout, stderr = p.communicate(timeout=300)
    return SimpleNamespace(out=out, photos=photos, first=Outcome(p.returncode, stdout, stderr), pid=p.pid, second=second,
                           refused_in=refused_in, first_still_running=first_still_running)


# ---- every name is data ----------------------------------------------------------------------

def test_names_in_any_encoding_and_brackets_in_paths(tmp_path):
    """A non-UTF-8 file name and `[x].jpg`, written to `res[/x]`: all processed, strict UTF-8 JSON."""
    src = tmp_path / "in"
    src.mkdir()
    latin = os.fsdecode(b"latin\xff.png")
    photo(64, 48, 1).save(src / latin, format="PNG")
    photo(48, 64, 2).save(src / "[x].jpg")
    out = tmp_path / "res[/x]"
    res = proc_cli("run", src, "-o", out, *FAST, "--kinds", "spatial")
    assert res.code == 0, res.stderr
    assert "Traceback" not in res.stderr and f"{out}/ (manifest.json)" in res.stderr   # printed literally
    manifest = strict_json(out / "manifest.json")
    entries = {e["source"]: e for e in manifest["images"]}
    assert sorted(entries) == ["[x].jpg", "latin\\xff.png"]
    assert all(e["status"] == "ok" for e in entries.values())
    odd = entries["latin\\xff.png"]
    assert bytes.fromhex(odd["source_bytes"]) == b"latin\xff.png" and odd["output"] == "latin_xff"
    assert entries["[x].jpg"]["output"] == "[x]" and "source_bytes" not in entries["[x].jpg"]
    assert check_listed_files(out) == 2 * 4       # original, spatial, grid, maps.npz: all load
    assert sorted(p.name for p in out.iterdir()) == ["[x]", "index.html", "latin_xff", "manifest.json", "summary.csv"]


def test_layer_with_markup_is_printed_literally(tmp_path):
    photo(40, 40).save(tmp_path / "a.png")
    res = cli("run", tmp_path / "a.png", "-o", tmp_path / "out", *FAST, "--layer", "[bold]x[/bold]")
    assert res.code == 2
    assert "'[bold]x[/bold]' is not a feature map of resnet18" in res.one_error()
    assert not (tmp_path / "out" / ".attnviz.lock").exists()     # released after exit 2


def test_prompt_with_markup_is_printed_literally(tmp_path):
    photo(40, 40).save(tmp_path / "a.png")
    res = cli("run", tmp_path / "a.png", "-o", tmp_path / "out", *FAST, "--text", "[red]qzxv")
    assert res.code == 2
    assert "--text '[red]qzxv' names none of resnet18's classes" in res.one_error()


def test_failing_file_named_like_markup(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    photo(40, 30).save(src / "good.png")
    (src / "[").mkdir()
    (src / "[/x].jpg").write_text("not an image")      # source "[/x].jpg": markup's closing tag
    res = cli("run", src, "-o", tmp_path / "out", *FAST, "--kinds", "spatial")
    assert res.code == 1, res.stderr
    assert "[/x].jpg: not an image (cannot identify image file)" in res.stderr
    assert "Traceback" not in res.stderr
    entries = strict_json(tmp_path / "out" / "manifest.json")["images"]
    assert [(e["source"], e["status"]) for e in entries] == [("[/x].jpg", "error"), ("good.png", "ok")]
    assert not (tmp_path / "out" / ".attnviz.lock").exists()     # released after exit 1


def test_control_characters_in_names_print_on_one_line_and_inert(tmp_path):
    """A file named with a newline or a terminal escape sequence: one `failed:` line each, escaped."""
    src = tmp_path / "in"
    src.mkdir()
    photo(40, 30).save(src / "good.png")
    (src / "two\nlines.jpg").write_text("x")
    (src / "evil\x1b[2Jname.jpg").write_text("x")
    for quiet in (["-q"], []):
        res = cli("run", src, "-o", tmp_path / "out", *FAST, "--kinds", "spatial", *quiet)
        assert res.code == 1 and "\x1b" not in res.stderr
        assert "evil\\x1b[2Jname.jpg: not an image" in res.stderr and "two\\x0alines.jpg: not an image" in res.stderr
    failed = [ln for ln in cli("run", src, "-o", tmp_path / "out", *FAST, "--kinds", "spatial", "-q").stderr.splitlines()
              if ln.startswith("failed:")]
    assert len(failed) == 2
    assert {e["source"] for e in strict_json(tmp_path / "out" / "manifest.json")["images"]} == {
        "good.png", "two\nlines.jpg", "evil\x1b[2Jname.jpg"}          # the manifest keeps them exactly


# ---- one run per OUT -------------------------------------------------------------------------

def test_second_run_into_a_busy_out_refuses_at_once(uninterrupted):
    u = uninterrupted
    assert u.first_still_running
    assert u.second.code == 2 and u.refused_in < 5
    line = u.second.one_error()
    assert f"is in use by another attnviz run (pid {u.pid} on {socket.gethostname()}" in line
    assert f"attnviz run {u.photos} -o {u.out} --backbone resnet18" in line      # the other run's command
    assert u.first.code == 0, u.first.stderr
    manifest = strict_json(u.out / "manifest.json")
    assert [e["status"] for e in manifest["images"]] == ["ok"] * 10
    assert check_listed_files(u.out) == 10 * 8
    assert not (u.out / ".attnviz.lock").exists()


def test_stale_lock_of_a_dead_run_is_taken_over(tmp_path):
    photo(40, 30).save(tmp_path / "a.png")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".attnviz.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                   "command": "attnviz run old", "started": "?"}))
    res = cli("run", tmp_path / "a.png", "-o", out, *FAST, "--kinds", "spatial")
    assert res.code == 0, res.stderr
    assert [e["status"] for e in strict_json(out / "manifest.json")["images"]] == ["ok"]
    assert not (out / ".attnviz.lock").exists()


def test_a_run_arriving_while_the_lock_is_being_written_never_takes_it(tmp_path, monkeypatch):
    """The lock file appears complete: a second run reading it mid-claim cannot mistake it for a
    torn lock of a dead run and take it over (both runs would then write into OUT)."""
    import attnviz.report.lock as lock
    out, seen = tmp_path / "out", []

    class Json:           # json as the lock module uses it, with a second run arriving mid-claim
        loads = staticmethod(json.loads)

        @staticmethod
        def _arrive():
            if not seen:
                seen.append("arrived")
                try:
                    with lock.locked(out, "second"):
                        seen.append("second held it")
                except lock.AttnvizError:
                    seen.append("second refused")

        @staticmethod
        def dumps(obj, *a, **k):
            Json._arrive()
            return json.dumps(obj, *a, **k)

        @staticmethod
        def dump(obj, f, *a, **k):
            Json._arrive()
            return json.dump(obj, f, *a, **k)

    monkeypatch.setattr(lock, "json", Json)
    with lock.locked(out, "first"):
        assert json.loads((out / lock.LOCK_NAME).read_text())["command"] == "first"   # it names its holder
    assert seen[0] == "arrived" and not (out / lock.LOCK_NAME).exists()
    assert not out.exists()          # no temporary left, and the folder made for the lock alone is gone


# ---- interrupted runs resume to the same bytes -----------------------------------------------

MOMENTS = {   # when the signal is sent
    "first-folder": lambda out: out.is_dir() and any(p.is_dir() for p in out.iterdir()),
    "five-done": lambda out: len(list(out.rglob("maps.npz"))) >= 5,
}


@pytest.mark.parametrize("moment", sorted(MOMENTS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_run_resumes_to_the_bytes_of_an_uninterrupted_one(uninterrupted, photos, tmp_path, sig, moment):
    out = tmp_path / "out"
    args = ("run", photos, "-o", out, *FAST, *KINDS)
    p = spawn(*args)
    _wait(lambda: MOMENTS[moment](out), p)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    killed = Outcome(p.returncode, stdout, stderr)
    if sig == signal.SIGKILL:
        assert killed.code == -signal.SIGKILL
        assert (out / ".attnviz.lock").exists()              # left behind: the rerun takes it over
    else:
        assert killed.code == 130, killed.stderr
        assert "interrupted; files written so far are complete" in killed.one_error()
        assert not (out / ".attnviz.lock").exists()
    listed = []
    if (out / "manifest.json").exists():                     # SIGKILL before the first batch: none yet
        check_listed_files(out)                              # every listed file is on disk and loads
        listed = [e for e in strict_json(out / "manifest.json")["images"] if e["status"] == "ok"]
    if moment == "five-done" and sig != signal.SIGKILL:
        assert len(listed) >= 5                              # the manifest is saved on the way out
    stamps = {f: f.stat().st_mtime_ns for e in listed for f in (out / e["output"]).iterdir()}

    rerun = cli(*args)
    assert rerun.code == 0, rerun.stderr
    if listed:
        row = re.search(r"already done \(resumed\)\W+(\d+)", rerun.stderr)
        assert row and int(row.group(1)) == len(listed), rerun.stderr
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps   # resumed images are not recomputed
    assert list(out.rglob(".*.tmp")) == [] and not (out / ".attnviz.lock").exists()
    assert_same_run(uninterrupted.out, out)
