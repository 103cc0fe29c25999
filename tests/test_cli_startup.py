"""Commands that need no model answer without importing torch, and a refused run leaves nothing behind.

Each command runs in a fresh interpreter that calls the CLI's `main` and then reports which heavy
libraries it imported (sys.modules), so the test holds whatever the machine's speed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from attnviz.cli import app

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"
HEAVY = ("torch", "torchvision", "timm", "transformers", "open_clip", "ray")

RUNNER = """
import json, sys
sys.argv = ["attnviz", *json.loads(sys.argv[1])]
from attnviz.cli import main
try:
    main()
    code = 0
except SystemExit as e:
    code = e.code
print("\\n" + json.dumps({"code": code, "imported": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def attnviz(*args: str, cwd: Path) -> tuple[int, list[str], str]:
    """Exit code, heavy modules imported, stderr of `attnviz ARGS` run through `main` in a new interpreter."""
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["code"], report["imported"], proc.stderr


COMMANDS = sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("args", [["--help"], ["kinds"], ["backbones", "--no-names"]]
                         + [[command, "--help"] for command in COMMANDS])
def test_help_and_listings_import_no_model_library(tmp_path, args):
    code, imported, err = attnviz(*args, cwd=tmp_path)
    assert code == 0, err
    assert imported == []


def test_the_commands_walked_are_all_of_them():
    assert {"run", "compare", "explain", "kinds", "backbones", "layers", "inspect", "demo", "evaluate"} <= set(COMMANDS)


@pytest.mark.parametrize("args, message", [
    (["--kinds", "chanel"], "error: unknown kind 'chanel' (did you mean channel"),
    (["--kinds", ","], "error: --kinds: name at least one kind (channel, spatial"),
    (["--format", "gif"], "error: --format 'gif': use png, jpg or webp"),
    (["--outliers", "all"], "error: --outliers 'all': use keep, mask or interpolate"),
    (["--engine", "spark"], "error: --engine 'spark': use local or ray"),
    (["--slide", "8,4"], "error: --slide '8,4': use WINDOW,STRIDE"),
    (["--device", "tpu"], "error: --device 'tpu': attnviz runs on cpu, cuda or auto"),
    (["--alpha", "2"], "error: Invalid value for '--alpha'"),
    (["--size", "0"], "error: Invalid value for '--size'"),
    (["--colormap", "nope"], "error: Invalid value for '--colormap': 'nope' is not a matplotlib colormap"),
    (["--text-file", "absent.txt"], "error: --text-file absent.txt: cannot read it"),
])
def test_a_run_refused_without_the_model_imports_no_torch_and_leaves_nothing(tmp_path, args, message):
    code, imported, err = attnviz("run", str(SAMPLES), "-o", "out/deeper", *args, cwd=tmp_path)
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert imported == []
    assert list(tmp_path.iterdir()) == []            # no output folder, no lock file


@pytest.mark.parametrize("paths, message", [
    (["absent.jpg"], "error: no such file or folder: absent.jpg"),
    ([""], "error: an input path is empty"),
])
def test_a_bad_path_is_refused_before_torch(tmp_path, paths, message):
    code, imported, err = attnviz("run", *paths, "-o", "out", cwd=tmp_path)
    assert code == 2 and err.startswith(message), err
    assert imported == [] and list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_file_is_refused_before_torch(tmp_path):
    (tmp_path / "taken").write_text("mine")
    code, imported, err = attnviz("run", str(SAMPLES), "-o", "taken", cwd=tmp_path)
    assert code == 2 and err.startswith("error: -o taken: exists and is not a folder"), err
    assert imported == [] and (tmp_path / "taken").read_text() == "mine"


def test_compare_and_explain_refuse_bad_arguments_before_torch(tmp_path):
    code, imported, err = attnviz("compare", str(SAMPLES), "-o", "sheet.png", "--kinds", "chanel", cwd=tmp_path)
    assert code == 2 and err.startswith("error: unknown kind 'chanel'") and imported == [], err
    code, imported, err = attnviz("explain", "absent.jpg", "-o", "out", cwd=tmp_path)
    assert code == 2 and err.startswith("error: no such file or folder: absent.jpg") and imported == [], err
    assert list(tmp_path.iterdir()) == []


def test_listing_one_family_imports_only_its_library(tmp_path):
    pytest.importorskip("timm")
    code, imported, err = attnviz("backbones", "timm", cwd=tmp_path)
    assert code == 0, err
    assert "timm" in imported and "transformers" not in imported and "open_clip" not in imported


def test_an_unknown_family_is_one_line(tmp_path):
    code, imported, err = attnviz("backbones", "timn", cwd=tmp_path)
    assert code == 2 and err.startswith("error: unknown backbone family 'timn'; families: torchvision, clip"), err
    assert imported == []


def test_a_run_stopped_by_the_model_leaves_no_folder(tmp_path):
    """An unknown backbone is found only by loading: the folder the run had created goes again."""
    code, _, err = attnviz("run", str(SAMPLES), "-o", "out/deeper", "--backbone", "nope", cwd=tmp_path)
    assert code == 2 and err.startswith("error: unknown backbone 'nope'"), err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_a_folder_or_boxes_without_torch(tmp_path):
    (tmp_path / "boxes.json").write_text("{}")
    code, imported, err = attnviz("evaluate", "absent", "--boxes", "boxes.json", cwd=tmp_path)
    assert code == 2 and err.startswith("error: absent: no manifest.json there") and imported == [], err
    code, imported, err = attnviz("evaluate", ".", "--boxes", "absent.json", cwd=tmp_path)
    assert code == 2 and err.startswith("error: --boxes absent.json: cannot read it") and imported == [], err


def test_import_attnviz_loads_no_model_library():
    """The notebook API is there at once; torch comes with the first thing that needs it."""
    proc = subprocess.run([sys.executable, "-c", "import sys, attnviz; attnviz.Settings; "
                           f"print([m for m in {HEAVY!r} if m in sys.modules])"],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_the_default_colormap_it_does_not_check_is_one():
    import matplotlib

    from attnviz.settings import SCHEMA
    assert SCHEMA["colormap"].default in matplotlib.colormaps


def test_start_up_pauses_the_collector_then_freezes_and_resumes():
    import gc

    from attnviz.cli.common import StartUp
    assert gc.isenabled()
    try:
        with StartUp(active=True) as boot:
            assert not gc.isenabled()
            before = gc.get_freeze_count()
            seen = []
            boot.then(lambda n: seen.append((n, gc.isenabled())))(3)     # the bar starts: start-up is over
            assert seen == [(3, True)] and gc.get_freeze_count() > before
        assert gc.isenabled()
        with pytest.raises(RuntimeError), StartUp(active=True):         # an error while loading
            raise RuntimeError("no model")
        assert gc.isenabled()
        gc.disable()                                                     # a caller's own setting is kept
        with StartUp(active=True):
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
    with StartUp():                          # not the attnviz process (pytest): nothing changes
        assert gc.isenabled()


OWN = """
import atexit, gc, json, sys
atexit.register(lambda: print("\\n" + json.dumps({"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()})))
sys.argv = ["attnviz", *json.loads(sys.argv[1])]
from attnviz.cli import main
main()
"""


def test_a_run_resumes_the_collector_after_start_up(tmp_path):
    """The command's own process (a script called `attnviz`): torch's objects frozen, collector on."""
    from clirun import FAST
    (tmp_path / "attnviz").write_text(OWN)
    args = ["run", str(SAMPLES / "cat.jpg"), "-o", "out", "-q", *FAST]
    proc = subprocess.run([sys.executable, str(tmp_path / "attnviz"), json.dumps(args)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["enabled"] and report["frozen"] > 100_000, report
