"""Fast outputs: the writer pool keeps order and bytes, maps sit where they did, npz is reproducible."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from attnviz.maps import normalise, upsample
from attnviz.render import bilinear, overlay
from attnviz.report.atomic import save_npz
from attnviz.report.outputs import Style, image_entry, write_outputs
from attnviz.report.writer import Writer
from attnviz.results import AttentionMap, Prediction, Result
from tests.conftest import photo



# ---- Writer ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 1, 3])
def test_writer_hands_back_in_submission_order(workers: int) -> None:
    done: list[int] = []
    lock = threading.Lock()

    def task(i: int) -> None:
        time.sleep(0.02 * ((7 * i) % 5))          # later tasks often finish first
        with lock:
            done.append(i)
        if i == 4:
            raise OSError("disk full")
    got = []
    with Writer(workers, depth=4) as w:
        for i in range(10):
            w.submit(task, i, tag=i) if i != 6 else w.submit(None, tag=i)   # 6: nothing to run
            got += [(t, e) for t, e in w.finished()]
        got += list(w.drain())
    assert [t for t, _ in got] == list(range(10))
    assert sorted(done) == [i for i in range(10) if i != 6]
    errors = {t: e for t, e in got if e is not None}
    assert list(errors) == [4] and isinstance(errors[4], OSError)


def test_writer_depth_bounds_tasks_in_flight() -> None:
    running, peak = [0], [0]
    lock = threading.Lock()

    def task() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
    with Writer(2, depth=3) as w:
        for _ in range(12):
            w.submit(task)
            assert sum(not f.done() for _, f in w._queue) <= 3
        list(w.drain())
    assert peak[0] <= 2


# ---- overlays: geometry unchanged -------------------------------------------------------------------

def torch_upsample(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """The independent reference: torch's bilinear interpolate, align_corners=False."""
    import torch
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


@pytest.mark.parametrize("grid, size", [((7, 7), (512, 384)), ((5, 9), (300, 512)), ((24, 24), (96, 96))])
def test_the_one_resize_is_torch_bilinear(grid: tuple[int, int], size: tuple[int, int]) -> None:
    m = np.random.default_rng(0).random(grid).astype(np.float32)
    np.testing.assert_allclose(bilinear(m, size[1], size[0]), torch_upsample(m, size[1], size[0]), atol=1e-6)
    assert bilinear is resample_of() and np.array_equal(upsample(m, size[1], size[0]), bilinear(m, size[1], size[0]))


def resample_of():
    from attnviz.geometry import bilinear as one
    return one


@pytest.mark.parametrize("cell", [(0, 0), (3, 5), (6, 2), (6, 6)])
def test_one_hot_peak_lands_on_the_same_pixels_as_before(cell: tuple[int, int]) -> None:
    """Drawn colours equal the colormap of the reference upsampling (torch, attnviz.maps.upsample),
    and the hottest pixels sit where its peak is: nothing shifted, flipped or stretched."""
    m = np.zeros((7, 7), np.float32)
    m[cell] = 3.0
    w, h = 512, 384
    drawn = np.asarray(overlay(Image.new("RGB", (640, 480)), m, size=512, alpha=1.0))
    lut = matplotlib.colormaps["jet"](np.arange(256), bytes=True)[:, :3]
    idx = np.minimum(np.floor(np.clip(torch_upsample(normalise(m), h, w), 0, 1) * 256), 255).astype(int)
    same = np.all(drawn == lut[idx], axis=-1)
    assert same.mean() > 0.999                       # float rounding may move a rare boundary pixel
    hot = idx == idx.max()
    assert same[hot].all() and hot.sum() >= 1
    ry, rx = np.unravel_index(np.argmax(torch_upsample(m, h, w)), (h, w))
    assert hot[ry, rx] and tuple(drawn[ry, rx]) == tuple(lut[idx.max()])


# ---- files: bytes reproducible, the same for any worker count ----------------------------------------

def _result(seed: int) -> tuple[Result, Image.Image]:
    rng = np.random.default_rng(seed)
    maps = [AttentionMap("spatial", "spatial", "derived", "layer4", rng.random((5, 7)).astype(np.float32)),
            AttentionMap("channel", "channel", "native", "features.1", rng.random((5, 7)).astype(np.float32),
                         weights=rng.random(64).astype(np.float32),
                         extras={"gate:a": rng.random(16).astype(np.float32),
                                 "gate:b": rng.random(64).astype(np.float32)}),
            AttentionMap("self", "self", "native", "enc", rng.random((5, 7)).astype(np.float32),
                         extras={"heads": rng.random((3, 5, 7)).astype(np.float32)})]
    r = Result(f"img{seed}.png", Path(f"img{seed}.png"), f"img{seed}", size=(140, 100),
               predictions=[Prediction(1, "one", 0.5)], maps=maps)
    return r, photo(140, 100, seed)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_outputs_byte_identical_for_any_worker_count(tmp_path: Path) -> None:
    style = Style(size=96)
    trees = []
    for workers in (0, 2, 0):
        out = tmp_path / f"w{workers}_{len(trees)}"
        with Writer(workers) as w:
            for seed in range(4):
                r, im = _result(seed)
                w.submit(write_outputs, out, r, im, style, [(10, 10, 60, 50)], tag=r)
            assert [e for _, e in w.drain()] == [None] * 4
        trees.append(_files(out))
    assert trees[0] == trees[1] == trees[2]          # every byte, twice in one thread and threaded
    names = set(trees[0])
    assert {"img0/channel_weights.png", "img0/channel_depth.png", "img0/self-heads.png",
            "img0/grid.png", "img0/maps.npz", "img0/original.png"} <= names


