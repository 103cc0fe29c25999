"""A run's memory does not grow with its number of images: the manifest's entries wait on disk (a
spool), the folder reports read them back one at a time; and the files are byte for byte what
holding them all wrote (the manifest, summary.csv and index.html are a public interface)."""
from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from attnviz.pipeline import run
from attnviz.pipeline.outdir import read_manifest
from attnviz.report.atomic import save_json
from attnviz.report.folder import write_reports
from attnviz.report.manifest import Manifest, RunRecord
from attnviz.report.outputs import Style
from attnviz.zoo.world import make_scene

N = 48                  # images of the run whose memory is followed (6 batches of 8)
FROM = 16               # measured from the second batch's end (caches and pools warm by then)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from PIL import Image
    folder = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(5)
    for i in range(N):
        Image.fromarray(np.asarray(make_scene(rng).image, np.uint8)).save(folder / f"scene_{i:03d}.png")
    return folder


def test_a_run_holds_nothing_per_image_once_written(scenes, tmp_path):
    """The Python heap after image 16 and after image 48 of one run: the same within a few KB per
    image (holding each image's manifest entry alone costs ~44 KB per demo image: the old runner
    grew by that, and its end reports loaded the whole manifest back on top). And the reports at
    the end add about one entry's worth, not the folder's."""
    heap: dict[int, int] = {}
    done = [0]

    def on_batch(n: int) -> None:
        done[0] += n
        heap[done[0]] = tracemalloc.get_traced_memory()[0]
        if done[0] == N:
            tracemalloc.reset_peak()            # what follows: the manifest's last save and the reports

    tracemalloc.start()
    try:
        report = run([scenes], tmp_path / "out", backbone="demo", weights="DEFAULT", batch_size=8, workers=0,
                     style=Style(size=64), on_batch=on_batch)
        end_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(report.results) == N and not report.failed
    per_image = (heap[N] - heap[FROM]) / (N - FROM)
    assert per_image < 8_000, f"the heap grew {per_image / 1000:.1f} KB per image written"
    # the last save and the reports: ~0.4 MB (one entry, one maps.npz, the page's head); the old runner
    # read the manifest back whole: its bytes, text and dicts, ~65 KB per image (~3 MB for these 48)
    assert end_peak - heap[N] < 1_000_000, f"the reports took {(end_peak - heap[N]) / 1e6:.2f} MB"


def test_the_spool_is_invisible_and_let_go(scenes, tmp_path):
    """The spool has no name in OUT (an unnamed file), and nothing is left open after the run."""
    out = tmp_path / "out"
    fds = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else None
    run([scenes], out, backbone="demo", weights="DEFAULT", batch_size=8, workers=0, style=Style(size=64),
        kinds=["spatial"])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".attnviz.lock"]
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds


def _entry(i: int, prompt: str | None = None, score: float = 0.5, status: str = "ok") -> dict:
    maps = [{"kind": "spatial", "name": "spatial", "provenance": "derived", "layer": "l", "file": "spatial.png",
             "npz_key": "spatial", "peak": [0.5, 0.5], "min": float("nan"), "geometry": {"stride": [8, 8]}}]
    if prompt is not None:
        maps.append({"kind": "cross", "name": f"cross-{i}", "provenance": "derived", "layer": "l",
                     "file": f"cross-{i}.png", "npz_key": "c", "peak": [0.1, 0.9], "prompt": prompt,
                     "probability": score, "prompt_source": "--text"})
    return {"source": f"é/{i}\udcff.png", "output": f"o{i}", "status": status,
            "error": None if status == "ok" else "bad\n<x>", "size": (8, 8), "predictions": [],
            "maps": maps if status == "ok" else []}


