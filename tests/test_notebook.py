"""The model-first API: a model instance and a tensor batch give the maps `attnviz run` writes for the
same weights and images, and the Results draw the CLI's own files pixel for pixel."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import attnviz
from attnviz.errors import AttnvizError
from tests.clirun import cli
from tests.conftest import calibrate_bn, photo

CATEGORIES = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A calibrated resnet18 instance, its weights in a file, two photos, and `attnviz run` on them."""
    root = tmp_path_factory.mktemp("nb")
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    calibrate_bn(model, torch.randn(8, 3, 64, 64))
    torch.save(model.state_dict(), root / "w.pt")
    (root / "imgs").mkdir()
    images = [photo(90, 60, 1), photo(70, 70, 2)]
    for i, im in enumerate(images):
        im.save(root / "imgs" / f"p{i}.png")
    out = cli("run", str(root / "imgs"), "-o", str(root / "out"), "-b", "resnet18", "-w", str(root / "w.pt"),
              "--input-size", "64", "--quiet")
    assert out.code == 0, out.stderr
    analyser = attnviz.Analyser(model, input_size=64)       # a torchvision instance describes itself
    assert analyser.backbone.name == "resnet18" and analyser.backbone.categories == CATEGORIES
    return root, model, images, analyser


def _cli_png(root, i: int, name: str) -> np.ndarray:
    with Image.open(root / "out" / f"p{i}" / name) as im:
        return np.asarray(im.convert("RGB"))


def test_tensor_batch_gives_the_cli_maps_and_overlays(setup):
    root, _, images, analyser = setup
    x = analyser.to_tensor(images)                         # (B, 3, 64, 64) in [0, 1], as the CLI resizes
    assert x.shape == (2, 3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    results = analyser(x, images=images)
    for i, r in enumerate(results):
        npz = np.load(root / "out" / f"p{i}" / "maps.npz")
        assert {m.name for m in r.maps} == {k for k in npz.files if "_" not in k}
        for m in r.maps:
            assert np.array_equal(npz[m.name], m.numpy()), m.name           # exact: same preprocessing
            assert np.array_equal(np.asarray(r.overlay(m.name)), _cli_png(root, i, f"{m.name}.png")), m.name


def test_normalised_tensor_gives_the_same_maps(setup):
    _, _, images, analyser = setup
    plain = analyser(analyser.to_tensor(images), images=images)
    normed = analyser(analyser.preprocess(images), normalized=True, images=images)
    for a, b in zip(plain, normed):
        assert [m.name for m in a.maps] == [m.name for m in b.maps]
        for m, n in zip(a.maps, b.maps):
            assert np.array_equal(m.data, n.data)


def test_paths_draw_the_cli_grid_and_notebooks_show_it(setup):
    root, _, _, analyser = setup
    results = analyser(root / "imgs")
    assert [r.source for r in results] == ["p0.png", "p1.png"]
    for i, r in enumerate(results):
        assert np.array_equal(np.asarray(r.grid()), _cli_png(root, i, "grid.png"))
        assert np.array_equal(np.asarray(r.overlay("spatial")), _cli_png(root, i, "spatial.png"))
        with Image.open(io.BytesIO(r._repr_png_())) as shown:
            assert np.array_equal(np.asarray(shown.convert("RGB")), _cli_png(root, i, "grid.png"))
    assert "<img src=\"data:image/png;base64," in results._repr_html_()
    names = dir(results[0])
    assert {"overlay", "grid", "explain", "numpy", "tensor", "maps", "spatial"} <= set(names)
    assert results[0].spatial is results[0].map("spatial")


def test_explain_draws_the_cli_s_explain_picture(setup, tmp_path):
    root, _, _, analyser = setup
    [r] = analyser(root / "imgs" / "p0.png")
    out = cli("explain", str(root / "imgs" / "p0.png"), "-o", str(tmp_path / "ex"), "-k", "spatial",
              "-b", "resnet18", "-w", str(root / "w.pt"), "--input-size", "64")
    assert out.code == 0, out.stderr
    with Image.open(tmp_path / "ex" / "spatial.png") as want:
        got = r.explain("spatial")
        assert got.size == want.size
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want.convert("RGB")))


def test_tensor_alone_draws_over_itself_and_keeps_the_model_device(setup):
    _, model, images, analyser = setup
    x = analyser.to_tensor(images)
    [r, _] = analyser(x)
    assert r.source == "<tensor 0>" and r.size == (64, 64) and r.image.size == (64, 64)
    assert r.overlay("spatial").size == (512, 512)
    assert r.tensor("spatial").device == next(model.parameters()).device
    assert r.numpy("spatial").dtype == np.float32


def test_targets_choose_the_derived_cross_class(setup):
    _, _, images, analyser = setup
    x = analyser.to_tensor(images)
    a, b = analyser(x, targets=[281, "golden retriever"])
    assert [m.name for m in a.maps if m.kind == "cross"] == ["cross-tabby"]
    assert [m.name for m in b.maps if m.kind == "cross"] == ["cross-golden-retriever"]
    assert a.map("cross").meta["prompt_source"] == "--target"
    with pytest.raises(AttnvizError, match="not a class"):
        analyser(x, targets="no such class")
    with pytest.raises(AttnvizError, match="one per image"):
        analyser(x, targets=[1, 2, 3])


def test_tensor_mistakes_are_one_line(setup):
    _, _, images, analyser = setup
    x = analyser.preprocess(images)
    with pytest.raises(AttnvizError, match="normalized=True"):
        analyser(x)                                # normalised values, not said so
    with pytest.raises(AttnvizError, match="input_size=32"):
        analyser(torch.rand(1, 3, 32, 32))
    with pytest.raises(AttnvizError, match="float tensor"):
        analyser(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_instance_keywords_describe_a_model_that_does_not(setup):
    _, model, _, _ = setup
    a = attnviz.Analyser(model, ["spatial"], input_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                         categories=[f"c{i}" for i in range(1000)], name="mine")
    assert (a.backbone.name, a.backbone.mean, a.backbone.std, a.backbone.categories[3]) == \
        ("mine", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "c3")
    with pytest.raises(AttnvizError, match="categories: 2 names for a head of 1000"):
        attnviz.Analyser(model, ["spatial"], input_size=64, categories=["a", "b"])
    with pytest.raises(AttnvizError, match="three numbers"):
        attnviz.Analyser(model, ["spatial"], input_size=64, mean=(0.5, 0.5))


def test_a_timm_instance_reads_its_pretrained_cfg_and_matches_the_cli(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    model = timm.create_model("resnet10t", pretrained=False)
    calibrate_bn(model, torch.randn(8, 3, 64, 64))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    photo(80, 64, 3).save(tmp_path / "a.png")
    out = cli("run", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "-b", "timm:resnet10t",
              "-w", str(tmp_path / "w.pt"), "--input-size", "64", "-k", "spatial,channel", "--quiet")
    assert out.code == 0, out.stderr
    analyser = attnviz.Analyser(model, ["spatial", "channel"], input_size=64)
    assert analyser.backbone.mean == tuple(model.pretrained_cfg["mean"])
    [r] = analyser(tmp_path / "a.png")
    npz = np.load(tmp_path / "out" / "a" / "maps.npz")
    for m in r.maps:
        assert np.array_equal(npz[m.name], m.data)
        with Image.open(tmp_path / "out" / "a" / f"{m.name}.png") as want:
            assert np.array_equal(np.asarray(r.overlay(m.name)), np.asarray(want.convert("RGB")))
