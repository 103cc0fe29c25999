"""Gradient-weighted kinds (self-gae, self-legrad) against independent float64 implementations.

The references run a float64 copy of each model through its unfused path (timm: `fused_attn = False`
and A read at `attn_drop`; HF: eager attention with `output_attentions`), take ∂y/∂A with plain
autograd and apply the formulas of docs/attention.md §7 — no code of attnviz.probes.grad.
"""
from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import pytest
import torch

from attnviz.backbones import load_backbone
from attnviz.errors import AttnvizError
from attnviz.kinds import get_kinds
from attnviz.pipeline import Analyser
from tests.conftest import photo

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

KINDS = ["self-gae", "self-legrad"]


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Spread every parameter so that attention and gradients are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * (p.std() if p.numel() > 1 else 1.0).clamp(min=0.05))


def gae_ref(attn, grads, prefix):
    r = torch.eye(attn[0].shape[-1], dtype=torch.float64).expand(attn[0].shape[0], -1, -1)
    for a, g in zip(attn, grads):
        r = r + (g * a).clamp(min=0).mean(dim=1) @ r
    return r[:, 0, prefix:] if prefix else r[:, :, :].mean(dim=1)


def legrad_ref(attn, scores, idx, prefix):
    """Σ over every block (the paper's sum; docs/attention.md §6.2)."""
    total = 0
    for a, s in zip(attn, scores, strict=True):
        g, = torch.autograd.grad(s[torch.arange(len(idx)), idx].sum(), a, retain_graph=True)
        total = total + g.clamp(min=0).mean(dim=(1, 2))[:, prefix:]
    return total


def timm_reference(model, x, idx, prefix):
    m = copy.deepcopy(model).double().eval()
    attn, z = [], []
    for blk in m.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_pre_hook(lambda mod, args: attn.append(args[0]))
        blk.register_forward_hook(lambda mod, args, out: z.append(out))
    logits = m(x.double())
    grads = torch.autograd.grad(logits[torch.arange(len(idx)), idx].sum(), attn, retain_graph=True)
    scores = [m.forward_head(m.norm(t)) for t in z]
    return gae_ref(attn, grads, prefix), legrad_ref(attn, scores, idx, prefix)


def hf_reference(model, x, idx, prefix):
    m = copy.deepcopy(model).double().eval()
    m.set_attn_implementation("eager")
    out = m(pixel_values=x.double(), output_attentions=True, output_hidden_states=True)
    attn, logits = list(out.attentions), out.logits
    grads = torch.autograd.grad(logits[torch.arange(len(idx)), idx].sum(), attn, retain_graph=True)
    base = m.base_model
    scores = [m.classifier(base.layernorm(h)[:, 0]) for h in out.hidden_states[1:]]
    return gae_ref(attn, grads, prefix), legrad_ref(attn, scores, idx, prefix)


def compare(bb, reference, targets=()):
    images = [photo(40, 30, seed=s) for s in range(3)]
    an = Analyser(bb, KINDS, targets=tuple(targets))
    x = an.preprocess(images)
    results = an.analyse_batch(images)
    prefix, grid = bb.tokens
    with torch.no_grad():
        top = bb.model(x) if not hasattr(bb.model, "config") else bb.model(pixel_values=x).logits
    lower = [c.lower() for c in bb.categories]
    index = [int(t) if str(t).isdigit() else lower.index(str(t).lower()) for t in targets]
    slots = [[t] * len(images) for t in index] if targets else [top.argmax(1).tolist()]
    errors = []
    for slot, idx in enumerate(slots):
        g_ref, l_ref = reference(bb.model, x.requires_grad_(False), torch.tensor(idx), prefix)
        for i, (_, maps) in enumerate(results):
            by_kind = [m for m in maps if m.kind == "self-gae"], [m for m in maps if m.kind == "self-legrad"]
            for ms, ref in zip(by_kind, (g_ref, l_ref)):
                got, want = ms[slot].data, ref[i].detach().reshape(grid).numpy()
                assert ms[slot].meta["target"]["index"] == idx[i]
                err = float(np.abs(got - want).max() / np.abs(want).max())
                errors.append(err)
                assert err <= 1e-4, (ms[slot].name, err)
    return max(errors)


@pytest.fixture
def tiny_timm(monkeypatch):
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", functools.partial(real, img_size=48, embed_dim=32, depth=3,
                                                                num_heads=2))
    return real


