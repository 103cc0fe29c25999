"""A zoo of timm / Hugging Face architectures (random init) run through `inspect`'s and `run`'s code,
with references computed from the modules themselves. Used by tests/test_native_zoo.py and
docs/native_table.py (the README's table comes from the same run)."""
from __future__ import annotations

import math
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

KINDS = ["channel", "spatial", "mixed-serial", "mixed-parallel", "self", "cross"]


@dataclass(frozen=True)
class Entry:
    """One zoo model: its backbone name (or a maker of it), the kinds it must draw natively."""

    label: str
    name: str | Callable[[], str]
    native: frozenset[str]
    slow: bool = False


def _hf(kind: str) -> str:
    """A tiny Hugging Face model saved with its image processor: `hf:FOLDER`."""
    import transformers as t
    folder = tempfile.mkdtemp()
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=32, patch_size=8, num_labels=10)
    cls, cfg = {"vit": lambda: (t.ViTForImageClassification, t.ViTConfig(**common)),
                "deit": lambda: (t.DeiTForImageClassification, t.DeiTConfig(**common)),
                "beit": lambda: (t.BeitForImageClassification,
                                 t.BeitConfig(**common, use_relative_position_bias=True)),
                "swin": lambda: (t.SwinForImageClassification,
                                 t.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2],
                                              num_heads=[1, 2], window_size=4, num_labels=10))}[kind]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        cls._from_config(cfg).save_pretrained(folder)
        t.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return f"hf:{folder}"


S, C = frozenset({"self"}), frozenset({"channel"})
NONE: frozenset[str] = frozenset()
ZOO = [
    Entry("timm vit_tiny_patch16_224", "timm:vit_tiny_patch16_224", S),
    Entry("timm deit_tiny_distilled_patch16_224", "timm:deit_tiny_distilled_patch16_224", S),
    Entry("timm eva02_tiny_patch14_224", "timm:eva02_tiny_patch14_224", S),
    Entry("timm cait_xxs24_224 (class attention)", "timm:cait_xxs24_224", S, slow=True),
    Entry("timm xcit_nano_12_p16_224 (XCA + class attention)", "timm:xcit_nano_12_p16_224", S),
    Entry("timm levit_128s (no class token)", "timm:levit_128s", S),
    Entry("timm pvt_v2_b0 (spatial reduction)", "timm:pvt_v2_b0", S, slow=True),
    Entry("timm mobilevit_xxs (interleaved patches)", "timm:mobilevit_xxs", S),
    Entry("timm mobilevitv2_050 (linear attention)", "timm:mobilevitv2_050", NONE),
    Entry("timm botnet26t_256 (MHSA on a CNN grid)", "timm:botnet26t_256", S),
    Entry("timm halonet26t (halo attention)", "timm:halonet26t", NONE),
    Entry("timm gcresnet33ts (global context)", "timm:gcresnet33ts", frozenset({"spatial"}), slow=True),
    Entry("timm resnest14d (split attention)", "timm:resnest14d", NONE),
    Entry("timm skresnet18 (selective kernel)", "timm:skresnet18", NONE),
    Entry("timm seresnet18", "timm:seresnet18", C),
    Entry("timm ecaresnet26t", "timm:ecaresnet26t", C),
    Entry("timm regnety_002", "timm:regnety_002", C),
    Entry("timm mobilenetv3_small_100", "timm:mobilenetv3_small_100", C),
    Entry("timm efficientnet_b0", "timm:efficientnet_b0", C, slow=True),
    Entry("timm resnet18", "timm:resnet18", NONE),
    Entry("timm convnext_atto", "timm:convnext_atto", NONE),
    Entry("timm coatnet_nano_rw_224", "timm:coatnet_nano_rw_224", S | C, slow=True),
    Entry("timm maxvit_nano_rw_256", "timm:maxvit_nano_rw_256", S | C, slow=True),
    Entry("timm swin_tiny_patch4_window7_224", "timm:swin_tiny_patch4_window7_224", S, slow=True),
    Entry("hf ViT (tiny config)", lambda: _hf("vit"), S),
    Entry("hf DeiT (tiny config)", lambda: _hf("deit"), S),
    Entry("hf BEiT (tiny config, relative bias)", lambda: _hf("beit"), S),
    Entry("hf Swin (tiny config)", lambda: _hf("swin"), S),
]


@dataclass
class Outcome:
    """What one model gave: the kinds drawn native, the plans of `run` and `inspect`, the reference error."""

    drawn: set[str]
    run_native: dict[str, str]
    inspect_native: dict[str, str]
    kinds: list[str]
    error: float | None = None            # max |drawn self map − reference| / reference peak
    mode: str = ""
    notes: list[str] = field(default_factory=list)


def image() -> Image.Image:
    g = torch.Generator().manual_seed(0)
    return Image.fromarray((torch.rand(48, 64, 3, generator=g) * 255).to(torch.uint8).numpy())