def test_npz_reproducible_and_readable(tmp_path: Path) -> None:
    arrays = {"spatial": np.arange(12, dtype=np.float32).reshape(3, 4), "w": np.ones(5, np.float32)}
    save_npz(tmp_path / "a.npz", arrays)
    time.sleep(2.1)                                    # zip times have a 2 s resolution
    save_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as z:
        assert sorted(z.files) == ["spatial", "w"]
        np.testing.assert_array_equal(z["spatial"], arrays["spatial"])


@pytest.mark.parametrize("fmt, magic", [("jpg", b"\xff\xd8\xff"), ("webp", b"RIFF"), ("png", b"\x89PNG")])
def test_format_writes_overlays_and_names_them_in_the_manifest(tmp_path: Path, fmt: str, magic: bytes) -> None:
    r, im = _result(0)
    style = Style(size=96, format=fmt)
    write_outputs(tmp_path, r, im, style)
    for name in ("original", "spatial", "channel", "self"):
        assert (tmp_path / "img0" / f"{name}.{fmt}").read_bytes().startswith(magic)
    assert (tmp_path / "img0" / "grid.png").read_bytes().startswith(b"\x89PNG")   # sheets stay PNG
    entry = json.loads(json.dumps(image_entry(r, style.ext)))
    assert [m["file"] for m in entry["maps"]] == [f"{n}.{fmt}" for n in ("spatial", "channel", "self")]
    shown = np.asarray(Image.open(tmp_path / "img0" / f"spatial.{fmt}").convert("RGB"), dtype=int)
    want = np.asarray(overlay(im, r.maps[0].data, size=96), dtype=int)
    assert np.abs(shown - want).mean() < (0.5 if fmt == "png" else 6)   # lossy formats stay close


def test_run_same_files_and_manifest_for_any_worker_count(tmp_path: Path, resnet18_small) -> None:
    from attnviz.pipeline import run
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        photo(90 + 10 * i, 70, seed=i).save(src / f"p{i}.png")
    (src / "broken.png").write_bytes(b"not an image")
    trees, images = [], []
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        report = run([src], out, backbone=resnet18_small, batch_size=2, workers=workers,
                     style=Style(size=64))
        assert [r.source for r in report.results] == sorted(p.name for p in src.iterdir())
        manifest = json.loads((out / "manifest.json").read_text())
        images.append(manifest["images"])
        trees.append({k: v for k, v in _files(out).items() if k != "manifest.json"})
    assert images[0] == images[1] and [i["status"] for i in images[0]].count("error") == 1
    assert trees[0] == trees[1] and len(trees[0]) > 5 * 8


@pytest.mark.parametrize("deflate", ["default", "zlib"])
@pytest.mark.parametrize("mode, size", [("RGB", (97, 61)), ("L", (1, 1)), ("RGB", (3000, 2)), ("RGBA", (5, 4))])
def test_encode_png_round_trips(mode: str, size: tuple[int, int], deflate: str, monkeypatch) -> None:
    """Lossless with ISA-L's deflate (the default where `isal` is installed) and with zlib (without it)."""
    import io
    import zlib
    from attnviz.report import atomic
    from attnviz.report.atomic import encode_png
    if deflate == "zlib":
        monkeypatch.setattr(atomic, "_deflate", zlib)
    rng = np.random.default_rng(0)
    shape = (size[1], size[0]) + ((len(mode),) if len(mode) > 1 else ())
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    back = Image.open(io.BytesIO(encode_png(img)))
    back.load()                                        # Pillow checks every chunk's CRC
    assert back.mode == mode and back.size == size
    np.testing.assert_array_equal(np.asarray(back), np.asarray(img))


def test_cli_format_and_workers(tmp_path: Path) -> None:
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    photo(90, 60, 1).save(tmp_path / "cat.png")
    out = tmp_path / "out"
    fast = ["--backbone", "resnet18", "--weights", "none", "--input-size", "64", "--size", "96", "--seed", "0"]
    proc = subprocess.run([sys.executable, "-m", "attnviz.cli", "run", str(tmp_path / "cat.png"), "-o", str(out),
                           *fast, "--format", "jpg", "--workers", "1", "-q"],
                          capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr
    files = {m["file"] for m in json.loads((out / "manifest.json").read_text())["images"][0]["maps"]}
    assert files and all(f.endswith(".jpg") and (out / "cat" / f).exists() for f in files)
    assert (out / "cat" / "original.jpg").exists() and (out / "cat" / "grid.png").exists()
    bad = subprocess.run([sys.executable, "-m", "attnviz.cli", "run", str(tmp_path / "cat.png"), "-o", str(out),
                          *fast, "--format", "gif"], capture_output=True, text=True, cwd=root, timeout=300)
    assert bad.returncode == 2 and "png, jpg or webp" in bad.stderr and "Traceback" not in bad.stderr


def test_writer_on_error_finishes_started_tasks_and_drops_the_rest() -> None:
    started, finished = [], []
    gate = threading.Event()

    def task(i: int) -> None:
        started.append(i)
        gate.wait(2)
        finished.append(i)
    with pytest.raises(KeyboardInterrupt):
        with Writer(1, depth=10) as w:
            for i in range(5):
                w.submit(task, i, tag=i)
            time.sleep(0.05)
            threading.Timer(0.3, gate.set).start()     # task 0 is still running when we leave
            raise KeyboardInterrupt
    assert started == finished == [0]                  # the running task ended; queued ones never began