@pytest.mark.parametrize("name", ["timm:vit_small_patch16_224", "timm:vit_small_patch14_reg4_dinov2"])
@pytest.mark.parametrize("fused", [True, False])
def test_timm_vits_equal_the_float64_formulas(tiny_timm, name, fused):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone(name, "none", seed=0)
    perturb(bb.model)
    for blk in bb.model.blocks:
        blk.attn.fused_attn = fused
    assert bb.tokens[0] == (5 if "reg4" in name else 1)
    err = compare(bb, timm_reference)
    err2 = compare(bb, timm_reference, targets=("3", "7"))
    print(f"{name} fused={fused}: max error / peak {max(err, err2):.2e}")


def _hf_folder(tmp_path, impl):
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8,
                                    id2label={0: "cat", 1: "dog", 2: "red car"},
                                    label2id={"cat": 0, "dog": 1, "red car": 2})
    torch.manual_seed(0)
    model = transformers.AutoModelForImageClassification.from_config(config)
    perturb(model)
    model.save_pretrained(tmp_path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_hf_vit_equals_the_float64_formulas(tmp_path, impl):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone(f"hf:{_hf_folder(tmp_path, impl)}", "DEFAULT")
    bb.model.set_attn_implementation(impl)
    assert bb.token_head is not None
    err = compare(bb, hf_reference, targets=("dog", "red car"))
    print(f"hf vit {impl}: max error / peak {err:.2e}")


def test_gradient_kinds_are_opt_in_and_targets_are_checked(tiny_timm):
    assert not {"self-gae", "self-legrad", "gradcam"} & {k.name for k in get_kinds(None)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = load_backbone("timm:vit_small_patch16_224", "none", seed=0)
    with pytest.raises(AttnvizError, match="neither a class name"):
        Analyser(bb, ["self-gae"], targets=("not a class",))
    with pytest.raises(AttnvizError, match="classes"):
        Analyser(bb, ["self-gae"], targets=("5000",))


def test_gradient_kinds_are_unavailable_on_a_cnn(resnet18_small):
    with pytest.raises(AttnvizError, match="self-gae"):
        Analyser(resnet18_small, ["self-gae"])


def test_gradcam_equals_the_textbook_formula_and_pytorch_grad_cam(resnet18_small):
    pytest.importorskip("pytorch_grad_cam")      # the bench extra (CI installs it)
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    bb = resnet18_small
    images = [photo(64, 64, seed=s) for s in range(2)]
    an = Analyser(bb, ["gradcam"], layer="layer4", targets=("3", "11"))
    x = an.preprocess(images)
    results = an.analyse_batch(images)
    m = copy.deepcopy(bb.model).double()
    feats = {}
    m.layer4.register_forward_hook(lambda mod, a, out: feats.__setitem__("f", out))
    logits = m(x.double())
    for slot, t in enumerate((3, 11)):
        g, = torch.autograd.grad(logits[:, t].sum(), feats["f"], retain_graph=True)
        want = ((g.mean(dim=(2, 3), keepdim=True) * feats["f"]).sum(1)).clamp(min=0).detach().numpy()
        with GradCAM(model=bb.model, target_layers=[bb.model.layer4]) as cam:
            theirs = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(t)] * len(images))
        for i, (_, maps) in enumerate(results):
            got = maps[slot].data
            assert maps[slot].meta["target"]["index"] == t and maps[slot].provenance == "derived"
            assert np.abs(got - want[i]).max() <= 1e-4 * np.abs(want[i]).max()
            ours = scale_cam_image(got[None], target_size=(64, 64))[0]     # their min-max and resize
            assert np.abs(ours - theirs[i]).max() < 1e-3


def test_gradcam_refuses_a_layer_changed_in_place(resnet18_small):
    an = Analyser(resnet18_small, ["gradcam"], layer="layer4.1.bn2")
    with pytest.raises(AttnvizError, match="in place"):
        an.analyse_batch([photo(64, 64)])


def test_per_image_targets_reach_the_gradient_kinds(resnet18_small):
    """`targets=` per image (the Python API's list) gives each image its own class; images asking
    for different numbers of classes are one error, not a crash."""
    an = Analyser(resnet18_small, ["gradcam"], layer="layer4")
    images = [photo(64, 64, seed=s) for s in range(2)]
    results = an.analyse_batch(images, targets=[("3",), ("11",)])
    assert [maps[0].meta["target"]["index"] for _, maps in results] == [3, 11]
    with pytest.raises(AttnvizError, match="as many classes"):
        an.analyse_batch(images, targets=[("3",), ("3", "11")])
