"""Build and execute docs/notebook.ipynb (the Python API in a notebook): `python docs/notebook.py`.

The executed notebook is committed with its outputs; tests/test_docs.py runs it again."""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
CELLS = [
    ("md", """# attnviz in a notebook

A model instance and a tensor batch in; maps, and the very pictures `attnviz run` writes, out.
Offline here, so the ResNet-18 is random-init with calibrated BatchNorm (its maps mean nothing);
with real weights write `torchvision.models.resnet18(weights="DEFAULT")` — nothing else changes."""),
    ("code", """import torch, torchvision
from PIL import Image
import attnviz

torch.manual_seed(0)
model = torchvision.models.resnet18()                 # or weights="DEFAULT"
model.train()                                          # calibrate BatchNorm (random init only)
with torch.no_grad():
    model(torch.randn(16, 3, 128, 128))
model.eval()

analyser = attnviz.Analyser(model, ["spatial", "channel", "self", "cross"], input_size=128)
analyser.backbone.name, analyser.backbone.mean, analyser.layer   # torchvision's own metadata"""),
    ("md", """`analyser(x)` takes a float tensor `(B, 3, S, S)` **in [0, 1], not normalised** (attnviz applies
the model's mean/std, as the CLI does), or `normalized=True` for a tensor your own transform
already normalised. `analyser.to_tensor(images)` makes exactly the CLI's tensor, so the maps below
equal `attnviz run --input-size 128` on the same weights bit for bit."""),
    ("code", """images = [Image.open("../sample_images/cat.jpg").convert("RGB"),
          Image.open("../sample_images/coffee.jpg").convert("RGB")]
x = analyser.to_tensor(images)                      # (2, 3, 128, 128), values in [0, 1]
results = analyser(x, images=images)                # images=: the originals to draw on (optional)
r = results[0]
[(m.name, m.provenance, m.shape) for m in r.maps], r.predictions[0]"""),
    ("md", "A Result shows its grid (the CLI's `grid.png`); `overlay` draws the CLI's `<map>.png`:"),
    ("code", "r"),
    ("code", """r.overlay("spatial", size=256)"""),
    ("code", """r.numpy("spatial").round(3), r.tensor("spatial").device"""),
    ("md", "`targets=` picks the class of the derived cross map (CAM): an index or a name, one per image:"),
    ("code", """t = analyser(x, images=images, targets=["tabby", "espresso"])
t[1].overlay("cross", size=256, colormap="inferno")"""),
    ("md", "`explain` draws the CLI's `attnviz explain` strip for a kind, step by step:"),
    ("code", """r.explain("spatial")"""),
]


def build() -> nbformat.NotebookNode:
    """The notebook, not yet executed."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell in docs/ (errors raise)."""
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


if __name__ == "__main__":
    nbformat.write(execute(build()), HERE / "notebook.ipynb")
