"""--model: any output form gives logits; token grids are checked against the attention, not trusted."""
from __future__ import annotations

import pytest
import torch

from attnviz.backbones import load_backbone
from attnviz.backbones.base import logits_of
from attnviz.errors import AttnvizError
from attnviz.pipeline import Analyser
from tests.conftest import photo
from tests.models_behaviour import cbam_functional


@pytest.mark.parametrize("factory", ["returns_dict", "returns_tuple", "returns_hf"])
def test_output_forms_give_the_same_logits(factory: str) -> None:
    bb = load_backbone(f"model:tests.models_behaviour:{factory}", "none")
    an = Analyser(bb, ["channel"])
    images = [photo(64, 64, seed=1)]
    (preds, maps), = an.analyse_batch(images)
    with torch.no_grad():
        ref = torch.softmax(cbam_functional()(an.preprocess(images)), 1)[0]
    assert preds[0].index == int(ref.argmax()) and abs(preds[0].probability - float(ref.max())) < 1e-5
    assert maps[0].provenance == "native"


def test_logits_of_forms() -> None:
    t = torch.ones(1, 3)
    assert logits_of(t) is t and logits_of({"a": 1, "logits": t}) is t and logits_of((None, t)) is t
    with pytest.raises(TypeError, match="no logits tensor"):
        logits_of("junk")


@pytest.mark.parametrize("factory,match", [
    ("returns_junk", r"cannot run .*TypeError: the model returned str"),
    ("vit_wrong_tokens", r"declares tokens = \(2, \(4, 4\)\) \(18 tokens\), but its attention blocks.1 runs over 17"),
])
def test_bad_user_model_is_one_line_at_load(factory: str, match: str) -> None:
    with pytest.raises(AttnvizError, match=match) as e:
        load_backbone(f"model:tests.models_behaviour:{factory}", "none")
    assert "\n" not in str(e.value)


def test_tokens_inferred_from_attention_and_self_native() -> None:
    bb = load_backbone("model:tests.models_behaviour:vit_untokened", "none")
    assert bb.tokens == (1, (4, 4))
    assert bb.layers[bb.default_layer].layout.kind == "NLC"    # a block, not the patch conv
    an = Analyser(bb, ["self"])
    assert an.inventory.native_kinds(True) == {"self": "blocks.1"}
    (_, maps), = an.analyse_batch([photo(64, 64, seed=2)])
    assert {m.provenance for m in maps} == {"native"}


def test_unknown_grid_is_a_note_and_inspect_agrees_with_run() -> None:
    """Attention found but its grid unknown: derived, with the reason, in inspect and in run."""
    from tests.models import TinyViT
    bb = load_backbone("model:tests.models:tiny_vit", "none")
    bb.tokens = None                              # as if nothing could be inferred
    an = Analyser(bb, ["self"])
    assert "self" not in an.inventory.native_kinds(False)
    assert any("token grid is unknown" in n for n in an.notes)
    (_, maps), = an.analyse_batch([photo(64, 64, seed=2)])
    assert {m.provenance for m in maps} == {"derived"}
    assert isinstance(bb.model, TinyViT)