def test_the_manifest_is_the_whole_document_s_bytes(tmp_path):
    """The spooled save writes exactly what json.dumps of the whole document wrote (NaN as null,
    non-ASCII kept, an undecodable name backslash-escaped), rankings included, in manifest order."""
    record = RunRecord(backbone={"name": "x", "pretrained": False}, kinds=["spatial", "cross"], settings={})
    m = Manifest(tmp_path, record, Style(), 4, "attnviz run")
    entries = [_entry(0, "a dog", 0.2), _entry(1, "a dog", 0.9), _entry(2, status="error"), _entry(3, "a cat", 0.4)]
    m.order = ["o3", "o1", "o0", "o2"]
    for e in entries:
        m.keep(e)
    m.keep(_entry(1, "a dog", 0.7))                 # recorded again: the newer record counts
    entries[1] = _entry(1, "a dog", 0.7)
    m.sanity = {"spatial": 0.95}
    m.save(seconds=1.25)
    written = (tmp_path / "manifest.json").read_bytes()
    doc = json.loads(written)
    assert [e["output"] for e in doc["images"]] == m.order
    assert doc["summary"]["rankings"] == {
        "a dog": [{"source": "é/1\udcff.png", "output": "o1", "score": 0.7, "peak": [0.1, 0.9], "file": "cross-1.png"},
                  {"source": "é/0\udcff.png", "output": "o0", "score": 0.2, "peak": [0.1, 0.9], "file": "cross-0.png"}],
        "a cat": [{"source": "é/3\udcff.png", "output": "o3", "score": 0.4, "peak": [0.1, 0.9], "file": "cross-3.png"}]}
    reference = tmp_path / "reference.json"
    by_output = {e["output"]: e for e in entries}
    save_json(reference, {**{k: v for k, v in doc.items() if k != "images"},
                          "images": [by_output[o] for o in m.order]})
    assert written == reference.read_bytes()
    assert doc["summary"] == {"images": 4, "ok": 3, "errors": 1, "seconds": 1.25, "rankings": doc["summary"]["rankings"]}
    assert list(m.images()) == doc["images"] and len(m.document()["images"]) == 4
    m.close()


def test_an_empty_manifest_is_valid_json(tmp_path):
    m = Manifest(tmp_path, RunRecord(backbone={"name": "x"}, kinds=[], settings={}), Style(), 4, "c")
    m.save()
    assert json.loads((tmp_path / "manifest.json").read_text())["images"] == []


def test_reports_from_the_spool_are_those_from_the_saved_manifest(scenes, tmp_path):
    """index.html, summary.csv and the agreement files a run writes from its spooled entries are the
    bytes written from its manifest read back whole; so with a damaged entry (an error record each)."""
    out = tmp_path / "out"
    run([scenes], out, backbone="demo", weights="DEFAULT", batch_size=8, workers=0,
        style=Style(size=64), stats=True)
    names = ("index.html", "summary.csv", "agreement.csv", "agreement.png")
    by_run = {n: (out / n).read_bytes() for n in names}
    manifest = read_manifest(out)
    write_reports(out, manifest, stats=True)
    assert {n: (out / n).read_bytes() for n in names} == by_run
    (out / "scene_003" / "maps.npz").write_bytes(b"damaged")
    write_reports(out, manifest, stats=True)
    from_list = {n: (out / n).read_bytes() for n in names}
    spool = Manifest(out, RunRecord(backbone={}, kinds=[], settings={}), Style(), 8, "")
    spool.head = {k: v for k, v in manifest.items() if k not in ("images", "summary", "sanity")}
    for e in manifest["images"]:
        spool.keep(e)
    write_reports(out, spool.document(), stats=True)
    spool.close()
    assert {n: (out / n).read_bytes() for n in names} == from_list
    assert b"files damaged" in from_list["summary.csv"] and b"files damaged" in from_list["index.html"]


def test_reading_a_small_file_does_not_allocate_the_limit(tmp_path):
    """read_small sizes its buffer by the file: the manifest's 4 GiB limit was allocated up front
    (refused where memory is not overcommitted), and a file growing while read is still caught."""
    from attnviz.text import read_small
    path = tmp_path / "m.json"
    path.write_bytes(b"x" * 1000)
    tracemalloc.start()
    try:
        assert read_small(path, "manifest", 1 << 32) == b"x" * 1000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    with pytest.raises(Exception, match="larger than 999"):
        read_small(path, "manifest", 999)


def test_a_full_disk_under_the_spool_stops_the_run_in_one_line(scenes, tmp_path, monkeypatch):
    """The spool lies on OUT's disk: when it is full the run stops naming the manifest (exit 2), and
    the manifest lists the images recorded before."""
    import errno
    from attnviz.errors import AttnvizError
    real, calls = Manifest.keep, []

    def keep(self, entry):
        calls.append(entry["output"])
        if len(calls) >= 3:                     # full from the third record on
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, entry)
    monkeypatch.setattr(Manifest, "keep", keep)
    out = tmp_path / "out"
    with pytest.raises(AttnvizError, match="cannot write .*manifest.json: No space left on device"):
        run([scenes], out, backbone="demo", weights="DEFAULT", batch_size=8, workers=0, style=Style(size=64),
            kinds=["spatial"])
    assert [e["output"] for e in read_manifest(out)["images"]] == calls[:2]
