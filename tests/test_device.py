"""render.device: the torch drawing (the --device cuda path) run on CPU tensors gives the numpy
drawing's pixels; the encoder dispatch (nvJPEG on CUDA tensors) with the device mocked."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import attnviz.render  # noqa: F401
from attnviz.geometry import Axis, Geometry, gaussian_field
from attnviz.render.band import banded
from attnviz.render.device import DevicePainter, band_strip, device_heat, to_image
from attnviz.render.overlay import blender, fit, heat
from attnviz.report import atomic
from attnviz.report.outputs import Style, write_outputs
from attnviz.results import AttentionMap, Result

overlay = sys.modules["attnviz.render.overlay"]


def _geometries() -> dict[str, Geometry | None]:
    """Receptive fields (as probes.receptive measures them), centres only (an older record), none."""
    def axis(n: int, stride: float, offset: float) -> Axis:
        centres = (np.arange(n) * stride + offset).tolist()
        mu, sigma = gaussian_field(centres, [stride * 1.3] * n, 224)
        return Axis.fit(centres, mu.tolist(), sigma.tolist())
    fields = Geometry(axis(7, 32, 20.0), axis(9, 24.5, 14.0), 224)
    centres = Geometry(Axis.fit((np.arange(7) * 30 + 25.0).tolist()), Axis.fit((np.arange(9) * 24 + 12.0).tolist()), 224)
    return {"fields": fields, "centres": centres, "none": None}


def _photo(w: int = 300, h: int = 211) -> Image.Image:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1) + rng.integers(0, 30, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _maps() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    smooth = np.outer(np.hanning(7), np.hanning(9)).astype(np.float32) + 0.01 * rng.random((7, 9), np.float32)
    nan = rng.random((7, 9)).astype(np.float32)
    nan[2, 3] = np.nan
    return {"random": rng.random((7, 9)).astype(np.float32), "smooth": smooth, "nan": nan,
            "flat": np.full((7, 9), 0.3, np.float32), "other grid": rng.random((5, 5)).astype(np.float32)}


@pytest.mark.parametrize("geometry", ["fields", "centres", "none"])
@pytest.mark.parametrize("size", [512, 97])
def test_device_painter_on_cpu_gives_the_numpy_pixels(geometry: str, size: int) -> None:
    """Every map × geometry × span: at most 1 grey level from `blender` (the numpy path)."""
    g = _geometries()[geometry]
    base = fit(_photo(), size)
    numpy_paint, torch_paint = blender(base, "jet", 0.5), DevicePainter(base, "jet", 0.5, "cpu")
    for name, m in _maps().items():
        for span in (None, (float(np.nanmin(m)), float(np.nanmax(m)) * 1.5 + 0.1)):
            want = np.asarray(numpy_paint(m, g, span=span), dtype=np.int16)
            got = torch_paint(m, g, span=span)
            assert got.dtype == torch.uint8 and tuple(got.shape) == want.shape
            diff = np.abs(got.numpy().astype(np.int16) - want)
            assert diff.max() <= 1, (name, span, int(diff.max()))


@pytest.mark.parametrize("geometry", ["fields", "centres", "none"])
def test_device_heat_matches_numpy_heat(geometry: str) -> None:
    """The spread over the pixels itself (before colours): float32 agreement to 1e-5 of the range."""
    g = _geometries()[geometry]
    m = _maps()["random"]
    want = heat(m, 301, 157, g)
    got = device_heat(torch.from_numpy(m), 301, 157, g).numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_device_painter_takes_attention_maps_and_other_colormaps() -> None:
    g = _geometries()["fields"]
    base = fit(_photo(), 256)
    m = AttentionMap(name="spatial", kind="spatial", data=_maps()["smooth"], layer="layer4",
                     provenance="derived", meta={"geometry": g.record()})
    assert m.geometry is not None
    want = np.asarray(blender(base, "viridis", 0.3)(m), dtype=np.int16)
    got = DevicePainter(base, "viridis", 0.3, "cpu")(m).numpy().astype(np.int16)
    assert np.abs(got - want).max() <= 1
    with pytest.raises(ValueError):
        DevicePainter(base, "jet", 1.5)


@pytest.mark.parametrize("width", [64, 300, 512, 2000])
def test_band_strip_is_the_band(width: int) -> None:
    picture = np.asarray(_photo(width, 40))
    got = band_strip(torch.from_numpy(picture.copy()), "random weights — maps mean nothing")
    want = np.asarray(banded(Image.fromarray(picture), "random weights — maps mean nothing"))
    assert np.array_equal(got.numpy(), want)
    assert np.array_equal(np.asarray(to_image(got)), want)


class _FakeCuda:
    """A CPU tensor that says it lives on a GPU (no GPU here): what save_pixels dispatches on."""

    is_cuda = True

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t

    def permute(self, *dims: int) -> torch.Tensor:
        return self.t.permute(*dims)


def test_save_pixels_uses_the_gpu_encoder_for_jpeg_on_cuda(tmp_path, monkeypatch) -> None:
    import torchvision.io
    calls = []

    def encode_jpeg(t: torch.Tensor, quality: int = 75) -> torch.Tensor:
        calls.append((tuple(t.shape), quality, t.is_contiguous()))
        buf = io.BytesIO()
        Image.fromarray(t.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
        return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    monkeypatch.setattr(torchvision.io, "encode_jpeg", encode_jpeg)
    picture = torch.from_numpy(np.asarray(_photo(64, 48)).copy())
    assert atomic.save_pixels(tmp_path / "a.jpg", _FakeCuda(picture), "jpg") == "nvjpeg"
    assert calls == [((3, 48, 64), 90, True)]
    assert Image.open(tmp_path / "a.jpg").size == (64, 48)
    # a CPU tensor, or a PNG, goes through the host encoders: the same file as save_image writes
    assert atomic.save_pixels(tmp_path / "b.jpg", picture, "jpg") == "host"
    assert atomic.save_pixels(tmp_path / "c.png", picture, "png") == "host"
    atomic.save_image(tmp_path / "d.png", Image.fromarray(picture.numpy()), "png")
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "d.png").read_bytes()
    assert len(calls) == 1


@pytest.mark.parametrize("banner", ["", "random weights — maps mean nothing"])
def test_write_outputs_device_branch_writes_the_same_pictures(tmp_path, monkeypatch, banner: str) -> None:
    """The --device cuda branch of write_outputs, run on the CPU (the device check mocked): the same
    file names, and every overlay within 1 grey level of the numpy path's."""
    import attnviz.render.device as device
    g = _geometries()["fields"]
    maps = [AttentionMap(name=n.replace(" ", "-"), kind="spatial", data=m, layer="layer4", provenance="derived",
                         meta={"geometry": g.record()} if m.shape == (7, 9) else {})
            for n, m in _maps().items() if n != "nan"]
    image = _photo()

    def result() -> Result:
        r = Result(source="a.jpg", path=tmp_path / "a.jpg", output="a")
        r.maps, r.size = list(maps), image.size
        return r
    style = Style(size=200, banner=banner)
    host = write_outputs(tmp_path / "host", result(), image, style)
    monkeypatch.setattr(device, "on_device", lambda d: True)
    used = []
    real = device.DevicePainter
    monkeypatch.setattr(device, "DevicePainter", lambda *a, **k: used.append(a) or real(*a, **k))
    on = write_outputs(tmp_path / "dev", result(), image, style, device="cpu")
    assert on == host and used
    for name in host:
        if name.endswith(".png"):
            a = np.asarray(Image.open(tmp_path / "host" / "a" / name), dtype=np.int16)
            b = np.asarray(Image.open(tmp_path / "dev" / "a" / name), dtype=np.int16)
            assert a.shape == b.shape and np.abs(a - b).max() <= 1, name
