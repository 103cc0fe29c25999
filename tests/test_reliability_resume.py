"""Reliability, part 3 (issue 21): resume verifies what it keeps (damaged files, changed inputs,
another environment), readers turn damaged or foreign records into notes, --force leaves no empty
folder behind, Ray records --format's names, and analyse() applies run's checks."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import attnviz
from attnviz.errors import AttnvizError
from attnviz.pipeline import run
from attnviz.pipeline.outdir import read_manifest
from attnviz.report.folder import write_reports
from attnviz.report.outputs import Style
from tests.clirun import FAST, assert_same_run, check_listed_files, cli, strict_json
from tests.conftest import photo

KINDS = ["--kinds", "spatial,channel", "--batch-size", "2"]
API = dict(backbone="resnet18", weights="none", input_size=64, seed=0, style=Style(size=96), kinds=["spatial"])


def _photos(folder: Path, n: int, suffix: str = "png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo(50 + 4 * i, 40 + 2 * i, 20 + i).save(folder / f"im{i:02d}.{suffix}")
    return folder


def _csv_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))


# ---- damaged outputs ---------------------------------------------------------------------------------

def test_damaged_outputs_are_notes_for_readers_and_redone_on_resume(tmp_path):
    src, out = _photos(tmp_path / "in", 5), tmp_path / "out"
    assert cli("run", src, "-o", out, *FAST, *KINDS).code == 0
    reference = tmp_path / "reference"
    shutil.copytree(out, reference)
    entry = strict_json(out / "manifest.json")["images"][0]
    assert entry["file_bytes"] == {f: (out / "im00" / f).stat().st_size for f in entry["files"]}
    (out / "im00" / "grid.png").write_bytes((out / "im00" / "grid.png").read_bytes()[:10])   # truncated
    npz = out / "im01" / "maps.npz"
    npz.write_bytes(b"\0" * npz.stat().st_size)                        # same size, not a zip
    (out / "im02" / "maps.npz").write_bytes(b"")
    (out / "im03" / "channel.png").unlink()

    sheet = cli("compare", out, "-o", tmp_path / "sheet.png", "-q")        # reads original.png, maps.npz
    assert sheet.code == 1, sheet.stderr
    failed = sorted(ln for ln in sheet.stderr.splitlines() if ln.startswith("failed:"))
    assert failed == ["failed: im01.png: files damaged: maps.npz is not a whole npz (File is not a zip file); "
                      "rerun `attnviz run` to redo it",
                      "failed: im02.png: files damaged: maps.npz has 0 bytes, " +
                      f"{strict_json(reference / 'manifest.json')['images'][2]['file_bytes']['maps.npz']} when written; "
                      "rerun `attnviz run` to redo it"]

    scored = tmp_path / "scored"
    shutil.copytree(out, scored)
    (tmp_path / "boxes.json").write_text(json.dumps({f"im{i:02d}.png": [[0, 0, 20, 20]] for i in range(5)}))
    ev = cli("evaluate", scored, "--boxes", tmp_path / "boxes.json")
    assert ev.code == 1 and "Traceback" not in ev.stderr, ev.stderr
    assert sorted(ln.split(":")[1].strip() for ln in ev.stderr.splitlines() if ln.startswith("skipped:")) == \
        ["im01.png", "im02.png"]

    write_reports(out, read_manifest(out))                              # the gallery and CSV of it
    page = (out / "index.html").read_text()
    assert page.count("files damaged") >= 4 and 'src="im00/grid.png"' not in page
    rows = {r["source"]: r for r in _csv_rows(out / "summary.csv")}
    assert "grid.png has 10 bytes" in rows["im00.png"]["error"] and rows["im04.png"]["error"] == ""
    assert "channel.png is missing" in rows["im03.png"]["error"]

    again = cli("run", src, "-o", out, *FAST, *KINDS)
    assert again.code == 0, again.stderr
    assert "computed again: im00.png: its files were damaged (grid.png has 10 bytes" in again.stderr
    assert "(and 3 more)" in again.stderr and "already done (resumed)" in again.stderr
    assert_same_run(reference, out)                                     # redone to the same bytes


# ---- changed inputs ----------------------------------------------------------------------------------

def test_an_input_changed_with_the_same_size_and_mtime_is_redone(tmp_path):
    src, out = _photos(tmp_path / "in", 2, "bmp"), tmp_path / "out"        # BMP: same size for any pixels
    assert cli("run", src, "-o", out, *FAST, *KINDS).code == 0
    before = strict_json(out / "manifest.json")["images"]
    path = src / "im00.bmp"
    stat = path.stat()
    size = path.stat().st_size
    Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == size and path.stat().st_mtime_ns == stat.st_mtime_ns
    again = cli("run", src, "-o", out, *FAST, *KINDS)
    assert again.code == 0 and "computed again: im00.bmp: its input changed since" in again.stderr, again.stderr
    after = strict_json(out / "manifest.json")["images"]
    assert after[1] == before[1]                                          # the other one kept as it was
    assert after[0]["input"]["bytes"] == size and after[0]["input"]["sha256"] != before[0]["input"]["sha256"]
    import hashlib
    assert after[0]["input"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert after[0]["maps"][0]["mean"] != before[0]["maps"][0]["mean"]


# ---- --force, then the same rerun ----------------------------------------------------------------------

def test_the_rerun_after_force_dropped_an_image_works(tmp_path):
    src, out = _photos(tmp_path / "in", 3), tmp_path / "out"
    assert cli("run", src, "-o", out, *FAST, *KINDS).code == 0
    (src / "sub").mkdir()
    photo(40, 40, 9).save(src / "sub" / "deep.png")
    assert cli("run", src, "-o", out, *FAST, *KINDS).code == 0             # sub/deep recorded too
    shutil.rmtree(src / "sub")
    forced = cli("run", src / "im00.png", src / "im01.png", "-o", out, *FAST, "--kinds", "spatial", "--force")
    assert forced.code == 0, forced.stderr
    assert sorted(p.name for p in out.iterdir()) == ["im00", "im01", "index.html", "manifest.json", "summary.csv"]
    rerun = cli("run", src / "im00.png", src / "im01.png", "-o", out, *FAST, "--kinds", "spatial")
    assert rerun.code == 0, rerun.stderr
    assert "already done (resumed)" in rerun.stderr


# ---- a hand-edited manifest ------------------------------------------------------------------------------

def test_records_pointing_outside_out_are_never_kept_linked_or_read(tmp_path):
    src, out = _photos(tmp_path / "in", 2), tmp_path / "out"
    assert cli("run", src, "-o", out, *FAST, *KINDS).code == 0
    victim = tmp_path / "victim"
    shutil.copytree(out / "im01", victim)
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    manifest = strict_json(out / "manifest.json")
    manifest["images"][1]["output"] = "../victim"
    manifest["images"].append({**manifest["images"][0], "source": "abs.png", "output": str(victim)})
    manifest["images"].append({**manifest["images"][0], "source": "files.png", "output": "im00",
                               "files": ["../../victim/original.png"]})
    (out / "manifest.json").write_text(json.dumps(manifest))

    write_reports(out, read_manifest(out))                              # readers: a note each
    page = (out / "index.html").read_text()
    assert "victim" not in page.replace("../victim&#x27; lies outside", "").replace(f"{victim}&#x27; lies", "") \
        or "src=\"../victim" not in page
    assert 'src="../victim' not in page and f'src="{victim}' not in page
    rows = {r["source"]: r for r in _csv_rows(out / "summary.csv")}
    assert "lies outside the run folder" in rows["im01.png"]["error"] and rows["im01.png"]["output"] == ""
    assert "lies outside the run folder" in rows["abs.png"]["error"]
    assert "names files outside its folder" in rows["files.png"]["error"]
    sheet = cli("compare", out, "-o", tmp_path / "sheet.png", "-q")
    assert sheet.code == 1 and sum(ln.startswith("failed:") for ln in sheet.stderr.splitlines()) == 3

    again = cli("run", src, "-o", out, *FAST, *KINDS, "--force")
    assert again.code == 0, again.stderr
    outputs = [e["output"] for e in strict_json(out / "manifest.json")["images"]]
    assert outputs == ["im00", "im01"] and check_listed_files(out) == 2 * 6
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before   # never touched


def test_resume_drops_foreign_records_without_force(tmp_path):
    src, out = _photos(tmp_path / "in", 2), tmp_path / "out"
    assert cli("run", src, "-o", out, *FAST, *KINDS).code == 0
    manifest = strict_json(out / "manifest.json")
    manifest["images"].append({**manifest["images"][0], "source": "gone.png", "output": "../elsewhere"})
    (out / "manifest.json").write_text(json.dumps(manifest))
    again = cli("run", src, "-o", out, *FAST, *KINDS)
    assert again.code == 0 and "already done (resumed) │ 2" in again.stderr, again.stderr
    assert [e["output"] for e in strict_json(out / "manifest.json")["images"]] == ["im00", "im01"]


# ---- the environment that changes numbers -----------------------------------------------------------------

def test_resume_under_other_torch_threads_is_refused_naming_them(tmp_path):
    src, out = _photos(tmp_path / "in", 2), tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run([src], out, **API)
        torch.set_num_threads(2)
        with pytest.raises(AttnvizError, match=r"torch threads: 1 → 2 \(OMP_NUM_THREADS"):
            run([src], out, **API)
        report = run([src], out, **API, force=True)
        assert report.resumed == 0 and len(report.results) == 2
    finally:
        torch.set_num_threads(threads)
    env = strict_json(out / "manifest.json")["fingerprint"]["environment"]
    assert env["torch threads"] == 2 and env["device"] == "cpu" and env["torch"] == torch.__version__


def test_resume_lays_batches_out_with_the_earlier_batch_size(tmp_path):
    src, out = _photos(tmp_path / "in", 3), tmp_path / "out"
    assert cli("run", src, "-o", out, *FAST, *KINDS).code == 0
    reference = tmp_path / "reference"
    shutil.copytree(out, reference)
    (out / "im02" / "maps.npz").unlink()
    again = cli("run", src, "-o", out, *FAST, "--kinds", "spatial,channel", "--batch-size", "3")
    assert again.code == 0 and "resumed with the earlier run's --batch-size 2" in again.stderr, again.stderr
    assert strict_json(out / "manifest.json")["settings"]["batch_size"] == 2
    assert_same_run(reference, out)


# ---- Ray records the files --format wrote -----------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_ray_worker_records_the_format_it_wrote(tmp_path, fmt):
    """The actor's records (called here without a cluster) name the .jpg/.webp files it wrote."""
    from attnviz.images import discover
    from attnviz.pipeline.analyser import Analyser
    from attnviz.pipeline.distributed import _rows, _Worker
    src, out = _photos(tmp_path / "in", 2), tmp_path / "out"
    style = Style(size=96, format=fmt)
    analyser = Analyser("resnet18", ["spatial"], weights="none", input_size=64, seed=0)
    worker = _Worker("resnet18", ["spatial"], analyser.config, str(out), style, {}, {}, False, {}, 2 ** 27, None)
    rows = _rows(discover([src]), {}, 2)
    records = [json.loads(r) for r in worker({"batch": np.array([rows[0]["batch"]], dtype=object)})["record"]]
    assert len(records) == 2
    for e in records:
        assert [m["file"] for m in e["maps"]] == [f"spatial.{fmt}"] and f"original.{fmt}" in e["files"]
        assert all((out / e["output"] / f).is_file() for f in e["files"])
        assert e["file_bytes"] == {f: (out / e["output"] / f).stat().st_size for f in e["files"]}


