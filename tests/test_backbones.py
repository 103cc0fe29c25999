"""Backbone loading: weights specs, offline errors, safe state_dict files, layer description."""
from __future__ import annotations

import urllib.error
import warnings

import pytest
import torch
import torchvision

from attnviz.backbones import load_backbone
from attnviz.errors import AttnvizError


def _load(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(*args, **kw)


def test_unknown_backbone_names_close_ones():
    with pytest.raises(AttnvizError, match="resnet50"):
        _load("resnet5O")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty hub cache and a network that refuses every download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def refuse(url, *a, **kw):
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    return tmp_path


def test_missing_download_is_one_line_with_remedies(offline):
    with pytest.raises(AttnvizError) as e:
        _load("resnet18", "DEFAULT")
    msg = str(e.value)
    assert "\n" not in msg
    assert "ResNet18_Weights.IMAGENET1K_V1" in msg
    assert str(offline / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "--weights FILE" in msg and "TORCH_HOME" in msg


def test_weights_enum_name_and_bad_name(offline):
    with pytest.raises(AttnvizError, match="ResNet50_Weights.IMAGENET1K_V1"):
        _load("resnet50", "IMAGENET1K_V1")
    with pytest.raises(AttnvizError, match="IMAGENET1K_V2"):
        _load("resnet50", "IMAGENET9K")


def test_state_dict_file_loads_exactly(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    bb = _load("resnet18", str(path), input_size=64)
    for (k, a), b in zip(ref.state_dict().items(), bb.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert bb.pretrained and bb.weights == str(path) and bb.categories[281] == "tabby"


def test_fine_tuned_head_gets_its_class_count(tmp_path):
    model = torchvision.models.resnet18(num_classes=3)
    path = tmp_path / "r18_3.pt"
    torch.save(model.state_dict(), path)
    bb = _load("resnet18", str(path), input_size=64)
    assert bb.categories == ["class 0", "class 1", "class 2"] and bb.classifier.out_features == 3


@pytest.mark.parametrize("change", ["none", "half", "channels_last", "extra_buffer"])
def test_a_file_gives_the_same_model_built_without_random_init_or_the_ordinary_way(tmp_path, change):
    """The file's tensors become the model's own (no random init first) only where a copy would give
    the same values, dtypes and layout; otherwise the ordinary build and copy: the same model."""
    from attnviz.backbones.torchvision import takes_as_is
    torch.manual_seed(1)
    ref = torchvision.models.resnet18().eval()
    for m in ref.modules():        # non-default statistics: a buffer left uninitialised would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    sd = ref.state_dict()
    if change == "half":
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
        ref = ref.half().float()
    elif change == "channels_last":
        sd = {k: v.to(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in sd.items()}
    path = tmp_path / "r18.pt"
    torch.save(sd, path)
    model = _load("resnet18", str(path), input_size=64).model
    if change == "extra_buffer":   # a buffer the file does not hold (non-persistent): never assigned
        with torch.device("meta"):
            probe = torchvision.models.resnet18()
        probe.register_buffer("scale", torch.ones(1), persistent=False)
        assert not takes_as_is(probe, dict(sd))
    else:
        with torch.device("meta"):
            assert takes_as_is(torchvision.models.resnet18(), torch.load(path, weights_only=True)) == \
                (change == "none")
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert all(p.requires_grad and p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a.float() if a.is_floating_point() else a, b), k
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ref(x), model.to("cpu").eval()(x))


def test_tied_weights_are_never_taken_as_is():
    """Two names of one tensor stay one tensor only when copied into: never assigned."""
    from attnviz.backbones.torchvision import takes_as_is
    sd = torchvision.models.resnet18().state_dict()
    with torch.device("meta"):
        model = torchvision.models.resnet18()
    assert takes_as_is(model, sd)
    model.fc2 = model.fc
    assert not takes_as_is(model, {**sd, "fc2.weight": sd["fc.weight"], "fc2.bias": sd["fc.bias"]})


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": torchvision.models.resnet18()}, path)   # a whole pickled module
    with pytest.raises(AttnvizError, match="not a loadable state_dict"):
        _load("resnet18", str(path))


def test_wrong_architecture_file_is_one_line(tmp_path):
    path = tmp_path / "r34.pt"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(AttnvizError) as e:
        _load("resnet18", str(path), input_size=64)
    assert "does not fit resnet18" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name, layer, shape, classifier_layer", [
    ("resnet18", "layer4", (512, 7, 7), "layer4"),
    ("efficientnet_b0", "features", (1280, 7, 7), "features"),
    ("vgg11", "features", (512, 7, 7), None),                  # MLP head: no derived cross
    ("mobilenet_v3_small", "features", (576, 7, 7), None),
])
def test_default_layer_and_classifier(name, layer, shape, classifier_layer):
    bb = _load(name, "none")
    info = bb.layer(bb.default_layer)
    assert (bb.default_layer, (info.channels, *info.grid), bb.classifier_layer) == (layer, shape, classifier_layer)
    assert len(bb.categories) == 1000 and bb.input_size == 224


def test_swin_channels_last_layers_are_read_as_nhwc():
    bb = _load("swin_t", "none")
    info = bb.layer("features")
    assert info.layout.kind == "NHWC" and info.channels == 768 and info.grid == (7, 7)


def test_random_init_warns():
    with pytest.warns(UserWarning, match="random weights"):
        load_backbone("resnet18", "none", input_size=64)


def test_declared_offline_never_tries_the_download(offline, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_OFFLINE", "1")
    tried = []
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: tried.append(a))
    with pytest.raises(AttnvizError, match="offline mode is on") as e:
        _load("resnet18", "DEFAULT")
    assert not tried and "\n" not in str(e.value)
    assert str(offline / "torch" / "hub" / "checkpoints") in str(e.value) and "--weights none" in str(e.value)
