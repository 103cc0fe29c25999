"""The documentation that runs: the README's Python API section, docs/notebook.ipynb (executed, its
pictures inline) and docs/api.md (generated from the docstrings, current)."""
from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.clirun import cli

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_page_is_current():
    assert (ROOT / "docs" / "api.md").read_text(encoding="utf-8") == _load("api").page(), \
        "docs/api.md is stale: run `python docs/api.py`"


def test_committed_notebook_is_executed_with_pictures_inline():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / "docs" / "notebook.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    pictures = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert len(pictures) >= 4
    assert [c.source for c in code] == [src for kind, src in _load("notebook").CELLS if kind == "code"]


@pytest.mark.slow
def test_notebook_runs():
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    docs = _load("notebook")
    nb = docs.execute(docs.build())
    assert sum(any("image/png" in o.get("data", {}) for o in c.get("outputs", [])) for c in nb.cells) >= 4


def _readme_section() -> tuple[str, list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = next(line for line in section.splitlines() if line.startswith("attnviz run "))
    return code, command.split()[1:]


@pytest.mark.slow
def test_readme_python_api_gives_the_cli_maps_and_pictures(tmp_path, monkeypatch):
    """The README's example, as written (a random-init resnet18 here), against the README's command."""
    code, command = _readme_section()
    shutil.copy(ROOT / "sample_images" / "cat.jpg", tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)       # noqa: S102  (our own README)
    r = scope["r"]
    out = cli(*command)
    assert out.code == 0, out.stderr
    npz = np.load(tmp_path / "out" / "cat" / "maps.npz")
    assert {m.kind for m in r.maps} == {"spatial", "channel", "cross"}
    for m in r.maps:
        assert np.array_equal(npz[m.name], m.data), m.name
        with Image.open(tmp_path / "out" / "cat" / f"{m.name}.png") as want:
            assert np.array_equal(np.asarray(r.overlay(m.name)), np.asarray(want.convert("RGB"))), m.name
    with Image.open(tmp_path / "out" / "cat" / "grid.png") as want:
        assert np.asarray(r.grid()).shape == np.asarray(want.convert("RGB")).shape
    assert scope["spatial"].shape == (7, 7)