# ---- analyse() applies run's checks -------------------------------------------------------------------------

def test_analyse_turns_nan_maps_and_a_query_outside_into_error_results(tmp_path):
    sd = torchvision.models.resnet18().state_dict()
    sd["fc.weight"].view(-1)[0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    image = photo(60, 40)
    [r] = attnviz.analyse(image, "resnet18", ["spatial"], weights=str(tmp_path / "nan.pt"), input_size=64)
    assert r.status == "error" and "not finite" in r.error and r.maps == [] and r.predictions == []
    outside = attnviz.analyse([image, photo(300, 200)], "resnet18", ["spatial", "self"], weights="none",
                              input_size=64, seed=0, query=(250.0, 10.0))
    assert outside[0].status == "error" and "--query 250,10 lies outside this 60×40 image" in outside[0].error
    assert outside[1].status == "ok" and outside[1].maps


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_structure_check_finds_a_cut_file_without_recorded_sizes(tmp_path, fmt):
    """Records of older runs have no file_bytes: a cut picture or npz is still found by its format."""
    from attnviz.report.atomic import FORMATS, save_image, save_npz
    from attnviz.report.integrity import damage
    folder = tmp_path / "a"
    save_image(folder / f"original.{fmt}", photo(40, 30), fmt)
    save_npz(folder / "maps.npz", {"spatial": np.ones((2, 2), np.float32)})
    entry = {"output": "a", "status": "ok", "files": [f"original.{fmt}", "maps.npz"],
             "maps": [{"npz_key": "spatial", "file": f"spatial.{fmt}"}]}
    assert damage(tmp_path, entry) is None and FORMATS[fmt][0] == fmt
    data = (folder / f"original.{fmt}").read_bytes()
    (folder / f"original.{fmt}").write_bytes(data[:-7])
    assert damage(tmp_path, entry) == f"original.{fmt} is not a whole {dict(png='PNG', jpg='JPEG', webp='WebP')[fmt]}"
    (folder / f"original.{fmt}").write_bytes(data)
    save_npz(folder / "maps.npz", {"other": np.ones((2, 2), np.float32)})
    assert damage(tmp_path, entry) == "maps.npz has no array 'spatial'"


def test_a_jpg_run_is_read_back_by_gallery_compare_and_resume(tmp_path):
    """--format jpg: the gallery links original.jpg, compare reads it, a resume keeps it whole."""
    src, out = _photos(tmp_path / "in", 2), tmp_path / "out"
    assert cli("run", src, "-o", out, *FAST, *KINDS, "--format", "jpg").code == 0
    page = (out / "index.html").read_text()
    assert 'src="im00/original.jpg"' in page and "original.png" not in page
    sheet = cli("compare", out, "-o", tmp_path / "sheet.png", "-q")
    assert sheet.code == 0, sheet.stderr
    again = cli("run", src, "-o", out, *FAST, *KINDS, "--format", "jpg")
    assert again.code == 0 and "already done (resumed) │ 2" in again.stderr, again.stderr
