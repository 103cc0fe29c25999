"""render.colormap_tables: matplotlib's tables from the disk cache, the same bytes, never stale."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest


import attnviz.render.colormap_tables as tables
from attnviz.cache import put

ROOT = Path(__file__).resolve().parents[1]
overlay = importlib.import_module("attnviz.render.overlay")    # the module (the package exports a function of its name)


def _mpl(name: str) -> np.ndarray:
    cmap = matplotlib.colormaps[name]
    return np.asarray(cmap(np.arange(cmap.N), bytes=True))[:, :3]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_CACHE", str(tmp_path / "cache"))
    overlay.colormap_lut.cache_clear()
    yield tmp_path / "cache"
    overlay.colormap_lut.cache_clear()


def _fresh(cache: Path, code: str) -> dict:
    """Run `code` in a new process (no matplotlib imported) with this cache; its printed JSON."""
    env = dict(os.environ, ATTNVIZ_CACHE=str(cache), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_fresh_process_draws_with_matplotlibs_bytes_without_importing_it(cache):
    code = ("import json, sys; from attnviz.render.overlay import colormap_lut; "
            "print(json.dumps({'lut': {n: colormap_lut(n).tolist() for n in ('jet', 'viridis')}, "
            "'mpl': 'matplotlib' in sys.modules}))")
    first = _fresh(cache, code)                    # fills the cache (imports matplotlib to do it)
    assert first["mpl"] is True
    assert len(list((cache / "colormaps").glob("*.npy"))) == 2
    second = _fresh(cache, code)                   # reads it: matplotlib never imported
    assert second["mpl"] is False
    for name in ("jet", "viridis"):
        assert np.array_equal(np.array(second["lut"][name], np.uint8), _mpl(name))
    assert not list((cache / "colormaps").glob("*.tmp"))          # written whole, nothing left over


def test_an_entry_of_another_matplotlib_is_not_read(cache, monkeypatch):
    tables.write("jet", np.zeros((256, 3), np.uint8))             # "this" matplotlib's entry, poisoned
    assert tables.read("jet") is not None
    ident = tables.matplotlib_identity()
    monkeypatch.setattr(tables, "matplotlib_identity", lambda: [ident[0] + ".post1", *ident[1:]])
    assert tables.read("jet") is None                              # an upgrade: another key


def test_the_key_changes_with_matplotlibs_colormap_data(cache, monkeypatch, tmp_path):
    ident = tables.matplotlib_identity()
    assert ident is not None and ident[0] == matplotlib.__version__
    assert Path(ident[1]) == Path(matplotlib.__file__).parent
    first = tables._path("jet")
    stats = [(f, (size + 1, t)) for f, (size, t) in ident[2]]       # a data file rewritten
    monkeypatch.setattr(tables, "matplotlib_identity", lambda: [ident[0], ident[1], stats])
    assert tables._path("jet") != first


def test_damaged_entries_are_misses_and_matplotlib_draws(cache, monkeypatch):
    path = tables._path("jet")
    for junk in (b"", b"\x93NUMPY garbage", np.zeros(5).tobytes()):
        assert put(path, junk)
        assert tables.read("jet") is None
    monkeypatch.setattr(overlay, "_matplotlib_loaded", lambda: False)   # as in a CLI process
    lut = overlay.colormap_lut("jet")
    assert np.array_equal(lut, _mpl("jet"))
    assert np.array_equal(tables.read("jet"), _mpl("jet"))          # and the entry is mended


def test_a_registered_colormap_is_never_written(cache):
    from matplotlib.colors import ListedColormap
    name = "attnviz-test-registered"
    matplotlib.colormaps.register(ListedColormap([[0, 0, 0], [1, 0, 0]], name=name), force=True)
    try:
        assert np.array_equal(overlay.colormap_lut(name), [[0, 0, 0], [255, 0, 0]])
    finally:
        matplotlib.colormaps.unregister(name)
    assert tables.read(name) is None                 # another process may register another table


def test_an_unknown_name_still_fails_with_suggestions(cache):
    with pytest.raises(ValueError, match="did you mean jet"):
        overlay.colormap_lut("jett")


def test_an_unwritable_cache_costs_nothing_but_the_work(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("ATTNVIZ_CACHE", str(blocked))
    assert put(blocked / "colormaps" / "x.npy", b"data") is False
    tables.write("jet", _mpl("jet"))                 # no error
    assert tables.read("jet") is None


def test_fonts_come_from_matplotlibs_data_folder_without_importing_it():
    from attnviz.render import draw
    f = draw._load_font(12, False)
    assert Path(f.path) == Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def test_a_run_with_default_outputs_never_imports_matplotlib(cache, tmp_path):
    """The start-up this cache is for: once a first run has made the tables of the colormaps it
    draws with, the next run draws every default picture without importing matplotlib."""
    photo = sorted((ROOT / "sample_images").glob("*.jpg"))[0]
    code = ("import json, sys; from attnviz.pipeline import run; "
            f"r = run([{str(photo)!r}], {str(tmp_path / 'out')!r}, backbone='demo', workers=0, force=True); "
            "print(json.dumps({'ok': [x.status for x in r.results], "
            "'mpl': sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib')}))")
    first = _fresh(cache, code)
    assert first["ok"] == ["ok"] and "matplotlib" in first["mpl"]      # it made the tables
    grid = (tmp_path / "out" / photo.stem / "grid.png").read_bytes()
    (tmp_path / "out" / photo.stem / "grid.png").unlink()
    assert _fresh(cache, code) == {"ok": ["ok"], "mpl": []}
    assert (tmp_path / "out" / photo.stem / "grid.png").read_bytes() == grid      # the same pixels
