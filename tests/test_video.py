"""Video inputs: frames sampled, analysed exactly as images, written as videos; broken files are
that file's error (frames before the break kept). Clips are made in code with PyAV."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

av = pytest.importorskip("av")

from attnviz.errors import AttnvizError  # noqa: E402
from attnviz.pipeline import run  # noqa: E402
from attnviz.pipeline.video import VideoSettings  # noqa: E402
from attnviz.video import Sampling, is_video, require_av, sample  # noqa: E402
from videoclips import hits, moving_object, noise_clip  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:demo. an image unlike")   # the noise clip is not the demo world

FOLLOWING = ("spatial", "self", "self-rollout", "cross-top-1-class")   # maps that must sit on the object


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """Two clips of a demo-world object crossing the frame, run once through the demo model."""
    d = tmp_path_factory.mktemp("video")
    (d / "in").mkdir()
    boxes = {}
    for seed in (3, 5):
        boxes[f"c{seed}.mp4"], _ = moving_object(d / "in" / f"c{seed}.mp4", frames=20, seed=seed)
    report = run([d / "in"], d / "out", backbone="demo", batch_size=6, video=VideoSettings(fps=10))
    return d, boxes, report, json.loads((d / "out" / "manifest.json").read_text())


def _peaks(entry, name):
    return [next(m["peak"] for m in f["maps"] if m["name"] == name) for f in entry["frames"]]


def test_maps_follow_the_object_frame_by_frame(moving):
    d, boxes, report, manifest = moving
    assert not report.failed
    for entry in manifest["images"]:
        truth = boxes[entry["source"]]
        assert [f["index"] for f in entry["frames"]] == list(range(20))      # 10 fps of 10 fps: every frame
        for name in FOLLOWING:
            rate = np.mean(hits(truth, _peaks(entry, name)))
            assert rate >= 0.95, (entry["source"], name, rate)
            # the control: the same peaks against the boxes in reverse order miss (the object moved)
            assert np.mean(hits(truth[::-1], _peaks(entry, name))) < 0.5


def test_each_frame_is_analysed_exactly_as_an_image(moving):
    """maps.npz of the video equals `analyse` on the decoded frames given as images, same batches."""
    import attnviz
    d, _, _, manifest = moving
    entry = next(e for e in manifest["images"] if e["source"] == "c3.mp4")
    frames = [f.image for f in sample(d / "in" / "c3.mp4", Sampling(fps=10))]
    results = attnviz.analyse(frames, "demo", batch_size=6)
    with np.load(d / "out" / entry["output"] / "maps.npz") as z:
        assert z["spatial"].shape[0] == 20 and list(z["frame_index"]) == list(range(20))
        np.testing.assert_allclose(z["frame_time"], np.arange(20) / 10, atol=1e-6)
        for k, r in enumerate(results):
            np.testing.assert_array_equal(z["spatial"][k], r.numpy("spatial"))
            np.testing.assert_array_equal(z["self"][k], r.numpy("self"))
            np.testing.assert_array_equal(z["channel_weights"][k], r.map("channel").weights)


def test_outputs_layout_and_decodable_videos(moving):
    d, _, _, manifest = moving
    entry = manifest["images"][0]
    folder = d / "out" / entry["output"]
    names = [m["name"] for m in entry["maps"]]
    assert {"original.mp4", "grid.mp4", "maps.npz", "channel_weights.png"} <= set(entry["files"])
    assert {f"{n}.mp4" for n in names} <= set(entry["files"])
    for f in ("original.mp4", "self.mp4", "grid.mp4"):
        with av.open(str(folder / f)) as c:
            assert len(list(c.decode(video=0))) == 20
    assert entry["video"]["codec"] in ("libx264", "mpeg4") and entry["video"]["complete"]
    assert entry["frames"][3]["time"] == pytest.approx(0.3)
    rows = (d / "out" / "summary.csv").read_text().splitlines()
    assert rows[0].endswith(",frame,time")
    assert sum(r.startswith("c3.mp4,") for r in rows) == 20 * len(names)      # one row per frame × map
    html = (d / "out" / "index.html").read_text()
    assert '<video src="c3/self.mp4"' in html


def test_sampling_every_and_max_frames(tmp_path):
    moving_object(tmp_path / "c.mp4", frames=20, fps=10)
    assert [f.index for f in sample(tmp_path / "c.mp4", Sampling(fps=2))] == [0, 5, 10, 15]
    assert [f.index for f in sample(tmp_path / "c.mp4", Sampling(None, every=3, max_frames=4))] == [0, 3, 6, 9]
    assert [f.time for f in sample(tmp_path / "c.mp4", Sampling(fps=4))] == pytest.approx([0, 0.3, 0.5, 0.8, 1.0, 1.3, 1.5, 1.8])


def test_truncated_video_keeps_frames_before_the_cut(tmp_path):
    (tmp_path / "in").mkdir()
    noise_clip(tmp_path / "full.mkv", 40)
    data = (tmp_path / "full.mkv").read_bytes()
    (tmp_path / "in" / "cut.mkv").write_bytes(data[: len(data) * 6 // 10])
    moving_object(tmp_path / "in" / "fine.mp4", frames=6)
    report = run([tmp_path / "in"], tmp_path / "out", backbone="demo", batch_size=4, video=VideoSettings(fps=10))
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    cut = next(e for e in m["images"] if e["source"] == "cut.mkv")
    fine = next(e for e in m["images"] if e["source"] == "fine.mp4")
    assert fine["status"] == "ok" and len(fine["frames"]) == 6           # the other file is unharmed
    assert cut["status"] == "error" and "truncated" in cut["error"] and "kept" in cut["error"]
    assert 10 <= len(cut["frames"]) < 40 and not cut["video"]["complete"]
    with np.load(tmp_path / "out" / "cut" / "maps.npz") as z:
        assert z["self"].shape[0] == len(cut["frames"])
    assert [r.source for r in report.failed] == ["cut.mkv"]
    rows = [r for r in (tmp_path / "out" / "summary.csv").read_text().splitlines() if r.startswith("cut.mkv,")]
    assert rows and all(",error," in r for r in rows)                  # the frames kept, their error said


def test_zero_frames_and_not_a_video(tmp_path):
    (tmp_path / "in").mkdir()
    with av.open(str(tmp_path / "in" / "empty.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()
    (tmp_path / "in" / "notes.mp4").write_text("this is not a video\n")
    moving_object(tmp_path / "in" / "fine.mp4", frames=4)
    assert is_video(tmp_path / "in" / "notes.mp4") and is_video(tmp_path / "in" / "fine.mp4")
    report = run([tmp_path / "in"], tmp_path / "out", backbone="demo", video=VideoSettings(fps=10))
    m = {e["source"]: e for e in json.loads((tmp_path / "out" / "manifest.json").read_text())["images"]}
    assert m["fine.mp4"]["status"] == "ok"
    assert m["empty.mp4"]["status"] == "error" and "no frames" in m["empty.mp4"]["error"]
    assert m["notes.mp4"]["status"] == "error" and "not a readable video" in m["notes.mp4"]["error"]
    assert sorted(r.source for r in report.failed) == ["empty.mp4", "notes.mp4"]
    assert not (tmp_path / "out" / "empty").exists()                  # nothing written for no frames


def test_content_decides_not_the_suffix(tmp_path):
    from PIL import Image
    moving_object(tmp_path / "clip.mp4", frames=3)
    (tmp_path / "clip.mp4").rename(tmp_path / "clip.bin")
    Image.new("RGB", (8, 8)).save(tmp_path / "still.png")
    frames = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert is_video(tmp_path / "clip.bin") and not is_video(tmp_path / "still.png")
    assert not is_video(tmp_path / "anim.gif") and is_video(tmp_path / "anim.gif", "video")
    assert [f.time for f in sample(tmp_path / "anim.gif", Sampling(fps=10))] == pytest.approx([0, 0.1, 0.2])


def test_rerun_resumes_a_complete_video_and_redoes_an_interrupted_one(tmp_path):
    (tmp_path / "in").mkdir()
    moving_object(tmp_path / "in" / "a.mp4", frames=6)
    moving_object(tmp_path / "in" / "b.mp4", frames=6, seed=5)
    run([tmp_path / "in"], tmp_path / "out", backbone="demo", video=VideoSettings(fps=10))
    before = (tmp_path / "out" / "a" / "self.mp4").stat().st_mtime_ns
    # b was interrupted: its record gone, a half-written temporary left beside its files
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    manifest["images"] = [e for e in manifest["images"] if e["source"] == "a.mp4"]
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "out" / "b" / ".self.mp4.abcd1234.tmp").write_bytes(b"half")
    report = run([tmp_path / "in"], tmp_path / "out", backbone="demo", video=VideoSettings(fps=10))
    assert report.resumed == 1 and [r.source for r in report.results] == ["b.mp4"]
    assert (tmp_path / "out" / "a" / "self.mp4").stat().st_mtime_ns == before
    assert not (tmp_path / "out" / "b" / ".self.mp4.abcd1234.tmp").exists()
    with pytest.raises(AttnvizError, match="other settings"):        # another sampling is another run
        run([tmp_path / "in"], tmp_path / "out", backbone="demo", video=VideoSettings(fps=5))


def test_video_scale_and_smoothing_are_recorded_and_npz_stays_raw(tmp_path):
    (tmp_path / "in").mkdir()
    moving_object(tmp_path / "in" / "a.mp4", frames=8)
    run([tmp_path / "in"], tmp_path / "f", backbone="demo", video=VideoSettings(fps=10))
    run([tmp_path / "in"], tmp_path / "v", backbone="demo",
        video=VideoSettings(fps=10, smooth=0.5, video_scale="video"))
    m = json.loads((tmp_path / "v" / "manifest.json").read_text())
    e = m["images"][0]
    assert m["settings"]["smooth"] == 0.5 and m["settings"]["video_scale"] == "video"
    assert e["video"]["scale"] == "video" and e["video"]["smooth"] == 0.5
    with np.load(tmp_path / "f" / "a" / "maps.npz") as f, np.load(tmp_path / "v" / "a" / "maps.npz") as v:
        np.testing.assert_array_equal(f["self"], v["self"])              # raw, never smoothed
        ema = [f["self"][0]]
        for k in range(1, len(f["self"])):
            ema.append(0.5 * f["self"][k] + 0.5 * ema[-1])
        lo, hi = e["video"]["spans"]["self"]                            # the range drawn: the smoothed maps'
        assert lo == pytest.approx(float(np.min(ema))) and hi == pytest.approx(float(np.max(ema)))
    with av.open(str(tmp_path / "v" / "a" / "grid.mp4")) as c:
        assert len(list(c.decode(video=0))) == 8


def test_without_pyav_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(AttnvizError, match=r"attnviz\[video\]"):
        require_av()


def test_interrupted_video_continues_from_its_last_complete_batch(tmp_path, monkeypatch):
    from attnviz.pipeline.analyser import Analyser
    (tmp_path / "in").mkdir()
    moving_object(tmp_path / "in" / "a.mp4", frames=14)
    settings = VideoSettings(fps=10, smooth=0.3)
    whole = run([tmp_path / "in"], tmp_path / "whole", backbone="demo", batch_size=4, video=settings)
    assert whole.forwards == 4                                  # 14 frames in batches of 4
    real, calls = Analyser.analyse_batch, []

    def interrupted(self, images, *a, **kw):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt                             # Ctrl-C during the third batch
        return real(self, images, *a, **kw)
    monkeypatch.setattr(Analyser, "analyse_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run([tmp_path / "in"], tmp_path / "out", backbone="demo", batch_size=4, video=settings)
    monkeypatch.setattr(Analyser, "analyse_batch", real)
    parts = sorted(p.name for p in (tmp_path / "out" / "a" / ".parts").iterdir())
    assert parts == ["part-00000.npz", "part-00001.npz"]        # the two complete batches
    assert not list((tmp_path / "out" / "a").glob("*.mp4"))     # no half video under its name
    again = run([tmp_path / "in"], tmp_path / "out", backbone="demo", batch_size=4, video=settings)
    assert again.forwards == 2 and not again.failed             # frames 8–13 only
    assert not (tmp_path / "out" / "a" / ".parts").exists()
    with np.load(tmp_path / "whole" / "a" / "maps.npz") as w, np.load(tmp_path / "out" / "a" / "maps.npz") as o:
        assert sorted(w.files) == sorted(o.files)
        for k in w.files:
            np.testing.assert_array_equal(w[k], o[k])
    mw = json.loads((tmp_path / "whole" / "manifest.json").read_text())["images"][0]
    mo = json.loads((tmp_path / "out" / "manifest.json").read_text())["images"][0]
    assert mw["frames"] == mo["frames"] and mw["maps"] == mo["maps"]
    for name in ("self.mp4", "grid.mp4"):                       # the same pictures, frame for frame
        with av.open(str(tmp_path / "whole" / "a" / name)) as cw, av.open(str(tmp_path / "out" / "a" / name)) as co:
            fw = [f.to_ndarray(format="rgb24") for f in cw.decode(video=0)]
            fo = [f.to_ndarray(format="rgb24") for f in co.decode(video=0)]
        assert len(fw) == len(fo) == 14
        assert all(np.array_equal(a, b) for a, b in zip(fw, fo))


def test_cli_exit_codes_and_the_missing_extra(tmp_path, monkeypatch):
    from clirun import cli
    (tmp_path / "in").mkdir()
    moving_object(tmp_path / "in" / "a.mp4", frames=4)
    (tmp_path / "in" / "bad.mkv").write_bytes(b"\x1a\x45\xdf\xa3" + b"\0" * 64)     # Matroska magic, nothing else
    r = cli("run", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-b", "demo", "--fps", "10", "-q")
    assert r.code == 1 and "bad.mkv" in r.stderr and "Traceback" not in r.stderr
    monkeypatch.setitem(sys.modules, "av", None)                     # PyAV not installed
    r = cli("run", str(tmp_path / "in"), "-o", str(tmp_path / "out2"), "-b", "demo")
    assert r.code == 2 and "attnviz[video]" in r.one_error()
    r = cli("run", str(tmp_path / "in"), "-o", str(tmp_path / "out3"), "--video-scale", "clip")
    assert r.code == 2 and "--video-scale 'clip'" in r.one_error()


def test_a_full_disk_under_the_manifest_stops_a_video_run_naming_it(tmp_path, monkeypatch):
    """A video's record goes to the manifest's spool on OUT's disk: a full disk there stops the run in
    one line naming manifest.json (as for images), not a bare OS error without a path."""
    import errno
    from attnviz.report.manifest import Manifest

    def keep(self, entry):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Manifest, "keep", keep)
    (tmp_path / "in").mkdir()
    moving_object(tmp_path / "in" / "a.mp4", frames=4)
    with pytest.raises(AttnvizError, match="cannot write .*manifest.json: No space left on device"):
        run([tmp_path / "in"], tmp_path / "out", backbone="demo", batch_size=4, kinds=["spatial"],
            video=VideoSettings(fps=10))


def test_channel_timeline_rows_are_the_top_channels_by_mean():
    from attnviz.render.timeline import channel_timeline, top_by_mean
    rng = np.random.default_rng(0)
    w = rng.random((30, 64))
    w[:, 17] += 2.0                                               # the strongest channel on average
    order = top_by_mean(w, 5)
    assert list(order) == list(np.argsort(-w.mean(0), kind="stable")[:5]) and order[0] == 17
    picture = channel_timeline(w, np.arange(30) / 2, 5, "t")
    assert picture.width >= 680 and picture.height > 5 * 12
    with pytest.raises(ValueError):
        channel_timeline(np.zeros((0, 3)), [], 5)