@contextmanager
def softmax_recorder(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Every softmax output computed while `module` runs, by patching torch's softmax functions.

    Test-owned and independent of attnviz's TorchFunctionMode: plain Python wrappers, undone on exit.
    """
    seen: list[torch.Tensor] = []
    inside = [0]
    originals = (torch.Tensor.softmax, F.softmax, torch.softmax)

    def wrap(fn: Any) -> Any:
        def softmax(*a: Any, **k: Any) -> torch.Tensor:
            out = fn(*a, **k)
            if inside[0]:
                seen.append(out.detach().clone())
            return out
        return softmax
    pre = module.register_forward_pre_hook(lambda *_: inside.__setitem__(0, inside[0] + 1))
    post = module.register_forward_hook(lambda *_: inside.__setitem__(0, inside[0] - 1))
    torch.Tensor.softmax, F.softmax, torch.softmax = (wrap(f) for f in originals)
    try:
        yield seen
    finally:
        torch.Tensor.softmax, F.softmax, torch.softmax = originals
        pre.remove()
        post.remove()


def _unfused(model: nn.Module) -> None:
    """timm's hand-written softmax path everywhere (the reference never sees a fused kernel)."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False


def _mobilevit_index(block: nn.Module, H: int, W: int) -> torch.Tensor:
    """Pixel index of each (group, token) of timm MobileVitBlock's unfold: (area, N).

    The reshapes of timm/models/mobilevit.py MobileVitBlock.forward, applied to an index map.
    """
    ph, pw = block.patch_size
    nh, nw = H // ph, W // pw
    x = torch.arange(H * W, dtype=torch.float64).reshape(1, 1, H, W)
    x = x.reshape(1 * 1 * nh, ph, nw, pw).transpose(1, 2)
    x = x.reshape(1, 1, nh * nw, block.patch_area).transpose(1, 3).reshape(block.patch_area, nh * nw, -1)
    return x[..., 0].long()


def reference_self(an: Any, img: Image.Image, drawn: Any) -> float:
    """max |drawn − reference| / peak, the reference from the drawn module's own softmax (unfused)."""
    bb = an.backbone
    source = an.plan.self_source
    name = source.modules[-1].split("#")[0]
    module = bb.model.get_submodule(name)
    _unfused(bb.model)
    if hasattr(bb.model, "set_attn_implementation"):             # Hugging Face: the eager softmax path
        bb.model.set_attn_implementation("eager")
    x = an.preprocess([img])
    with torch.no_grad(), softmax_recorder(module) as seen:
        bb.model(x)
    probs = [s for s in seen if s.dim() >= 3 and s.shape[-1] > 1]
    ref = probs[-1].double()                                     # the drawn call: the module's last softmax
    data = torch.from_numpy(drawn.data).double()
    if source.mode == "windows" and drawn.meta.get("layout") == "dilated" and hasattr(
            _running_block(bb.model, name), "patch_area"):
        block = _running_block(bb.model, name)
        H, W = data.shape
        idx = _mobilevit_index(block, H, W)                      # (area, N) pixel of each token
        full = torch.zeros(H * W, H * W, dtype=torch.float64)
        w = ref.mean(1) if ref.dim() == 4 else ref               # (area, N, N)
        for p in range(idx.shape[0]):
            full[idx[p][:, None], idx[p][None, :]] = w[p]
        r, c = drawn.meta["query_cell"]
        expect = full[r * W + c].reshape(H, W)
    elif source.mode == "windows":
        return float("nan")                                      # Swin: tests/test_capture_zoo.py
    else:
        prefix, (gh, gw) = source.prefix, source.grid
        if ref.dim() == 3:                                       # heads folded into the batch (BotNet)
            ref = ref.reshape(1, -1, *ref.shape[-2:])
        if source.mode == "class" or prefix:
            expect = ref[0, :, 0, prefix:].mean(0).reshape(gh, gw)
        else:
            r, c = drawn.meta["query_cell"]
            expect = ref[0, :, r * gw + c, :].mean(0).reshape(gh, gw)
    return float((data - expect).abs().max() / expect.abs().max())


def _running_block(model: nn.Module, name: str) -> nn.Module | None:
    """The innermost module above `name` that has `patch_area` (timm MobileVitBlock)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        m = model.get_submodule(".".join(parts[:i]))
        if hasattr(m, "patch_area"):
            return m
    return None


def run_entry(entry: Entry) -> Outcome:
    """Load, inspect and run one zoo model; check the drawn self map against its reference."""
    from attnviz.backbones import load_backbone
    from attnviz.pipeline import Analyser, find_attention
    name = entry.name() if callable(entry.name) else entry.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        bb = load_backbone(name, "none")
        an = Analyser(bb, None, align=False, seed=0)
        _, inv = find_attention(bb)                              # what `attnviz inspect` runs
    inspect_native = inv.plan(bb.default_layer, bb.native_cross).native
    img = image()
    (_, maps), = an.analyse_batch([img])
    drawn = {m.kind for m in maps if m.provenance == "native"}
    out = Outcome(drawn, dict(an.plan.native), inspect_native, [k.name for k in an.kinds], notes=an.plan.notes)
    self_map = next((m for m in maps if m.name == "self" and m.provenance == "native"), None)
    if self_map is not None:
        out.mode = an.plan.self_source.mode + (f" ({self_map.meta['layout']})" if "layout" in self_map.meta else "")
        out.error = reference_self(an, img, self_map)
    return out


def table_row(entry: Entry, o: Outcome) -> str:
    """One README row: the label, each kind's provenance, the self map's reference error."""
    cells = []
    for k in KINDS:
        cells.append("**native**" if k in o.drawn else ("derived" if k in o.kinds else "—"))
    err = "" if o.error is None or math.isnan(o.error) else f"{o.error:.1e}"
    return f"| {entry.label} | " + " | ".join(cells) + f" | {o.mode} | {err} |"
