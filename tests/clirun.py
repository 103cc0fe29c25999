"""Run this worktree's `attnviz` command: in a subprocess (`python -m attnviz.cli`, for signals and
concurrency) or in-process (same `main()`, same exit codes, without paying torch's import again)."""
from __future__ import annotations

import contextlib
import io
import html
import json
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]     # the worktree whose attnviz/ is tested
FAST = ["--backbone", "resnet18", "--weights", "none", "--input-size", "64", "--size", "96", "--seed", "0"]


@dataclass
class Outcome:
    """Exit code and output of one command."""

    code: int
    stdout: str
    stderr: str

    def one_error(self) -> str:
        """The only `error:` line (no traceback, no second line of error); fails the test otherwise."""
        assert "Traceback" not in self.stderr, self.stderr
        errors = [ln for ln in self.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, self.stderr
        return errors[0]


def cli(*args: str) -> Outcome:
    """`attnviz ARGS` in this process, through the same `main()` as the console script."""
    from attnviz.cli import main
    argv, shown = sys.argv, warnings.showwarning
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["attnviz", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, warnings.showwarning = argv, shown     # main() installs a warning printer
    return Outcome(code, out.getvalue(), err.getvalue())


def spawn(*args: str) -> subprocess.Popen:
    """`python -m attnviz.cli ARGS` in a child process (this worktree's code), output piped."""
    return subprocess.Popen([sys.executable, "-m", "attnviz.cli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def proc_cli(*args: str, timeout: float = 300) -> Outcome:
    """`python -m attnviz.cli ARGS` in a child process, to its end."""
    p = spawn(*args)
    out, err = p.communicate(timeout=timeout)
    return Outcome(p.returncode, out, err)


def _no_constant(name: str):
    raise ValueError(f"bare {name} in JSON")


def strict_json(path: Path):
    """Parse a file as strict UTF-8 JSON: NaN/Infinity and undecodable bytes fail."""
    return json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)


def check_listed_files(out: Path) -> int:
    """Every file of every image manifest.json lists exists and loads; how many files were checked."""
    n = 0
    for entry in strict_json(out / "manifest.json")["images"]:
        if entry["status"] != "ok":
            continue
        for name in entry["files"]:
            path = out / entry["output"] / name
            if name.endswith(".png"):
                with Image.open(path) as im:
                    im.load()
            else:
                with np.load(path) as z:
                    [z[k] for k in z.files]
            n += 1
    return n


def tree(out: Path) -> dict[str, bytes]:
    """Every file under OUT (relative posix path -> bytes)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def assert_same_run(a: Path, b: Path) -> None:
    """OUT `b` equals OUT `a` byte for byte, except manifest.json's created, command, summary.seconds."""
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb)
    ma, mb = strict_json(a / "manifest.json"), strict_json(b / "manifest.json")
    for t, m in ((ta, ma), (tb, mb)):       # the gallery shows the command, which names its OUT
        if "index.html" in t:
            t["index.html"] = t["index.html"].replace(html.escape(m["command"]).encode(), b"")
    assert [k for k in ta if k != "manifest.json" and ta[k] != tb[k]] == []
    assert ma["images"] == mb["images"]
    for m in (ma, mb):
        del m["created"], m["command"], m["summary"]["seconds"]
    assert ma == mb
