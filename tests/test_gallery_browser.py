"""The gallery in a real headless browser (Debian chromium + Playwright): no console error, every
picture decodes, filters change the visible rows, a click enlarges. Skipped without either."""
from __future__ import annotations

import shutil

import pytest

from attnviz.pipeline import run
from tests.conftest import photo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright (pip install playwright)")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, resnet18_small):
    root = tmp_path_factory.mktemp("pics")
    photo(80, 60, 1).save(root / "a.png")
    photo(60, 80, 2).save(root / "b #1 [x].png")       # a name that needs URL quoting
    (root / "bad.png").write_bytes(b"nope")
    out = tmp_path_factory.mktemp("o") / "run"
    run([root], out, backbone=resnet18_small, kinds=["spatial", "self"])
    return out / "index.html"


@pytest.fixture(scope="module")
def page(gallery):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page()
        errors: list[str] = []
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        requests: list[str] = []
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto(gallery.as_uri())
        tab.wait_for_load_state("load")
        yield tab, errors, requests
        browser.close()


def _visible_rows(tab) -> list[str]:
    return tab.eval_on_selector_all("#gallery tbody tr:not([hidden])",
                                    "rows => rows.map(r => r.querySelector('b').textContent)")


def test_loads_offline_without_errors_and_every_picture_decodes(page):
    tab, errors, requests = page
    assert errors == []
    widths = tab.eval_on_selector_all("img[src]", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == 2 * 4 and all(w > 0 for w in widths)     # original + 3 maps, 2 ok images
    assert all(u.startswith("file://") for u in requests)           # nothing from the network
    assert "random weights" in tab.inner_text("#random")


def test_filters_change_the_visible_rows(page):
    tab, errors, _ = page
    assert sorted(_visible_rows(tab)) == ["a.png", "b #1 [x].png", "bad.png"]
    tab.click('[data-filter="status"] button[data-value="error"]')
    assert _visible_rows(tab) == ["bad.png"]
    tab.click('[data-filter="status"] button[data-value="ok"]')
    assert sorted(_visible_rows(tab)) == ["a.png", "b #1 [x].png"]
    tab.click('[data-filter="kind"] button[data-value="self"]')
    shown = tab.eval_on_selector_all("#gallery thead th:not([hidden])", "ths => ths.map(t => t.textContent)")
    assert any(t.startswith("self-received") for t in shown) and not any(t.startswith("spatial") for t in shown)
    tab.click('[data-filter="kind"] button[data-value=""]')
    tab.click('[data-filter="status"] button[data-value=""]')
    assert len(_visible_rows(tab)) == 3 and errors == []


def test_click_enlarges(page):
    tab, errors, _ = page
    tab.click("#gallery tbody tr td[data-kind] img")
    assert tab.is_visible("#lightbox")
    assert tab.eval_on_selector("#lightbox img", "i => i.naturalWidth") > 0
    tab.keyboard.press("Escape")
    assert not tab.is_visible("#lightbox") and errors == []


def test_a_wide_run_fits_a_1000_px_window_with_its_colour_bar(page, tmp_path):
    """14 map columns and long names: no horizontal scrolling at 1,000 px, names broken only at / _ - ."""
    from attnviz.report.gallery import gallery_html
    kinds = ["channel", "spatial", "mixed-serial", "mixed-parallel", "self", "self-rollout", "self-received"]
    maps = [{"kind": k.split("-")[0] if k.startswith("self") else k, "name": k, "provenance": "native",
             "layer": "blocks.11.attention_module.gate", "file": f"{k}.png", "npz_key": k} for k in kinds]
    maps += [{"kind": "cross", "name": f"cross-{i}", "provenance": "native", "layer": "cross", "file": "x.png",
              "npz_key": f"c{i}", "prompt": f"the very long prompt number {i}"} for i in range(7)]
    images = [{"source": f"a_rather_long_folder_name/some_image_file_name_{i}.jpg", "output": f"o{i}", "status": "ok",
               "maps": maps} for i in range(2)]
    html_file = tmp_path / "index.html"
    html_file.write_text(gallery_html({"backbone": {"name": "demo", "pretrained": True}, "images": images,
                                       "settings": {"colormap": "viridis"}}), encoding="utf-8")
    tab = page[0].context.browser.new_page(viewport={"width": 1000, "height": 700})   # the module's browser
    try:
        tab.goto(html_file.as_uri())
        assert tab.evaluate("document.documentElement.scrollWidth") <= 1000
        assert tab.is_visible("#legend .ramp") and "viridis" in tab.inner_text("#legend")
        over = tab.evaluate("""[...document.querySelectorAll('th, td')].filter(
            c => c.scrollWidth > c.clientWidth + 1).length""")           # nothing spills out of its cell
        # a file name breaks only at its <wbr>s (after / _ - .): each piece between them is on one line
        pieces = tab.evaluate("""[...document.querySelectorAll('td.label b')].flatMap(b =>
            [...b.childNodes].filter(n => n.nodeType === 3).map(n => {
                const r = document.createRange(); r.selectNodeContents(n);
                return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size; }))""")
    finally:
        tab.close()
    assert over == 0 and pieces and max(pieces) == 1 and len(pieces) > 2 * 6
