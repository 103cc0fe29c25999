"""The pipeline: one forward per batch, unchanged predictions, hooks removed, maps of every kind."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attnviz.errors import AttnvizError
from attnviz.pipeline import Analyser, analyse
from attnviz.maps import cell_centre
from tests.conftest import photo


def _hooks_left(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_one_forward_per_batch_and_predictions_unchanged(resnet18_small):
    an = Analyser(resnet18_small)
    images = [photo(80, 50, 1), photo(40, 90, 2), photo(64, 64, 3)]
    calls = []
    handle = resnet18_small.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        out = an.analyse_batch(images)
    finally:
        handle.remove()
    assert len(calls) == 1 and an.forwards == 1
    with torch.no_grad():
        bare = torch.softmax(resnet18_small.model(an.preprocess(images)), dim=1)
    for (preds, maps), probs in zip(out, bare):
        top = probs.topk(5)
        assert [p.index for p in preds] == top.indices.tolist()
        np.testing.assert_allclose([p.probability for p in preds], top.values.numpy(), atol=1e-6)
        names = [m.name for m in maps]
        assert names[:6] == ["channel", "spatial", "mixed-serial", "mixed-parallel", "self", "self-received"]
        assert names[6].startswith("cross-") and all(m.provenance == "derived" for m in maps)
    assert _hooks_left(resnet18_small.model) == 0


def test_maps_come_from_the_captured_layer(resnet18_small):
    from attnviz.kinds.spatial import spatial_logits
    an = Analyser(resnet18_small, ["spatial"], layer="layer3")
    image = photo(64, 64, 4)
    captured = {}
    h = resnet18_small.model.layer3.register_forward_hook(lambda m, a, o: captured.setdefault("f", o.clone()))
    try:
        (_, maps), = an.analyse_batch([image])
    finally:
        h.remove()
    expected = torch.sigmoid(spatial_logits(captured["f"]))[0].numpy()
    np.testing.assert_allclose(maps[0].data, expected, atol=1e-6)
    assert maps[0].layer == "layer3" and maps[0].shape == (4, 4)


def test_hooks_removed_when_the_forward_fails(resnet18_small):
    an = Analyser(resnet18_small, ["spatial"])
    with pytest.raises(RuntimeError):
        an.backbone.forward = lambda x, p=None: (_ for _ in ()).throw(RuntimeError("boom"))  # type: ignore
        try:
            an.analyse_batch([photo(32, 32)])
        finally:
            del an.backbone.forward
    assert _hooks_left(resnet18_small.model) == 0


def test_query_selects_the_self_attention_row(resnet18_small):
    an = Analyser(resnet18_small, ["self"], layer="layer3", query=(79.0, 0.0), align=False)   # top-right
    (_, maps), = an.analyse_batch([photo(80, 40)])
    m = maps[0]
    assert m.name == "self" and m.meta["query_cell"] == [0, 3]
    assert m.meta["query"] == [70.0, 5.0]     # centre of block (row 0, col 3) of 4×4 on 80×40
    (_, aligned), = Analyser(resnet18_small, ["self"], layer="layer3", query=(79.0, 0.0)).analyse_batch([photo(80, 40)])
    g = aligned[0].geometry                   # measured centres: the same cell, drawn where it looks
    assert aligned[0].meta["query_cell"] == [0, 3] and g is not None
    assert aligned[0].meta["query"] == cell_centre((0, 3), (80, 40), (4, 4), g) != [70.0, 5.0]
    assert m.data.argmax() == 3               # a position attends most to itself
    np.testing.assert_allclose(m.data.sum(), 1.0, atol=1e-5)


def test_cross_prompts_select_classifier_rows(resnet18_small):
    an = Analyser(resnet18_small, ["cross"], texts=["a photo of a tabby cat", "a goldfish"])
    (preds, maps), = an.analyse_batch([photo(50, 50)])
    assert [m.name for m in maps] == ["cross-a-photo-of-a-tabby-cat", "cross-a-goldfish"]
    assert maps[0].meta["classes"] == [{"index": 281, "label": "tabby"}]
    f = None
    w = resnet18_small.model.fc.weight[281].detach()
    with torch.no_grad():
        tap = {}
        h = resnet18_small.model.layer4.register_forward_hook(lambda m, a, o: tap.setdefault("f", o.clone()))
        resnet18_small.model(an.preprocess([photo(50, 50)]))
        h.remove()
        f = tap["f"][0]
    s = torch.einsum("chw,c->hw", f, w) / 512 ** 0.5
    np.testing.assert_allclose(maps[0].data, torch.softmax(s.flatten(), 0).reshape(s.shape).numpy(), atol=1e-6)


def test_prompt_naming_no_class_is_an_error_with_close_names(resnet18_small):
    with pytest.raises(AttnvizError) as e:
        Analyser(resnet18_small, ["cross"], texts=["a tabbby"])
    msg = str(e.value)
    assert "names none of" in msg and "tabby" in msg and "\n" not in msg


def test_unknown_layer_lists_close_names(resnet18_small):
    with pytest.raises(AttnvizError, match="layer4"):
        Analyser(resnet18_small, layer="layer5")


def test_unknown_kind_is_an_error(resnet18_small):
    with pytest.raises(AttnvizError, match="spatial"):
        Analyser(resnet18_small, ["spatail"])


def test_analyse_folder_reports_errors_and_keeps_going(tmp_path, resnet18_small):
    photo(30, 20).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"not really a jpeg")
    results = analyse([tmp_path], resnet18_small, ["spatial"], batch_size=1)
    assert [(r.source, r.status) for r in results] == [("a.png", "ok"), ("b.jpg", "error")]
    assert results[0].size == (30, 20) and results[0].map("spatial").shape == (2, 2)
    assert results[1].maps == [] and "not an image" in results[1].error


def test_vit_tokens_are_reshaped_to_the_model_grid():
    import warnings
    from attnviz.backbones import load_backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone("vit_b_16", "none", seed=0)
    info = bb.layer(bb.default_layer)
    assert bb.default_layer == "encoder.layers.encoder_layer_11"
    assert (info.layout.kind, info.layout.prefix, info.grid) == ("NLC", 1, (14, 14))
    an = Analyser(bb, ["channel"])
    (_, maps), = an.analyse_batch([photo(224, 224)])
    assert maps[0].shape == (14, 14)
    # the head reads the class token and pools no feature map: no derived cross for it
    assert bb.classifier_layer is None and "cross skipped" in Analyser(bb).notes[0]


def test_analyse_keeps_input_order_and_converts_modes(tmp_path, resnet18_small):
    photo(30, 20, 1).save(tmp_path / "a.png")
    rgba = photo(40, 40, 2).convert("RGBA")
    results = analyse([tmp_path / "a.png", rgba, photo(20, 20, 3).convert("L")], resnet18_small,
                      ["spatial"], batch_size=2)
    assert [r.source for r in results] == ["a.png", "<image 1>", "<image 2>"]
    assert [r.size for r in results] == [(30, 20), (40, 40), (20, 20)]
    assert all(r.status == "ok" and r.maps for r in results)
    assert Analyser(resnet18_small, ["spatial"]).analyse_batch([]) == []
