"""Print the README's family × kind tables: which kinds `attnviz run` draws natively, per model.

Every model is random-init (no download) and goes through the product's own Analyser on one
image; a kind is "native" when the map `run` draws for it is. Run: `python docs/native_table.py`;
`--zoo`: the 28-architecture zoo of tests/zoo_native.py (the same run as tests/test_native_zoo.py),
with the drawn self map's error against the module's own softmax.
"""
from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ["channel", "spatial", "mixed-serial", "mixed-parallel", "self", "cross"]


def _hf_folder(kind: str) -> str:
    import transformers as t
    folder = tempfile.mkdtemp()
    if kind == "vit":
        cfg = t.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                          image_size=64, patch_size=16)
    else:
        cfg = t.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)
    t.AutoModelForImageClassification.from_config(cfg).save_pretrained(folder)
    t.ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return f"hf:{folder}"


def _tiny_clip() -> str:
    import open_clip
    folder = Path(tempfile.mkdtemp())
    vision = {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    (folder / "tiny-table.json").write_text(json.dumps({"embed_dim": 64, "vision_cfg": vision, "text_cfg": text}))
    open_clip.add_model_config(folder)
    return "clip:tiny-table"


MODELS = [  # (family, shown name, backbone name or a maker, analyser options)
    ("torchvision", "resnet50", "resnet50", {}),
    ("torchvision", "efficientnet_b0", "efficientnet_b0", {}),
    ("torchvision", "mobilenet_v3_small", "mobilenet_v3_small", {}),
    ("torchvision", "regnet_y_400mf", "regnet_y_400mf", {}),
    ("torchvision", "vit_b_16", "vit_b_16", {}),
    ("torchvision", "swin_t", "swin_t", {}),
    ("timm", "seresnet18", "timm:seresnet18", {}),
    ("timm", "ecaresnet26t", "timm:ecaresnet26t", {}),
    ("timm", "regnety_002", "timm:regnety_002", {}),
    ("timm", "vit_small_patch16_224", "timm:vit_small_patch16_224", {}),
    ("timm", "swin_tiny_patch4_window7_224", "timm:swin_tiny_patch4_window7_224", {}),
    ("hf", "ViT (tiny config)", lambda: _hf_folder("vit"), {}),
    ("hf", "Swin (tiny config)", lambda: _hf_folder("swin"), {}),
    ("clip", "open_clip ViT (tiny config)", _tiny_clip, {"texts": ("a cat",)}),
    ("demo", "demo", "demo", {}),
]


def row(family: str, shown: str, name, options: dict) -> str:
    from attnviz.pipeline import Analyser
    name = name() if callable(name) else name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        an = Analyser(name, None, weights="DEFAULT" if name == "demo" else "none", seed=0, **options)
    image = Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8))
    (_, maps), = an.analyse_batch([image])
    provenance = {}
    for m in maps:
        provenance.setdefault(m.kind, m.provenance)
    cells = [provenance.get(k, "—") for k in KINDS]
    return f"| {family} | {shown} | " + " | ".join(f"**{c}**" if c == "native" else c for c in cells) + " |"


def zoo() -> None:
    from tests.zoo_native import ZOO, run_entry, table_row
    print("| model | " + " | ".join(KINDS) + " | self drawn from | max error / peak |")
    print("|---" * (len(KINDS) + 3) + "|")
    for entry in ZOO:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            print(table_row(entry, run_entry(entry)), flush=True)


def main() -> None:
    if "--zoo" in sys.argv[1:]:
        zoo()
        return
    print("| family | model | " + " | ".join(KINDS) + " |")
    print("|---" * (len(KINDS) + 2) + "|")
    for family, shown, name, options in MODELS:
        try:
            print(row(family, shown, name, options), flush=True)
        except Exception as e:  # noqa: BLE001  (an extra not installed: say so in the table)
            print(f"| {family} | {shown} | " + " | ".join(["n/a"] * len(KINDS)) + f" | <!-- {e} -->", flush=True)


if __name__ == "__main__":
    main()
